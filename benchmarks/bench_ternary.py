"""Ternary 1x1 conv kernels: regenerate-on-the-fly vs cached index lists vs CSR float vs dense BLAS.

For square layers (256, 512 channels) at density 1/3 and 1/10, and T frames, prints best-of-repeats
microseconds and the two ratios the ternary issue sets targets for:

* ``regen/index``: regenerating the pattern on the fly vs reading the cached uint16 lists (target <= 1.5);
* ``index/csr``: cached lists vs a CSR float32 kernel at the same density (target <= 1.0).  The CSR
  kernel is scipy.sparse ``csr @ dense`` (the project's own sparse kernels were not there when this
  was written); it multiplies by stored values, the ternary kernels only add and subtract.

All at one thread (tinyasr's default).  Run: ``python3 benchmarks/bench_ternary.py [--quick]``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tinyasr.kernels.ternary import ternary_pointwise  # noqa: E402
from tinyasr.ternary import TernaryWeight, ternary_matrix  # noqa: E402


def best_us(fns, min_seconds):
    """Best time of one call of each function, in microseconds.  The functions take turns, so a change
    in the machine's load (it is shared) affects all of them alike."""
    best = {name: float("inf") for name in fns}
    for fn in fns.values():
        fn()
    start = time.perf_counter()
    while time.perf_counter() - start < min_seconds:
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - t0)
    return {name: seconds * 1e6 for name, seconds in best.items()}


def measure(channels, density, frames, min_seconds):
    import scipy.sparse

    rng = np.random.default_rng(0)
    scales = rng.uniform(0.5, 1.5, channels).astype(np.float32)
    seeded = TernaryWeight(channels, channels, scales, seed=1234, layer_id=3, density=density)
    cached = TernaryWeight(channels, channels, scales, seed=1234, layer_id=3, density=density)
    x = rng.standard_normal((1, channels, frames)).astype(np.float32)
    out = np.empty((1, channels, frames), np.float32)
    dense = seeded.dense()[:, :, 0]
    csr = scipy.sparse.csr_matrix(dense)
    x2 = x[0]
    fns = {
        "regen": lambda: ternary_pointwise(x, seeded, mode="memory", out=out),
        "index": lambda: ternary_pointwise(x, cached, mode="speed", out=out),
        "csr": lambda: csr @ x2,
        "dense": lambda: np.matmul(dense, x2, out=out[0]),
    }
    try:  # tinyasr's own CSR kernel, where it exists
        from tinyasr.kernels.sparse import spmm
        from tinyasr.sparse import CSRMatrix, csr_arrays

        weight = CSRMatrix(*csr_arrays(dense), shape=(channels, channels))
        fns["csr_tinyasr"] = lambda: spmm(weight, x, out=out)
    except ImportError:
        pass
    times = best_us(fns, min_seconds)
    return {**times, "nnz": int(np.count_nonzero(ternary_matrix(1234, 3, channels, channels, density)))}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="shorter timing loops")
    args = parser.parse_args()
    min_seconds = 0.2 if args.quick else 1.0
    print(f"{'layer':>9} {'density':>7} {'T':>5} {'regen us':>9} {'index us':>9} {'csr us':>9} {'tcsr us':>9} "
          f"{'dense us':>9} {'regen/index':>11} {'index/csr':>9} {'index/tcsr':>10}")
    for channels in (256, 512):
        for density in (1 / 3, 1 / 10):
            for frames in (1, 16, 64, 1000):
                m = measure(channels, density, frames, min_seconds)
                tcsr = m.get("csr_tinyasr", float("nan"))
                print(f"{channels:>4}x{channels:<4} {f'1/{round(1 / density)}':>7} {frames:>5} {m['regen']:>9.1f} "
                      f"{m['index']:>9.1f} {m['csr']:>9.1f} {tcsr:>9.1f} {m['dense']:>9.1f} "
                      f"{m['regen'] / m['index']:>11.2f} {m['index'] / m['csr']:>9.2f} {m['index'] / tcsr:>10.2f}")


if __name__ == "__main__":
    main()
