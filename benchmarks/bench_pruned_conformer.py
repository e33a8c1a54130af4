"""Structured pruning's speed-up against its multiply-add cut: a compacted Conformer CTC vs the dense one, 1 thread.

    python -m benchmarks.bench_pruned_conformer [--runs 7] [--seconds 10 60] [--write]

The shared random-weight conformer_ctc_small .nemo (d_model 88, 16 layers, 4 heads, 352 FFN units) is pruned as
issue 14's target says, by zeroing weights as an L0-pruned model arrives (tests/conformer_pruning.py half_pruned):
half the heads and half the FFN units of every layer, and two whole modules (--skip, default layer 5's second FFN
and layer 10's conv module).  Both archives are converted from .nemo (the pruned one compacted), then run on the
same input (N(0,1) features [1, 80, T]) in alternating runs, median.  MACs are counted from the shapes the MatMul /
Conv / Gemm nodes actually run (elementwise ops, softmax and LayerNorm not counted; the executor keeps the
position projection between runs while it is under 1 MiB, which at 60 s holds for the pruned model's, half the
heads wide, and not for the dense one's).  Target: speed-up
(dense time / pruned time) >= 0.8 x the MAC ratio (dense MACs / pruned MACs).  The max abs diff column is the
pruned model compacted vs not compacted (exactness).  A per-op-type breakdown (fastest of 3 profiled runs) shows
where the time goes.  Prints the CPU model; ``--write`` stores the tables in benchmarks/results/pruned_conformer.md.
Needs torch (to write the pruned .nemo's checkpoint).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from _paths import SHARED_DIR  # noqa: E402
from benchmarks.bench_dense import median_seconds  # noqa: E402
from benchmarks.machine import cpu_model  # noqa: E402

NAME = "conformer_ctc_small"
SOURCE = SHARED_DIR / "models" / "nemo-random" / NAME / "model.nemo"
RESULTS = ROOT / "benchmarks" / "results" / "pruned_conformer.md"
SKIPPED = ("layers.5.feed_forward2", "layers.10.conv")
MATRIX_OPS = ("MatMul", "Linear", "Conv", "Gemm")


def convert(folder: Path, skipped) -> tuple:
    """(dense, pruned and compacted, pruned but not compacted) .tasr files of the shared model."""
    from conformer_pruning import half_pruned, pruned_nemo
    from tinyasr_convert.nemo import convert_nemo, read_nemo

    enc = read_nemo(SOURCE).config["encoder"]
    d, layers, heads = enc["d_model"], enc["n_layers"], enc["n_heads"]
    zeros = half_pruned(layers, d, heads, int(d * enc["ff_expansion_factor"]), skipped)
    pruned = pruned_nemo(SOURCE, folder / "pruned.nemo", zeros)
    return (convert_nemo(SOURCE, folder / "dense.tasr"), convert_nemo(pruned, folder / "pruned.tasr"),
            convert_nemo(pruned, folder / "uncompacted.tasr", compact=False))


def _macs(node, args, results) -> int:
    """Multiply-adds of one MatMul / Linear / Conv / Gemm from its input and output shapes."""
    out = int(np.prod(results[0].shape))
    if node.op in ("MatMul", "Linear"):
        return out * int(args[0].shape[-1])
    if node.op == "Conv":
        return out * int(np.prod(args[1].shape[1:]))
    if node.op == "Gemm":
        return out * int(args[0].shape[-1])
    return 0


def profile(model, feeds, runs: int = 3) -> dict:
    """Every step timed, per op type the fastest of ``runs`` runs: {op: [seconds, MACs, steps]}."""
    best = {}
    for _ in range(runs):
        for op, entry in _timed_run(model, feeds).items():
            best[op] = entry if op not in best or entry[0] < best[op][0] else best[op]
    return best


def _timed_run(model, feeds) -> dict:
    """One run with every step timed (through Model._run_step): {op: [seconds, MACs, steps]}."""
    per_op = defaultdict(lambda: [0.0, 0, 0])
    run_step = model._run_step

    def timed(step, ctx, args, replay=None):
        start = time.perf_counter()
        results = run_step(step, ctx, args, replay)
        entry = per_op[step.node.op]
        entry[0] += time.perf_counter() - start
        entry[1] += _macs(step.node, args, results) if step.node.op in MATRIX_OPS else 0
        entry[2] += 1
        return results

    model._run_step = timed
    try:
        model.run(feeds)
    finally:
        del model._run_step
    return per_op


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--seconds", type=int, nargs="+", default=[10, 60])
    parser.add_argument("--skip", nargs="+", default=list(SKIPPED), help="modules pruned whole")
    parser.add_argument("--write", action="store_true", help=f"write the tables to {RESULTS.relative_to(ROOT)}")
    args = parser.parse_args(argv)
    from tinyasr.engine.offline import load_model
    from tinyasr.engine.threads import set_num_threads

    set_num_threads(1)
    load = os.getloadavg()[0]  # a shared machine makes both sides slower, and the ratio noisy
    lines = [f"{NAME} dense vs pruned (half the heads and FFN units of every layer, {' and '.join(args.skip)} "
             f"whole) and compacted, from .nemo, 1 thread, median of {args.runs} alternating runs; "
             f"{time.strftime('%Y-%m-%d')}, {cpu_model()}, load average {load:.1f} on {os.cpu_count()} CPUs", "",
             "| input | dense ms | pruned ms | speed-up | dense MMACs | pruned MMACs | MAC ratio | speed-up / MAC "
             "ratio | max abs diff, compaction |", "|---|---|---|---|---|---|---|---|---|"]
    print(lines[0], flush=True)
    breakdowns = []
    with tempfile.TemporaryDirectory() as folder:
        paths = convert(Path(folder), args.skip)
        sizes = [path.stat().st_size for path in paths[:2]]
        dense, pruned, uncompacted = (load_model(path) for path in paths)
        for seconds in args.seconds:
            frames = seconds * 100
            feeds = {"audio_signal": np.random.default_rng(seconds).standard_normal((1, 80, frames)).astype(np.float32),
                     "length": np.array([frames], np.int64)}
            difference = float(np.abs(uncompacted.run(feeds)["logprobs"] - pruned.run(feeds)["logprobs"]).max())
            dense_s, pruned_s = median_seconds(lambda f=feeds: dense.run(f), lambda f=feeds: pruned.run(f),
                                               runs=args.runs)
            ops = [profile(dense, feeds), profile(pruned, feeds)]
            macs = [sum(entry[1] for entry in per_op.values()) for per_op in ops]
            speedup, mac_ratio = dense_s / pruned_s, macs[0] / macs[1]
            lines.append(f"| {seconds} s | {dense_s * 1e3:.0f} | {pruned_s * 1e3:.0f} | {speedup:.2f} | "
                         f"{macs[0] / 1e6:.0f} | {macs[1] / 1e6:.0f} | {mac_ratio:.2f} | {speedup / mac_ratio:.2f} | "
                         f"{difference:.1e} |")
            print(lines[-1], flush=True)
            breakdowns.append((seconds, ops))
    lines += ["", f"File size: dense {sizes[0]:,} bytes, pruned and compacted {sizes[1]:,} bytes "
              f"({sizes[1] / sizes[0]:.2f}x)."]
    table = len(lines)
    lines += ["", "Where the time goes (per op type, the fastest of 3 profiled runs each: ms, MMACs, steps):", "",
              "| input | op | dense ms | pruned ms | ratio | dense MMACs | pruned MMACs | dense steps | pruned steps |",
              "|---|---|---|---|---|---|---|---|---|"]
    for seconds, (dense_ops, pruned_ops) in breakdowns:
        for op in sorted(dense_ops, key=lambda o: -dense_ops[o][0])[:10]:
            a, b = dense_ops[op], pruned_ops.get(op, [0.0, 0, 0])
            ratio = f"{a[0] / b[0]:.2f}" if b[0] else "-"
            lines.append(f"| {seconds} s | {op} | {a[0] * 1e3:.1f} | {b[0] * 1e3:.1f} | {ratio} | {a[1] / 1e6:.0f} | "
                         f"{b[1] / 1e6:.0f} | {a[2]} | {b[2]} |")
    print("\n".join(lines[table:]), flush=True)
    if args.write:
        RESULTS.write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
