"""What resampling costs: ``tinyasr.audio.resample`` of 10 s of audio to 16 kHz against scipy.signal.resample_poly
(the same filter, the reference its tests hold it to) in one process, and ``StreamResampler`` fed the same
samples in 80 ms pieces (a live stream's chunks), 1 thread, median of alternating runs.

    python -m benchmarks.bench_resample [--runs 7] [--seconds 10] [--write]

``--write`` stores the table in benchmarks/results/resample.md.
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
from pathlib import Path

for variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(variable, "1")

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT)]

from benchmarks.bench_dense import median_seconds  # noqa: E402
from benchmarks.machine import cpu_model  # noqa: E402

RATES = (8000, 11025, 22050, 44100, 48000)
TARGET = 16000
RESULTS = ROOT / "benchmarks" / "results" / "resample.md"


def main(argv=None) -> None:
    import numpy as np
    import scipy.signal

    from tinyasr.audio.resample import StreamResampler, resample

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--write", action="store_true", help="store the table in benchmarks/results/resample.md")
    args = parser.parse_args(argv)

    lines = [f"{cpu_model()}, 1 thread, {args.seconds:g} s of noise to {TARGET} Hz, median of {args.runs} "
             f"alternating runs, {datetime.date.today()}", "",
             "| from | tinyasr | scipy resample_poly | scipy / tinyasr | streamed, 80 ms pieces |",
             "|---:|---:|---:|---:|---:|"]
    for rate in RATES:
        samples = np.random.default_rng(rate).standard_normal(int(args.seconds * rate)).astype(np.float32)
        step = rate * 80 // 1000

        def streamed():
            stream = StreamResampler(rate, TARGET)
            for first in range(0, samples.size, step):
                stream.accept(samples[first:first + step])
            stream.finish()

        ours, theirs, pieces = median_seconds(lambda: resample(samples, rate, TARGET),
                                              lambda: scipy.signal.resample_poly(samples, TARGET, rate),
                                              streamed, runs=args.runs)
        lines.append(f"| {rate} Hz | {ours * 1e3:.2f} ms | {theirs * 1e3:.2f} ms | {theirs / ours:.2f} | "
                     f"{pieces * 1e3:.2f} ms |")
    print("\n".join(lines))
    if args.write:
        RESULTS.write_text("# Resampling to 16 kHz (`python -m benchmarks.bench_resample --write`)\n\n"
                           + "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
