"""What the speech gate costs a transcript: ``Recognizer.transcribe`` of real speech against the gate alone
(``tinyasr.pipeline.vad.speech_in``: EnergyVAD + Segmenter over the whole clip) on the same samples, in one
process, 1 thread, runs alternating; the share is gate / transcribe.

    python -m benchmarks.bench_speech_gate [--runs 7] [--seconds 10] [--write]

Models: the shared random-weight transducers converted from their .nemo (../shared/models/nemo-random; small
encoders, so the gate's share is near its largest: it is the same per second of audio for any model) and the
bundled CTC ``digits`` model (8 kHz).  ``--write`` stores the table in benchmarks/results/speech_gate.md.
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import tempfile
from pathlib import Path

for variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(variable, "1")

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from _paths import SHARED_DIR  # noqa: E402
from benchmarks.bench_dense import median_seconds  # noqa: E402
from benchmarks.bench_sherpa import speech  # noqa: E402
from benchmarks.machine import cpu_model  # noqa: E402

TRANSDUCERS = ["conformer_transducer_small", "fastconformer_tdt_small", "lstm_transducer_small",
               "fastconformer_hybrid_small"]
RESULTS = ROOT / "benchmarks" / "results" / "speech_gate.md"


def main(argv=None) -> None:
    from tinyasr.audio.resample import resample
    from tinyasr.pipeline.recognizer import Recognizer
    from tinyasr.pipeline.vad import speech_in
    from tinyasr_convert.nemo import convert_nemo

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args(argv)
    samples = speech(args.seconds)  # 16 kHz
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        models = []
        for name in TRANSDUCERS:
            convert_nemo(SHARED_DIR / "models" / "nemo-random" / name / "model.nemo", Path(folder) / f"{name}.tasr")
            models.append((name, Path(folder) / f"{name}.tasr"))
        for name, path in models + [("digits (CTC)", None)]:
            recognizer = Recognizer(path, num_threads=1)
            audio = samples if recognizer.sample_rate == 16000 else resample(samples, 16000, recognizer.sample_rate)
            whole, gate = median_seconds(lambda: recognizer.transcribe(audio, sample_rate=recognizer.sample_rate),
                                         lambda: speech_in(audio, recognizer.sample_rate), runs=args.runs)
            rows.append((name, recognizer.sample_rate, whole, gate))
            print(f"{name}: transcribe {whole * 1e3:.1f} ms, speech gate {gate * 1e3:.2f} ms ({gate / whole:.1%})",
                  flush=True)
    load = open("/proc/loadavg").read().split()[0] if os.path.exists("/proc/loadavg") else "?"
    table = [f"# The speech gate's cost ({datetime.date.today()}, {cpu_model()}, 1 thread, load {load})", "",
             f"{args.seconds:g} s of speech, median of {args.runs} alternating runs; "
             "`python -m benchmarks.bench_speech_gate --write`.", "",
             "| model | rate Hz | transcribe ms | gate ms | gate share |", "|---|---:|---:|---:|---:|"]
    table += [f"| {name} | {rate} | {whole * 1e3:.1f} | {gate * 1e3:.2f} | {gate / whole:.1%} |"
              for name, rate, whole, gate in rows]
    print("\n".join(table))
    if args.write:
        RESULTS.write_text("\n".join(table) + "\n")


if __name__ == "__main__":
    main()
