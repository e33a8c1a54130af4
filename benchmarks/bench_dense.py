"""Dense speed: tinyasr vs onnxruntime on one QuartzNet-like model and input, in one process.

    python -m benchmarks.bench_dense [--runs 10] [--frames 1000] [--channels 256] [--no-spin] [--per-node]

Builds the QuartzNet-like CTC model of tests/torch_models.py (256 channels,
5 blocks x 5 separable convs), exports it to ONNX, converts it, and times
Model.run against an onnxruntime session on the same ONNX file and input
(1 x 64 features x 1000 frames = 10 s), with 1 thread and then 2.  Prints the
median of N alternating runs after warm-up and the ratio onnxruntime / tinyasr (> 1: tinyasr is faster).
--per-node times every node alone (tinyasr via run_op, onnxruntime via its profiler)
to find the op that is slow.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]


def median_seconds(*fns, runs: int, warmup: int = 2):
    """Median wall time of each function; runs alternate between them so load changes hit all alike."""
    for fn in fns:
        for _ in range(warmup):
            fn()
    times = [[] for _ in fns]
    for _ in range(runs):
        for fn, spent in zip(fns, times):
            start = time.perf_counter()
            fn()
            spent.append(time.perf_counter() - start)
    medians = [statistics.median(t) for t in times]
    return medians if len(fns) > 1 else medians[0]


def build(folder: Path, channels: int) -> None:
    """Export + convert the benchmark model to folder/bench.onnx and folder/bench.tasr."""
    import torch

    import torch_models
    from tinyasr_convert import from_torch

    module = torch_models.build(torch_models.QuartzNetLike, channels=channels, blocks=5, repeat=5)
    from_torch(module, (torch.randn(1, 64, 100),), folder / "bench.tasr", input_names=["features"],
               output_names=["logprobs"], onnx_path=folder / "bench.onnx")


def build_in_child(folder: Path, channels: int) -> None:
    """Build in a child process: torch loads its own OpenMP runtime, which must not be in the timed process."""
    command = [sys.executable, str(Path(__file__).resolve()), "--build-only", str(folder), "--channels", str(channels)]
    subprocess.run(command, check=True)


def ort_session(path: Path, threads: int, spinning: bool = True, profile_dir: Path = None):
    """An onnxruntime CPU session; spinning=False lets idle worker threads sleep (fairer on a loaded machine)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if profile_dir is not None:
        options.enable_profiling = True
        options.profile_file_prefix = str(profile_dir / "ort")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def compare(tasr_path, onnx_path, x, runs: int, spinning: bool) -> None:
    import tinyasr
    from tinyasr.engine.offline import load_model

    model = load_model(tasr_path)
    feeds = {"features": x}
    reference = ort_session(onnx_path, 1).run(None, feeds)[0]
    difference = float(np.abs(model.run(feeds)["logprobs"] - reference).max())
    print(f"input {x.shape}, output {reference.shape}, max |tinyasr - onnxruntime| = {difference:.2e}")
    print(f"{'threads':>7} {'onnxruntime ms':>15} {'tinyasr ms':>11} {'ort/tinyasr':>12}")
    for threads in (1, 2):
        session = ort_session(onnx_path, threads, spinning)
        tinyasr.set_num_threads(threads)
        ort_s, tasr_s = median_seconds(lambda: session.run(None, feeds), lambda: model.run(feeds), runs=runs)
        print(f"{threads:>7} {ort_s * 1e3:>15.1f} {tasr_s * 1e3:>11.1f} {ort_s / tasr_s:>12.2f}")


