"""An hour-long recording through ``Recognizer.transcribe``: peak memory above the loaded model, speed, WER.

The recording is built from the bundled sample (``tinyasr/models/sample_digits.wav``, six digits, known
transcript) repeated with 1-4 s of quiet noise between repetitions and a random gain each time, written
block by block as 16-bit WAV at the sample's 16 kHz (115 MB for an hour; 230 MB as float32 in memory).  A fresh process
loads the bundled model, transcribes a short clip (kernels compiled, buffers planned), then records its
resident memory, restarts the kernel's peak counter (Linux ``clear_refs``) and transcribes the long file;
the figure is the peak minus that baseline.  Run with ``--minutes 10`` too: the peak must not grow with
the length of the file.

Run: ``python3 benchmarks/bench_long.py [--minutes 60]`` from the repository root (Linux).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np
import soundfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchmarks.peak_memory import CHILD_HELPERS  # noqa: E402
from recipes.digits.evaluate import word_error_rate  # noqa: E402
SAMPLE = os.path.join(ROOT, "tinyasr", "models", "sample_digits")

CHILD = """
import json, sys, time
sys.path.insert(0, {root!r})
import numpy as np
from tinyasr import Recognizer
{helpers}
recognizer = Recognizer()
recognizer.transcribe({sample!r})
base = rss_mb()
reset_peak()
start = time.perf_counter()
result = recognizer.transcribe({path!r})
seconds = time.perf_counter() - start
print(json.dumps({{"text": result.text, "seconds": seconds, "peak_mb": rss_mb("VmHWM") - base,
                   "baseline_mb": base, "duration": result.duration}}))
"""


def write_recording(path: str, minutes: float, seed: int = 0) -> str:
    """The sample repeated with gaps of quiet noise up to ``minutes``; returns the reference transcript."""
    speech, rate = soundfile.read(SAMPLE + ".wav", dtype="float32")
    with open(SAMPLE + ".txt") as f:
        text = f.read().strip()
    rng = np.random.default_rng(seed)
    total, repeats = int(minutes * 60 * rate), 0
    written = 0
    with soundfile.SoundFile(path, "w", samplerate=rate, channels=1, subtype="PCM_16") as out:
        while written < total:
            gap = (2e-3 * rng.standard_normal(int(rng.uniform(1.0, 4.0) * rate))).astype(np.float32)
            block = np.concatenate([gap, speech * rng.uniform(0.5, 1.5)])
            if written + block.size > total:
                block = gap[: total - written]
            else:
                repeats += 1
            out.write(np.clip(block, -1, 1))
            written += block.size
    return " ".join([text] * repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=60.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "long.wav")
        reference = write_recording(path, args.minutes)
        code = CHILD.format(root=ROOT, sample=SAMPLE + ".wav", path=path, helpers=CHILD_HELPERS)
        run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        if run.returncode:
            sys.exit(f"the transcribing process failed:\n{run.stderr}")
        result = json.loads(run.stdout.strip().splitlines()[-1])
        file_mb = os.path.getsize(path) / 1e6
    print(f"recording: {args.minutes:g} min, {file_mb:.0f} MB as 16-bit WAV, {file_mb * 2:.0f} MB as float32")
    print(f"loaded model, warm: {result['baseline_mb']:.0f} MB resident")
    print(f"peak memory above that while transcribing: {result['peak_mb']:.1f} MB")
    print(f"time: {result['seconds']:.1f} s = {result['duration'] / result['seconds']:.0f}x real time (1 thread)")
    wer = word_error_rate([reference.split()], [result["text"].split()])
    print(f"WER against the repeated sample transcript: {wer:.2%} "
          f"({len(reference.split())} words)")


if __name__ == "__main__":
    main()
