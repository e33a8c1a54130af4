"""Audio in, results out: Recognizer (recognizer), OnlineStream (online), voice activity (vad), long files."""