def per_node(tasr_path, onnx_path, x, runs: int, folder: Path) -> None:
    """Single-thread time per node: tinyasr's op functions one by one vs onnxruntime's profiler, matched by node name."""
    import tinyasr
    from tinyasr.format.container import read_model
    from tinyasr.format.graph import Graph
    from tinyasr.ops import run_op

    tinyasr.set_num_threads(1)
    model_file = read_model(tasr_path)
    graph = Graph.from_dict(model_file.manifest["graph"])
    tensors = {name: np.array(model_file.tensor(name)) for name in model_file.tensor_names()}
    values = {"features": x}
    mine = {}
    for node in graph.nodes:
        args = [values.get(n, tensors.get(n)) if n else None for n in node.inputs]
        results = None

        def step():
            nonlocal results
            results = run_op(node.op, args, node.attrs, num_outputs=len(node.outputs))

        mine[node.name] = (median_seconds(step, runs=runs, warmup=1), node, [getattr(a, "shape", None) for a in args])
        values.update(zip(node.outputs, results))

    session = ort_session(onnx_path, 1, profile_dir=folder)
    for _ in range(runs + 1):
        session.run(None, {"features": x})
    theirs = defaultdict(list)
    for event in json.load(open(session.end_profiling())):
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            theirs[event["name"][: -len("_kernel_time")]].append(event["dur"] * 1e-6)

    by_kind = defaultdict(lambda: [0.0, 0.0, 0])
    print(f"{'node':<48} {'kind':<28} {'tinyasr ms':>10} {'ort ms':>8}")
    for name, (seconds, node, shapes) in sorted(mine.items(), key=lambda kv: -kv[1][0]):
        kind = _kind(node, shapes)
        ort_s = statistics.median(theirs[name]) if theirs.get(name) else float("nan")
        entry = by_kind[kind]
        entry[0] += seconds
        entry[1] += 0.0 if np.isnan(ort_s) else ort_s
        entry[2] += 1
        if seconds > 2e-4:
            print(f"{name[-48:]:<48} {kind:<28} {seconds * 1e3:>10.2f} {ort_s * 1e3:>8.2f}")
    print(f"\n{'kind':<28} {'nodes':>5} {'tinyasr ms':>10} {'ort ms':>8}")
    for kind, (a, b, n) in sorted(by_kind.items(), key=lambda kv: -kv[1][0]):
        print(f"{kind:<28} {n:>5} {a * 1e3:>10.2f} {b * 1e3:>8.2f}")
    print(f"(onnxruntime fuses some nodes under other names; its unmatched kernels: "
          f"{sorted(set(theirs) - set(mine))[:8]})")


def _kind(node, shapes) -> str:
    if node.op != "Conv":
        return node.op
    w = shapes[1]
    what = "depthwise" if node.attrs.get("group", 1) > 1 else ("pointwise" if w[-1] == 1 else "dense")
    extra = "+Z" if len(node.inputs) > 3 and node.inputs[3] else ""
    return f"Conv {what} k{w[-1]}{extra} {w[0]}x{shapes[0][1]}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--frames", type=int, default=1000)
    parser.add_argument("--channels", type=int, default=256)
    parser.add_argument("--per-node", action="store_true", help="also time every node alone (1 thread)")
    parser.add_argument("--no-spin", action="store_true", help="onnxruntime threads sleep instead of spinning")
    parser.add_argument("--build-only", metavar="FOLDER", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.build_only:
        build(Path(args.build_only), args.channels)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        build_in_child(folder, args.channels)
        tasr, onnx_path = folder / "bench.tasr", folder / "bench.onnx"
        x = np.random.default_rng(0).standard_normal((1, 64, args.frames)).astype(np.float32)
        from benchmarks.machine import cpu_model
        from tinyasr.kernels.pointwise import pointwise_tiles

        tile = pointwise_tiles(args.frames)
        print(f"CPU: {cpu_model()} ({os.cpu_count()} cores); dense pointwise tile measured fastest here: "
              f"{tile.rows}x{tile.width}; target: ort/tinyasr >= 1.2 at 1 thread")
        print(f"model: QuartzNet-like, {args.channels} channels, {os.path.getsize(tasr):,} bytes .tasr")
        compare(tasr, onnx_path, x, args.runs, spinning=not args.no_spin)
        if args.per_node:
            per_node(tasr, onnx_path, x, max(3, args.runs // 2), folder)
    return 0


if __name__ == "__main__":
    sys.exit(main())
