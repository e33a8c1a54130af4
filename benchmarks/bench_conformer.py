"""Conformer / FastConformer CTC speed: tinyasr vs onnxruntime on NeMo's own ONNX export, in one process, 1 thread.

    python -m benchmarks.bench_conformer [--runs 7] [--write]

Converts the shared random-weight exports (../shared/models/nemo-random: conformer_ctc_small, d_model 88,
16 layers, x4; fastconformer_ctc_small, d_model 64, 4 layers, x8) and times Model.run against an onnxruntime
session on the same file and input (N(0,1) features [1, 80, T] with their length), alternating runs, median.
Inputs: 10 s and 60 s (1000 and 6000 feature frames); the FastConformer export's position table covers 512
encoder frames (41 s), so onnxruntime runs it at 10 s and 40 s only.  Prints the CPU model; ``--write`` stores
the table in benchmarks/results/conformer.md.  Ratio = onnxruntime time / tinyasr time (> 1: tinyasr faster).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from _paths import SHARED_DIR  # noqa: E402
from benchmarks.bench_dense import median_seconds  # noqa: E402
from benchmarks.machine import cpu_model  # noqa: E402

NEMO = SHARED_DIR / "models" / "nemo-random"
CASES = [("conformer_ctc_small", (10, 60)), ("fastconformer_ctc_small", (10, 40))]
RESULTS = ROOT / "benchmarks" / "results" / "conformer.md"


def convert(name: str, folder: Path) -> Path:
    from tinyasr_convert import convert as convert_onnx
    from tinyasr_convert.nemo import load_config, manifest_from_nemo_config

    settings = manifest_from_nemo_config(load_config(NEMO / name / "model_config.yaml"))
    return convert_onnx(NEMO / name / "model.onnx", folder / f"{name}.tasr", **settings)


def compare(name: str, tasr: Path, seconds: int, runs: int):
    """(tinyasr seconds, onnxruntime seconds, max abs difference of the log-probs)."""
    import onnxruntime as ort

    from tinyasr.engine.offline import load_model

    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(NEMO / name / "model.onnx"), options, providers=["CPUExecutionProvider"])
    model = load_model(tasr)
    frames = seconds * 100
    feeds = {"audio_signal": np.random.default_rng(seconds).standard_normal((1, 80, frames)).astype(np.float32),
             "length": np.array([frames], np.int64)}
    difference = float(np.abs(model.run(feeds)["logprobs"] - session.run(None, feeds)[0]).max())
    ours, theirs = median_seconds(lambda: model.run(feeds), lambda: session.run(None, feeds), runs=runs)
    return ours, theirs, difference


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--write", action="store_true", help=f"write the table to {RESULTS.relative_to(ROOT)}")
    args = parser.parse_args(argv)
    from tinyasr.engine.threads import set_num_threads

    set_num_threads(1)
    cpu = cpu_model()
    load = os.getloadavg()[0]  # a shared machine makes both sides slower, and the ratio noisy
    lines = [f"Conformer CTC encoders, tinyasr vs onnxruntime, 1 thread, median of {args.runs} alternating runs; "
             f"{time.strftime('%Y-%m-%d')}, {cpu}, load average {load:.1f} on {os.cpu_count()} CPUs", "",
             "| model | input | tinyasr ms | onnxruntime ms | onnxruntime / tinyasr | max abs diff |",
             "|---|---|---|---|---|---|"]
    print(lines[0], flush=True)
    with tempfile.TemporaryDirectory() as folder:
        for name, durations in CASES:
            tasr = convert(name, Path(folder))
            for seconds in durations:
                ours, theirs, difference = compare(name, tasr, seconds, args.runs)
                lines.append(f"| {name} | {seconds} s | {ours * 1e3:.0f} | {theirs * 1e3:.0f} | "
                             f"{theirs / ours:.2f} | {difference:.1e} |")
                print(lines[-1], flush=True)
    if args.write:
        RESULTS.write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
