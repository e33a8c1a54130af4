"""tinyasr inside a Python app, in under 30 lines: one call for a file, a stream for live audio."""

import sys
from pathlib import Path

import soundfile

import tinyasr

recognizer = tinyasr.Recognizer()  # the bundled digits model; or a .tasr path or a downloaded model's name
path = sys.argv[1] if len(sys.argv) > 1 else Path(tinyasr.__file__).parent / "models" / "sample_digits.wav"

result = recognizer.transcribe(path)  # any format soundfile reads, any rate, mono or stereo
print("file:", result.text, [(w.text, round(w.start, 2)) for w in result.words])

stream = recognizer.stream()  # live audio: feed chunks as they arrive (here: 100 ms pieces of the file)
samples, rate = soundfile.read(path, dtype="int16")
for i in range(0, len(samples), rate // 10):
    stream.accept_waveform(samples[i:i + rate // 10], rate)
    if stream.is_endpoint:
        print("utterance:", stream.finalize().text)
print("stream:", stream.finalize().text)
