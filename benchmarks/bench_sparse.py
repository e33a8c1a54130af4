"""Sparse weights against dense: per layer and on a QuartzNet-like encoder, as ratios measured in one process.

Per layer (1x1 conv, 256x256 and 512x512, T = 64-frame chunk and T = 1000 = 10 s): onnxruntime running a
one-node dense Conv (intra_op_num_threads = n), tinyasr's dense conv1d (the register-tiled pointwise kernel)
and tinyasr's sparse kernel at 0/50/70/80/90/95 % unstructured, 50 % in 4x1 blocks and 90 % in 4x1 / 8x1
blocks, at 1 and 2 threads.  ``ort/sparse`` above 1 means the sparse kernel is faster than onnxruntime
dense, ``dense/sparse`` above 1 that it beats tinyasr's own dense path; ``choice`` is what converters.sparse_choice
picks for that weight and T.  Then the .tasr size of each layer against its dense float32 ONNX, the
kernels' cold-compile and cached-load times, and (when the converter and runtime import) the whole
QuartzNet-like encoder pruned with converters.sparsity and stored with --sparse auto.

Run: ``python3 benchmarks/bench_sparse.py [--quick]`` from the repository root.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from converters.sparse_choice import choose_encoding, encode, encode_weights  # noqa: E402
from converters.sparsity import magnitude_mask  # noqa: E402
from tinyasr import threads  # noqa: E402
from tinyasr.fileformat import read_model, to_float16, write_model  # noqa: E402
from tinyasr.kernels.conv1d import conv1d  # noqa: E402
from tinyasr.kernels.sparse import spmm  # noqa: E402

PATTERNS = [(0.0, 1), (0.5, 1), (0.7, 1), (0.8, 1), (0.9, 1), (0.95, 1), (0.5, 4), (0.9, 4), (0.9, 8)]


def best_ms(fn, repeats=20, min_seconds=0.1):
    fn()
    best, spent, calls = float("inf"), 0.0, 0
    while calls < repeats or spent < min_seconds:
        start = time.perf_counter()
        fn()
        elapsed = time.perf_counter() - start
        best, spent, calls = min(best, elapsed), spent + elapsed, calls + 1
    return best * 1e3


def ort_session(model_bytes, n_threads):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = n_threads, 1
    return ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])


def one_conv_onnx(weight):
    from onnx import TensorProto, helper, numpy_helper

    cout, cin = weight.shape
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"])], "layer",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, cin, "T"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, cout, "T"])],
        [numpy_helper.from_array(weight[:, :, None], "w")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def decoded(weight, sparsity, block):
    """The pruned weight and its decoded kernel object, through a real .tasr file (as the runtime gets it)."""
    pruned = weight * magnitude_mask(weight, sparsity, block)
    kind = "csr" if block == 1 else "bsr"
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "w.tasr")
        write_model(path, _one_conv_manifest(), {"w": encode(pruned[:, :, None], kind, block=block if block > 1 else None)})
        model_file = read_model(path)
        return pruned, model_file.tensor("w"), os.path.getsize(path)


def _one_conv_manifest():
    graph = {"inputs": [{"name": "x", "dtype": "float32", "shape": [1, "C", "T"]}],
             "outputs": [{"name": "y", "dtype": "float32", "shape": [1, "D", "T"]}],
             "nodes": [{"name": "conv", "op": "Conv", "inputs": ["x", "w"], "outputs": ["y"]}]}
    return {"graph": graph, "frontend": None, "decoder": None,
            "provenance": {"source": "bench", "source_sha256": "0" * 64, "converter": "bench", "source_format": "onnx"}}


def layer_table(sizes, frames_list, thread_counts, repeats):
    rng = np.random.default_rng(0)
    print("| layer | T | threads | weights | ort dense ms | tinyasr dense ms | sparse ms | ort/sparse | dense/sparse "
          "| choice |\n|---|---:|---:|---|---:|---:|---:|---:|---:|---|")
    for size in sizes:
        weight = (rng.standard_normal((size, size)) / np.sqrt(size)).astype(np.float32)
        cases = [(s, b, *decoded(weight, s, b)) for s, b in PATTERNS]
        for frames in frames_list:
            x = rng.standard_normal((1, size, frames)).astype(np.float32)
            y = np.empty((1, size, frames), np.float32)
            for n in thread_counts:
                threads.set_num_threads(n)
                session = ort_session(one_conv_onnx(weight), n)
                t_ort = best_ms(lambda: session.run(None, {"x": x}), repeats)
                t_dense = best_ms(lambda: conv1d(x, weight[:, :, None], out=y), repeats)
                for sparsity, block, pruned, matrix, _ in cases:
                    t_sparse = best_ms(lambda: spmm(matrix, x, out=y), repeats)
                    reference = pruned.astype(np.float64) @ x[0].astype(np.float64)
                    error = np.max(np.abs(y[0] - reference)) / np.max(np.abs(reference))
                    assert error < 1e-5, f"sparse result differs from dense by {error:.2g}"
                    label = f"{sparsity:.0%}" + (f" {block}x1" if block > 1 else "")
                    print(f"| {size}x{size} | {frames} | {n} | {label} | {t_ort:.3f} | {t_dense:.3f} | {t_sparse:.3f} "
                          f"| {t_ort / t_sparse:.2f} | {t_dense / t_sparse:.2f} | {choose_encoding(pruned, frames)} |")
    threads.set_num_threads(1)


def size_table(sizes):
    rng = np.random.default_rng(1)
    print("\n| layer | weights | .tasr bytes (float32 values) | / dense ONNX | float16 values | / dense ONNX |\n"
          "|---|---|---:|---:|---:|---:|")
    for size in sizes:
        weight = rng.standard_normal((size, size)).astype(np.float32)
        onnx_bytes = len(one_conv_onnx(weight))
        for sparsity, block in ((0.8, 1), (0.9, 1), (0.9, 4), (0.9, 8), (0.95, 1)):
            pruned = weight * magnitude_mask(weight, sparsity, block)
            sizes_by_dtype = []
            for value_dtype in ("float32", "float16"):
                tensor = encode(pruned[:, :, None], "csr" if block == 1 else "bsr", value_dtype, block if block > 1 else None)
                with tempfile.TemporaryDirectory() as tmp:
                    path = os.path.join(tmp, "w.tasr")
                    write_model(path, _one_conv_manifest(), {"w": tensor})
                    sizes_by_dtype.append(os.path.getsize(path))
            label = f"{sparsity:.0%}" + (f" {block}x1" if block > 1 else "")
            print(f"| {size}x{size} | {label} | {sizes_by_dtype[0]} | {sizes_by_dtype[0] / onnx_bytes:.3f} "
                  f"| {sizes_by_dtype[1]} | {sizes_by_dtype[1] / onnx_bytes:.3f} |")


def compile_times():
    """Cold compile (empty Numba cache) and cached load of the sparse kernels, in fresh processes."""
    code = ("import time; import tinyasr.kernels.conv1d; t = time.perf_counter(); import tinyasr.kernels.sparse; "
            "print(time.perf_counter() - t)")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "NUMBA_CACHE_DIR": cache, "PYTHONPATH": root}
        seconds = [float(subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                                        check=True).stdout.split()[-1]) for _ in range(2)]
    print(f"\nsparse kernels (4 builds): cold compile {seconds[0]:.1f} s, cached load {seconds[1]:.2f} s")


# --------------------------------------------------------------------------- encoder


def encoder_table(channels, frames, thread_counts, repeats):
    import onnx
    import torch

    import converters
    from converters.sparsity import prune
    from tinyasr.runtime import load_model

    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))
    from torch_models import QuartzNetLike, build

    print(f"\nQuartzNet-like encoder ({channels} channels, 5 blocks x 5, T = {frames} feature frames)")
    print("| weights | threads | ort dense ms | tinyasr dense ms | tinyasr sparse ms | ort/sparse | dense/sparse "
          "| ONNX MB | sparse .tasr MB | ratio | with --float16 MB | ratio | max rel diff |\n"
          "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    x = np.random.default_rng(0).standard_normal((1, 64, frames)).astype(np.float32)
    for sparsity, block in ((0.5, 1), (0.8, 1), (0.9, 1), (0.9, 4)):
        model = build(QuartzNetLike, channels=channels, blocks=5, repeat=5)
        prune(model, sparsity, block=block)
        with tempfile.TemporaryDirectory() as tmp:
            onnx_path, dense_path = os.path.join(tmp, "m.onnx"), os.path.join(tmp, "dense.tasr")
            converters.from_torch(model, torch.from_numpy(x), dense_path, input_names=["x"], output_names=["y"],
                                  onnx_path=onnx_path, sparse="dense")
            paths = {}
            for value_dtype in ("float32", "float16"):  # float16: what --sparse auto --float16 writes
                with read_model(dense_path) as dense_file:
                    tensors = {n: np.array(dense_file.tensor(n)) for n in dense_file.tensor_names()}
                    manifest = {k: dense_file.manifest[k] for k in ("graph", "frontend", "decoder", "provenance")}
                    tensors, _ = encode_weights(dense_file.graph, tensors, "auto", frames=frames // 2,
                                                value_dtype=value_dtype)
                if value_dtype == "float16":
                    tensors = {n: to_float16(t, n) if isinstance(t, np.ndarray) and t.ndim == 3 else t
                               for n, t in tensors.items()}
                paths[value_dtype] = os.path.join(tmp, f"sparse_{value_dtype}.tasr")
                write_model(paths[value_dtype], manifest, tensors)
            dense_model, sparse_model = load_model(dense_path), load_model(paths["float32"])
            onnx_bytes = os.path.getsize(onnx_path)
            sizes = [os.path.getsize(paths[d]) for d in ("float32", "float16")]
            expected = dense_model.run({"x": x})["y"]
            diff = np.max(np.abs(sparse_model.run({"x": x})["y"] - expected)) / np.max(np.abs(expected))
            for n in thread_counts:
                threads.set_num_threads(n)
                session = ort_session(onnx.load(onnx_path).SerializeToString(), n)
                t_ort = best_ms(lambda: session.run(None, {"x": x}), repeats)
                t_dense = best_ms(lambda: dense_model.run({"x": x}), repeats)
                t_sparse = best_ms(lambda: sparse_model.run({"x": x}), repeats)
                label = f"{sparsity:.0%}" + (f" {block}x1" if block > 1 else "")
                print(f"| {label} | {n} | {t_ort:.2f} | {t_dense:.2f} | {t_sparse:.2f} | {t_ort / t_sparse:.2f} "
                      f"| {t_dense / t_sparse:.2f} | {onnx_bytes / 1e6:.2f} | {sizes[0] / 1e6:.2f} "
                      f"| {sizes[0] / onnx_bytes:.3f} | {sizes[1] / 1e6:.2f} | {sizes[1] / onnx_bytes:.3f} | {diff:.1e} |")
    threads.set_num_threads(1)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats, 256 channels only, 1 thread")
    args = parser.parse_args()
    sizes = (256,) if args.quick else (256, 512)
    thread_counts = (1,) if args.quick else (1, 2)
    repeats = 5 if args.quick else 20
    layer_table(sizes, (64, 1000), thread_counts, repeats)
    size_table(sizes)
    compile_times()
    try:
        import converters  # noqa: F401
        import tinyasr.runtime  # noqa: F401
    except ImportError as exc:
        print(f"\nencoder benchmark skipped: {exc}")
        return
    encoder_table(256, 1000, thread_counts, max(3, repeats // 4))


if __name__ == "__main__":
    main()
