"""Unstructured sparsity in a Conformer: FFN and attention linears 90 % pruned, tinyasr sparse vs onnxruntime dense.

    python -m benchmarks.bench_sparse_conformer [--runs 7] [--seconds 10] [--sparsity 0.9] [--write]

Issue 14's unstructured target: with the FFN and attention projections (q, k, v, out, rel-pos; 9 linears per layer,
tinyasr_convert.sparsity.NEMO_CONFORMER_LINEARS) of the shared random-weight conformer_ctc_small export pruned by
magnitude to ``--sparsity``, the whole encoder at least 2.5x faster than onnxruntime on the dense model.  The pruned
ONNX model is converted with the cost model's choice (``--sparse auto``: those weights go CSR and run in the
time-major kernel, kernels/sparse.py matmul_time_major).  Times, in one process, 1 thread, alternating runs,
median, on N(0,1) features [1, 80, T]: onnxruntime on the dense and on the pruned file (the same work for it),
tinyasr on both conversions.  Max abs diff: tinyasr sparse vs onnxruntime on the pruned model.  Then where the
sparse encoder's time goes, per op (MatMul split by its B: a sparse weight, a dense weight, or an activation),
each step's fastest of 5 profiled runs; "executor" is the run's time outside the ops; MMACs count a sparse weight's
non-zeros only, so dense / sparse MMACs is the most the sparsity could buy with everything else as fast as before.
Last, the model's linear shapes alone at 1 to 1500 frames: numpy's BLAS matmul vs matmul_time_major.  Prints
the CPU model; ``--write`` stores the tables in benchmarks/results/sparse_conformer.md.
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
SOURCE = SHARED_DIR / "models" / "nemo-random" / NAME
RESULTS = ROOT / "benchmarks" / "results" / "sparse_conformer.md"
KERNEL_SHAPES = ((88, 352), (352, 88), (88, 88))  # conformer_ctc_small's FFN in / out, attention projections
KERNEL_FRAMES = (1, 8, 16, 64, 250, 1500)  # streaming chunks to a minute of encoder frames (x4 subsampling)


def prepare(folder: Path, sparsity: float):
    """(pruned ONNX path, dense .tasr, sparse .tasr, {weight: encoding}) in ``folder``."""
    import onnx
    from tinyasr_convert.conversion import convert_model
    from tinyasr_convert.nemo import load_config, manifest_from_nemo_config
    from tinyasr_convert.sparsity import NEMO_CONFORMER_LINEARS, onnx_weights_of_nodes, prune_onnx

    model = onnx.load(str(SOURCE / "model.onnx"))
    weights = [w for pattern in NEMO_CONFORMER_LINEARS for w in onnx_weights_of_nodes(model, pattern)]
    model, _ = prune_onnx(model, 0.0, overrides=dict.fromkeys(weights, sparsity), keep_first=False, keep_last=False)
    onnx.save(model, str(folder / "pruned.onnx"))
    settings = manifest_from_nemo_config(load_config(SOURCE / "model_config.yaml"))
    dense = convert_model(SOURCE / "model.onnx", folder / "dense.tasr", sparse="dense", **settings)
    sparse = convert_model(folder / "pruned.onnx", folder / "sparse.tasr", sparse="auto", **settings)
    return folder / "pruned.onnx", dense.path, sparse.path, sparse.encodings


def step_label(step) -> str:
    """The op type; MatMul and Linear (MatMul with its bias and activation) by what B is (a stored sparse or dense
    weight, or a computed activation)."""
    if step.node.op not in ("MatMul", "Linear"):
        return step.node.op
    weight = step.constants[1] if len(step.constants) > 1 else None
    if weight is None:
        return "MatMul (activations)"
    return "MatMul (dense weight)" if isinstance(weight, np.ndarray) else "MatMul (sparse weight)"


def step_macs(step, args, results) -> int:
    """Multiply-adds of a MatMul / Conv / Gemm step from its shapes; a sparse weight's stored non-zeros only."""
    op, out = step.node.op, int(np.prod(results[0].shape))
    weight = args[1] if len(args) > 1 else None
    if op in ("MatMul", "Linear") and weight is not None and not isinstance(weight, np.ndarray):
        return out // int(weight.shape[1]) * int(np.count_nonzero(weight.values))  # rows x non-zeros
    if op in ("MatMul", "Linear", "Gemm"):
        return out * int(args[0].shape[-1])
    if op == "Conv":
        return out * int(np.prod(np.shape(weight)[1:]))
    return 0


