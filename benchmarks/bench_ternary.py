"""Ternary 1x1 conv kernels: regenerate-on-the-fly vs cached index lists vs tinyasr's CSR float and dense kernels.

For square layers (256, 512 channels) at density 1/3 and 1/10, and T frames, prints best-of-repeats
microseconds and the two ratios the ternary issue sets targets for:

* ``regen/index``: regenerating the pattern on the fly vs reading the cached uint16 lists (target <= 1.5);
* ``index/csr``: cached lists vs tinyasr's CSR float32 kernel (``tinyasr.kernels.sparse.spmm``) on the same
  matrix (target <= 1.0); it multiplies by stored values, the ternary kernels only add and subtract.

``dense`` is tinyasr's dense 1x1 conv (``conv1d``), ``scipy`` scipy.sparse's ``csr @ dense`` for scale.
Activations are 64-byte aligned, as the runtime allocates them.  All at one thread (tinyasr's default).
Run: ``python3 benchmarks/bench_ternary.py [--quick]``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tinyasr.kernels.conv1d import conv1d  # noqa: E402
from tinyasr.kernels.sparse import spmm  # noqa: E402
from tinyasr.kernels.ternary import ternary_pointwise  # noqa: E402
from tinyasr.engine.offline import aligned_empty  # noqa: E402
from tinyasr.format.encodings.sparse import CSRMatrix, csr_arrays  # noqa: E402
from tinyasr.format.encodings.ternary import TernaryWeight  # noqa: E402


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
    x = aligned_empty((1, channels, frames), np.float32)
    x[...] = rng.standard_normal(x.shape)
    out = aligned_empty((1, channels, frames), np.float32)
    dense = seeded.dense()[:, :, 0]
    weight = CSRMatrix(*csr_arrays(dense), shape=(channels, channels))
    scipy_csr = scipy.sparse.csr_matrix(dense)
    fns = {
        "regen": lambda: ternary_pointwise(x, seeded, mode="memory", out=out),
        "index": lambda: ternary_pointwise(x, cached, mode="speed", out=out),
        "csr": lambda: spmm(weight, x, out=out),
        "dense": lambda: conv1d(x, dense[:, :, None], out=out),
        "scipy": lambda: scipy_csr @ x[0],
    }
    return best_us(fns, min_seconds)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="shorter timing loops")
    args = parser.parse_args()
    min_seconds = 0.2 if args.quick else 1.0
    print("| layer | density | T | regen us | index us | csr us | dense us | scipy us | regen/index | index/csr |\n"
          "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for channels in (256, 512):
        for density in (1 / 3, 1 / 10):
            for frames in (1, 16, 64, 1000):
                m = measure(channels, density, frames, min_seconds)
                print(f"| {channels}x{channels} | 1/{round(1 / density)} | {frames} | {m['regen']:.1f} "
                      f"| {m['index']:.1f} | {m['csr']:.1f} | {m['dense']:.1f} | {m['scipy']:.1f} "
                      f"| {m['regen'] / m['index']:.2f} | {m['index'] / m['csr']:.2f} |")


if __name__ == "__main__":
    main()
