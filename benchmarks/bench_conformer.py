"""Conformer / FastConformer CTC speed: tinyasr vs onnxruntime on NeMo's own ONNX export, in one process, 1 thread.

    python -m benchmarks.bench_conformer [--runs 7] [--write]
    python -m benchmarks.bench_conformer --profile [--seconds 10]   # where tinyasr's time goes, per op type

Converts the shared random-weight exports (../shared/models/nemo-random: conformer_ctc_small, d_model 88,
16 layers, x4; fastconformer_ctc_small, d_model 64, 4 layers, x8) and times Model.run against an onnxruntime
session on the same file and input (N(0,1) features [1, 80, T] with their length), alternating runs, median.
Inputs: 10 s and 60 s (1000 and 6000 feature frames); the FastConformer export's position table covers 512
encoder frames (41 s), so onnxruntime runs it at 10 s and 40 s only.  Prints the CPU model; ``--write`` stores
the table in benchmarks/results/conformer.md.  Ratio = onnxruntime time / tinyasr time (> 1: tinyasr faster),
from wall time and from the thread's CPU time (time.thread_time: onnxruntime at one thread runs in the calling
thread), which a loaded machine disturbs less.  ``--profile`` times every node of tinyasr's run (thread CPU
time, the least of ``--runs`` runs per node) and prints the time per op type and the executor's own time per
node (the run's total minus its ops).
"""

from __future__ import annotations

import argparse
import collections
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from _paths import SHARED_DIR  # noqa: E402
from benchmarks.machine import cpu_model  # noqa: E402

NEMO = SHARED_DIR / "models" / "nemo-random"
CASES = [("conformer_ctc_small", (10, 60)), ("fastconformer_ctc_small", (10, 40))]
RESULTS = ROOT / "benchmarks" / "results" / "conformer.md"


def convert(name: str, folder: Path) -> Path:
    from tinyasr_convert import convert as convert_onnx
    from tinyasr_convert.nemo import load_config, manifest_from_nemo_config

    settings = manifest_from_nemo_config(load_config(NEMO / name / "model_config.yaml"))
    return convert_onnx(NEMO / name / "model.onnx", folder / f"{name}.tasr", **settings)


def features(seconds: int):
    frames = seconds * 100
    return {"audio_signal": np.random.default_rng(seconds).standard_normal((1, 80, frames)).astype(np.float32),
            "length": np.array([frames], np.int64)}


def alternating_medians(fns, runs: int, warmup: int = 2):
    """[(median wall seconds, median thread CPU seconds)] per function, runs alternating between them."""
    for fn in fns:
        for _ in range(warmup):
            fn()
    wall, cpu = [[] for _ in fns], [[] for _ in fns]
    for _ in range(runs):
        for i, fn in enumerate(fns):
            start, start_cpu = time.perf_counter(), time.thread_time()
            fn()
            cpu[i].append(time.thread_time() - start_cpu)
            wall[i].append(time.perf_counter() - start)
    return [(statistics.median(w), statistics.median(c)) for w, c in zip(wall, cpu)]


def compare(name: str, tasr: Path, seconds: int, runs: int):
    """((tinyasr wall, cpu), (onnxruntime wall, cpu)) seconds, and the max abs difference of the log-probs."""
    import onnxruntime as ort

    from tinyasr.engine.offline import load_model

    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(NEMO / name / "model.onnx"), options, providers=["CPUExecutionProvider"])
    model = load_model(tasr)
    feeds = features(seconds)
    difference = float(np.abs(model.run(feeds)["logprobs"] - session.run(None, feeds)[0]).max())
    ours, theirs = alternating_medians([lambda: model.run(feeds), lambda: session.run(None, feeds)], runs)
    return ours, theirs, difference


def profile(name: str, tasr: Path, seconds: int, runs: int) -> list:
    """Lines: tinyasr's thread CPU time per op type (each node's least over ``runs``) and the executor's share.

    Times each node by wrapping Model._run_step (the engine's one call per node) for this measurement only."""
    from tinyasr.engine.offline import Model, load_model

    model, feeds = load_model(tasr), features(seconds)
    model.run(feeds)  # plans buffers and the signature values: later runs are the steady state
    least, totals = {}, []
    run_step = Model._run_step

    def timed(self, step, ctx, args, replay=None):
        start = time.thread_time()
        results = run_step(self, step, ctx, args, replay)
        spent = time.thread_time() - start
        least[step.node.name] = min(least.get(step.node.name, spent), spent)
        return results

    Model._run_step = timed
    try:
        for _ in range(runs):
            start = time.thread_time()
            model.run(feeds)
            totals.append(time.thread_time() - start)
    finally:
        Model._run_step = run_step
    op_of = {node.name: node.op for node in model.graph.nodes}
    per_op, count = collections.Counter(), collections.Counter()
    for node, spent in least.items():
        per_op[op_of[node]] += spent
        count[op_of[node]] += 1
    ops_total, run_total = sum(per_op.values()), min(totals)
    lines = [f"{name} {seconds} s: run {run_total * 1e3:.1f} ms CPU, {len(least)} nodes run of "
             f"{len(model.graph.nodes)} (the rest: kept shape arithmetic), ops {ops_total * 1e3:.1f} ms, executor "
             f"{(run_total - ops_total) * 1e3:.1f} ms = {(run_total - ops_total) / max(1, len(least)) * 1e6:.1f} us "
             "per node run"]
    lines += [f"  {op:20s} {count[op]:4d} nodes {spent * 1e3:8.2f} ms {spent / run_total:6.1%}"
              for op, spent in per_op.most_common()]
    return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--write", action="store_true", help=f"write the table to {RESULTS.relative_to(ROOT)}")
    parser.add_argument("--profile", action="store_true", help="print tinyasr's time per op type instead")
    parser.add_argument("--seconds", type=int, default=10, help="input length for --profile")
    args = parser.parse_args(argv)
    from tinyasr.engine.threads import set_num_threads

    set_num_threads(1)
    cpu = cpu_model()
    load = os.getloadavg()[0]  # a shared machine makes both sides slower, and the ratio noisy
    if args.profile:
        print(f"{cpu}, load average {load:.1f} on {os.cpu_count()} CPUs")
        with tempfile.TemporaryDirectory() as folder:
            for name, _ in CASES:
                print("\n".join(profile(name, convert(name, Path(folder)), args.seconds, args.runs)), flush=True)
        return 0
    lines = [f"Conformer CTC encoders, tinyasr vs onnxruntime, 1 thread, median of {args.runs} alternating runs; "
             f"{time.strftime('%Y-%m-%d')}, {cpu}, load average {load:.1f} on {os.cpu_count()} CPUs", "",
             "| model | input | tinyasr ms | onnxruntime ms | onnxruntime / tinyasr | CPU-time ratio | max abs diff |",
             "|---|---|---|---|---|---|---|"]
    print(lines[0], flush=True)
    with tempfile.TemporaryDirectory() as folder:
        for name, durations in CASES:
            tasr = convert(name, Path(folder))
            for seconds in durations:
                (ours, ours_cpu), (theirs, theirs_cpu), difference = compare(name, tasr, seconds, args.runs)
                lines.append(f"| {name} | {seconds} s | {ours * 1e3:.0f} | {theirs * 1e3:.0f} | "
                             f"{theirs / ours:.2f} | {theirs_cpu / ours_cpu:.2f} | {difference:.1e} |")
                print(lines[-1], flush=True)
    if args.write:
        RESULTS.write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
