"""Two threads against one on the 10 s QuartzNet-like encoder, dense and 90 % sparse, as ratios in one process.

Each run is a fresh process with the ``tinyasr`` command's ``GOMP_SPINCOUNT`` (threads.py): the model is
timed at 1 and 2 Numba threads in turn, ``--rounds`` rounds, the best of ``--runs`` calls each (wall time: at 2
threads the helper's time counts).  Printed with the CPU model and the load average, since on a shared machine
a second thread competes with other jobs for the second core and the figure says more about them than about
the kernels.  How the work splits: the pointwise and sparse kernels' work items are (batch, time tile, row
strip), tile-major, so Numba's static schedule gives each thread half of the time tiles; depthwise splits rows.
At 1 thread a dense pointwise conv runs numpy's BLAS where it measured faster than the tile kernel on this CPU
(pointwise.prefer_blas), at 2 the tiles: a third line times the tiles at 1 thread too, the kernels' own scaling.

Run: ``python3 -m benchmarks.bench_threads [--rounds 5] [--runs 5]`` from the repository root.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CHILD = """
import os, sys, tempfile, time
import numpy as np, torch
sys.path.insert(0, {root!r}); sys.path.insert(0, os.path.join({root!r}, "tests"))
import tinyasr_convert
from tinyasr_convert.sparsity import prune
from tinyasr.engine import threads
from tinyasr.engine.offline import load_model
from torch_models import QuartzNetLike, build
if {tiles_only}:  # the dense tile kernel at 1 thread too, where BLAS measured faster on this CPU
    import tinyasr.kernels.conv1d
    tinyasr.kernels.conv1d.prefer_blas = lambda frames: False

torch.manual_seed(0)
model = build(QuartzNetLike, channels=256, blocks=5, repeat=5)
if {sparsity}:
    prune(model, {sparsity})
x = np.random.default_rng(0).standard_normal((1, 64, 1000), np.float32)
path = os.path.join(tempfile.mkdtemp(), "m.tasr")
tinyasr_convert.from_torch(model, torch.from_numpy(x), path, sparse="auto", input_names=["x"], output_names=["y"])
encoder = load_model(path)
best = {{1: [], 2: []}}
for _ in range({rounds}):
    for n in (1, 2):
        threads.set_num_threads(n)
        encoder.run({{"x": x}})
        times = []
        for _ in range({runs}):
            start = time.perf_counter()
            encoder.run({{"x": x}})
            times.append(time.perf_counter() - start)
        best[n].append(min(times))
print(" ".join(f"{{a / b:.3f}}" for a, b in zip(best[1], best[2])), min(best[1]) * 1e3, min(best[2]) * 1e3)
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    from benchmarks.machine import cpu_model

    print(f"{cpu_model()}, {os.cpu_count()} cores; load average before: {os.getloadavg()[0]:.1f}")
    from tinyasr.engine.threads import WORKER_SPIN_COUNT

    environment = {name: value for name, value in os.environ.items() if name != "OMP_WAIT_POLICY"}
    environment["GOMP_SPINCOUNT"] = str(WORKER_SPIN_COUNT)
    for sparsity, tiles_only in ((0.0, False), (0.0, True), (0.9, False)):
        code = CHILD.format(root=ROOT, sparsity=sparsity, tiles_only=tiles_only, rounds=args.rounds, runs=args.runs)
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=environment, check=True)
        *ratios, one, two = done.stdout.split()
        label = " (dense tile kernel at 1 thread too)" if tiles_only else ""
        print(f"{sparsity:.0%} pruned{label}: 1-thread / 2-thread time per round {' '.join(ratios)} "
              f"(best 1 thread {float(one):.1f} ms, 2 threads {float(two):.1f} ms)")
    print(f"load average after: {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