def profile(model, feeds, runs: int = 5):
    """({label: [seconds, steps, MACs]}, the executor's own seconds): each step's fastest of ``runs`` runs (timed
    through Model._run_step), summed per label; the executor's time is the fastest run's total less its steps."""
    fastest, labels, macs, executor = {}, {}, {}, float("inf")
    for _ in range(runs):
        spent = {}
        run_step = model._run_step

        def timed(step, ctx, args, replay=None):
            start = time.perf_counter()
            results = run_step(step, ctx, args, replay)
            spent[id(step)] = time.perf_counter() - start  # node names need not be unique
            labels[id(step)] = step_label(step)
            macs[id(step)] = step_macs(step, args, results)
            return results

        model._run_step = timed
        try:
            start = time.perf_counter()
            model.run(feeds)
            total = time.perf_counter() - start
        finally:
            del model._run_step
        executor = min(executor, total - sum(spent.values()))
        for key, seconds in spent.items():
            fastest[key] = min(fastest.get(key, seconds), seconds)
    per_label = defaultdict(lambda: [0.0, 0, 0])
    for key, seconds in fastest.items():
        entry = per_label[labels[key]]
        entry[0] += seconds
        entry[1] += 1
        entry[2] += macs[key]
    return dict(per_label), executor


def kernel_rows(sparsity: float, runs: int):
    """Table rows: the model's linear shapes (W [K, N]) alone, numpy's BLAS matmul (the dense MatMul path) vs
    matmul_time_major, from streaming chunks to long inputs; median of alternating calls."""
    from tinyasr.engine.offline import aligned_empty
    from tinyasr.format.encodings.sparse import CSRMatrix, csr_arrays
    from tinyasr.kernels.sparse import matmul_time_major
    from tinyasr_convert.sparsity import magnitude_mask

    rng = np.random.default_rng(0)
    rows = []
    for inputs, outputs in KERNEL_SHAPES:
        weight = rng.standard_normal((inputs, outputs)).astype(np.float32)
        weight *= magnitude_mask(weight, sparsity)
        csr = CSRMatrix(*csr_arrays(weight), weight.shape)
        for frames in KERNEL_FRAMES:
            x = aligned_empty((frames, inputs), np.float32)
            x[...] = rng.standard_normal(x.shape)
            y = aligned_empty((frames, outputs), np.float32)
            dense_s, sparse_s = median_seconds(lambda: np.matmul(x, weight, out=y),
                                               lambda: matmul_time_major(x, csr, out=y), runs=runs)
            rows.append(f"| {inputs}x{outputs} | {frames} | {dense_s * 1e6:.1f} | {sparse_s * 1e6:.1f} | "
                        f"{dense_s / sparse_s:.2f} |")
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--seconds", type=int, nargs="+", default=[10])
    parser.add_argument("--sparsity", type=float, default=0.9)
    parser.add_argument("--write", action="store_true", help=f"write the tables to {RESULTS.relative_to(ROOT)}")
    args = parser.parse_args(argv)
    import onnxruntime as ort

    from tinyasr.engine.offline import load_model
    from tinyasr.engine.threads import set_num_threads
    from tinyasr.kernels import tuning

    set_num_threads(1)
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    load = os.getloadavg()[0]  # a shared machine makes every side slower, and the ratios noisy
    lines = [f"{NAME}, FFN and attention linears {args.sparsity:.0%} pruned (unstructured, by magnitude), tinyasr "
             f"sparse vs onnxruntime dense, 1 thread, median of {args.runs} alternating runs; "
             f"{time.strftime('%Y-%m-%d')}, {cpu_model()}, load average {load:.1f} on {os.cpu_count()} CPUs", "",
             "| input | ort dense ms | ort pruned ms | tinyasr dense ms | tinyasr sparse ms | **ort dense / tinyasr "
             "sparse** | tinyasr dense / sparse | dense / sparse MMACs | max abs diff |",
             "|---|---|---|---|---|---|---|---|---|"]
    print(lines[0], flush=True)
    breakdowns = []
    with tempfile.TemporaryDirectory() as folder:
        pruned_onnx, dense_tasr, sparse_tasr, encodings = prepare(Path(folder), args.sparsity)
        ort_dense = ort.InferenceSession(str(SOURCE / "model.onnx"), options, providers=["CPUExecutionProvider"])
        ort_pruned = ort.InferenceSession(str(pruned_onnx), options, providers=["CPUExecutionProvider"])
        dense, sparse = load_model(dense_tasr), load_model(sparse_tasr)
        for seconds in args.seconds:
            frames = seconds * 100
            feeds = {"audio_signal": np.random.default_rng(seconds).standard_normal((1, 80, frames)).astype(np.float32),
                     "length": np.array([frames], np.int64)}
            difference = float(np.abs(sparse.run(feeds)["logprobs"] - ort_pruned.run(None, feeds)[0]).max())
            times = median_seconds(lambda: ort_dense.run(None, feeds), lambda: ort_pruned.run(None, feeds),
                                   lambda: dense.run(feeds), lambda: sparse.run(feeds), runs=args.runs)
            ort_d, ort_p, ours_d, ours_s = times
            profiles = profile(dense, feeds), profile(sparse, feeds)
            macs = [sum(entry[2] for entry in ops.values()) for ops, _ in profiles]
            lines.append(f"| {seconds} s | {ort_d * 1e3:.0f} | {ort_p * 1e3:.0f} | {ours_d * 1e3:.0f} | "
                         f"{ours_s * 1e3:.0f} | **{ort_d / ours_s:.2f}** | {ours_d / ours_s:.2f} | "
                         f"{macs[0] / 1e6:.0f} / {macs[1] / 1e6:.0f} = {macs[0] / macs[1]:.2f} | {difference:.1e} |")
            print(lines[-1], flush=True)
            breakdowns.append((seconds, *profiles))
    kinds = sorted(set(encodings.values()))
    table = len(lines)
    lines += ["", f"{len(encodings)} weights stored {' / '.join(kinds)}; kernel variants chosen on this CPU: "
              f"{tuning.choices()}", "",
              "Where the time goes (each step's fastest of 5 profiled runs, summed per op; ms, steps, MMACs):", "",
              "| input | op | tinyasr dense ms | tinyasr sparse ms | share of sparse | steps | dense MMACs | "
              "sparse MMACs |", "|---|---|---|---|---|---|---|---|"]
    for seconds, (dense_ops, dense_executor), (sparse_ops, sparse_executor) in breakdowns:
        sparse_total = sum(entry[0] for entry in sparse_ops.values()) + sparse_executor
        labels = sorted(set(dense_ops) | set(sparse_ops), key=lambda o: -sparse_ops.get(o, [0.0])[0])
        rows = [(label, dense_ops.get(label, [0.0, 0, 0]), sparse_ops.get(label, [0.0, 0, 0])) for label in labels]
        rows.append(("executor (outside the ops)", [dense_executor, 0, 0], [sparse_executor, 0, 0]))
        for label, d, s in rows:
            lines.append(f"| {seconds} s | {label} | {d[0] * 1e3:.1f} | {s[0] * 1e3:.1f} | {s[0] / sparse_total:.0%} | "
                         f"{max(d[1], s[1]) or '-'} | {d[2] / 1e6:.0f} | {s[2] / 1e6:.0f} |")
    lines += ["", f"The linear layers alone ({args.sparsity:.0%} pruned, 1 thread, median of {10 * args.runs} "
              "alternating calls; ratio > 1: sparse faster):", "",
              "| W [K, N] | frames | BLAS matmul us | matmul_time_major us | ratio |", "|---|---|---|---|---|"]
    lines += kernel_rows(args.sparsity, 10 * args.runs)
    print("\n".join(lines[table:]), flush=True)
    if args.write:
        RESULTS.write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
