"""Audio in, results out: Recognizer (recognizer), OnlineStream (online), voice activity (vad), long files
(long_form), and what a model takes in, read once for all of them (model_input)."""
