"""Every compiled variant of the tiled kernels on this CPU, as ratios measured in one process.

tinyasr/kernels/tuning.py picks one variant per family at first use from one small timing problem; this
shows all of them on the layer shapes that matter, to check that pick and to judge a new variant:

* dense pointwise tiles (pointwise.TILE_KERNELS) and numpy's BLAS matmul against onnxruntime's one-node Conv
  (MLAS), ort / variant (the tiles given their input already tiled, no epilogue: what the kernels compute);
* sparse 90 % (pointwise 512x512 and 256x256): the CSR variants (unstructured, magnitude-pruned) and BSR
  variants (4x1 blocks) against tinyasr's chosen dense tile kernel, dense / variant.

1 thread; each variant's best of ``--calls`` calls in each of ``--rounds`` interleaved rounds (thread CPU time:
both engines compute in the calling thread, and other jobs on a shared machine count less).  The table is
printed with the CPU model and written to benchmarks/results/variants_CPU.md (CPU: LLVM's name for it).

Run: ``python3 -m benchmarks.bench_variants [--rounds 5] [--calls 3]`` from the repository root.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchmarks.bench_sparse import one_conv_onnx, ort_session  # noqa: E402
from benchmarks.machine import cpu_model  # noqa: E402
from tinyasr.format.encodings.sparse import bsr_arrays, csr_arrays  # noqa: E402
from tinyasr.kernels import tuning  # noqa: E402
from tinyasr.kernels.epilogue import NO_BIAS, NO_RESIDUAL  # noqa: E402
from tinyasr.kernels.pointwise import TILE_KERNELS, packed_strips, pointwise_tiles, prefer_blas  # noqa: E402
from tinyasr.kernels.sparse import BSR_KERNELS, CSR_KERNELS, fastest_kernel  # noqa: E402

DENSE_SHAPES = [(256, 256, 64), (256, 256, 1000), (512, 512, 1000), (256, 1024, 1000)]  # Cin, Cout, T
SPARSE_SHAPES = [(256, 64), (256, 1000), (512, 64), (512, 1000)]  # channels, T
SPARSITY = 0.9


def dense_rows(rng, rounds, calls):
    rows = []
    for cin, cout, frames in DENSE_SHAPES:
        w = (rng.standard_normal((cout, cin)) / np.sqrt(cin)).astype(np.float32)
        x = rng.standard_normal((1, cin, frames)).astype(np.float32)
        y = np.empty((1, cout, frames), np.float32)
        session = ort_session(one_conv_onnx(w), 1)
        functions = {"ort": lambda: session.run(None, {"x": x})}
        for name, kernel in TILE_KERNELS.items():
            functions[name] = lambda kernel=kernel, packed=packed_strips(w, kernel.rows): kernel.serial(
                x, packed, NO_BIAS, NO_RESIDUAL, y, 0, 0.0, 0.0, 1)
        functions["blas"] = lambda: np.matmul(w, x[0], out=y[0])
        best = tuning.best_seconds(functions, rounds, calls)
        chosen = "blas" if prefer_blas(frames) else next(n for n, k in TILE_KERNELS.items()
                                                          if k is pointwise_tiles(frames))
        variants = [*TILE_KERNELS, "blas"]
        cells = [f"{best['ort'] / best[name]:.2f}" + (" *" if name == chosen else "") for name in variants]
        gflops = 2 * cin * cout * frames / min(best[name] for name in variants) / 1e9
        rows.append(f"| dense {cin}x{cout} | {frames} | {best['ort'] * 1e3:.3f} | " + " | ".join(cells)
                    + f" | {gflops:.0f} |")
    header = ("| layer | T | ort ms | " + " | ".join(f"ort / {name}" for name in [*TILE_KERNELS, "blas"])
              + " | best GFLOP/s |\n|---|---:|---:|" + "---:|" * (len(TILE_KERNELS) + 2))
    return header, rows


def sparse_rows(rng, rounds, calls):
    rows = []
    for channels, frames in SPARSE_SHAPES:
        w = (rng.standard_normal((channels, channels)) / np.sqrt(channels)).astype(np.float32)
        x = rng.standard_normal((1, channels, frames)).astype(np.float32)
        y = np.empty((1, channels, frames), np.float32)
        unstructured = np.where(np.abs(w) >= np.quantile(np.abs(w), SPARSITY), w, 0).astype(np.float32)
        block_norm = np.abs(w).reshape(channels // 4, 4, channels).sum(1)
        blocked = w * np.repeat(block_norm >= np.quantile(block_norm, SPARSITY), 4, axis=0)
        csr, bsr = csr_arrays(unstructured), bsr_arrays(blocked, (4, 1))
        dense = pointwise_tiles(frames)
        functions = {"dense": lambda: dense.serial(x, w, NO_BIAS, NO_RESIDUAL, y, 0, 0.0, 0.0, 1)}
        for family, kernels, (values, indices, indptr) in (("csr", CSR_KERNELS, csr), ("bsr", BSR_KERNELS, bsr)):
            values = values.reshape(-1, 1, 1) if family == "csr" else values
            for name, kernel in kernels.items():  # one part: serial
                functions[f"{family} {name}"] = (lambda kernel=kernel, v=values, i=indices, p=indptr:
                                                 kernel.serial(x, v, i, p, NO_BIAS, NO_RESIDUAL, y, 0, 0.0, 0.0, 1))
        best = tuning.best_seconds(functions, rounds, calls)
        chosen = {fastest_kernel("csr", channels), fastest_kernel("bsr", channels)}
        cells = []
        for family, kernels in (("csr", CSR_KERNELS), ("bsr", BSR_KERNELS)):
            for name, kernel in kernels.items():
                cells.append(f"{best['dense'] / best[f'{family} {name}']:.2f}" + (" *" if kernel in chosen else ""))
        rows.append(f"| {SPARSITY:.0%} {channels}x{channels} | {frames} | {best['dense'] * 1e3:.3f} | "
                    + " | ".join(cells) + " |")
    names = [f"csr {n}" for n in CSR_KERNELS] + [f"bsr 4x1 {n}" for n in BSR_KERNELS]
    header = ("| layer | T | dense ms | " + " | ".join(f"dense / {name}" for name in names)
              + " |\n|---|---:|---:|" + "---:|" * len(names))
    return header, rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calls", type=int, default=3)
    args = parser.parse_args()
    import llvmlite.binding as llvm

    rng = np.random.default_rng(0)
    lines = [f"Kernel variants on {cpu_model()} (LLVM: {llvm.get_host_cpu_name()}), {os.cpu_count()} cores, 1 thread, "
             f"{time.strftime('%Y-%m-%d')}; * = the variant tuning.py chose here; load average "
             f"{os.getloadavg()[0]:.1f} at the start", ""]
    for table in (dense_rows, sparse_rows):
        header, rows = table(rng, args.rounds, args.calls)
        lines += [header, *rows, ""]
        print("\n".join([header, *rows, ""]), flush=True)
    lines.append(f"tuning choices: {tuning.choices()}")
    path = os.path.join(ROOT, "benchmarks", "results", f"variants_{llvm.get_host_cpu_name()}.md")
    with open(path, "w") as f:
        f.write("<!-- written by benchmarks/bench_variants.py -->\n" + "\n".join(lines) + "\n")
    print(f"written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
