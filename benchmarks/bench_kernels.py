"""conv1d against onnxruntime, one layer at a time, as ratios measured in one process.

For each QuartzNet / Citrinet / MarbleNet-like layer shape, a one-node ONNX ``Conv`` model runs in
onnxruntime (intra_op_num_threads = n) and tinyasr.kernels.conv1d runs the same shape at n threads.
Printed: best-of-repeats milliseconds and ``ort/tinyasr`` (above 1: tinyasr is faster).

Dense pointwise convs (256x256, 512x512, 256x1024 at T = 4 .. 1000) are also timed against numpy's BLAS
matmul, and one streaming chunk's conv calls through the Conv op against the bare matmul.

Also measured, because threads.py's policy rests on them: a QuartzNet block stack with Numba and
BLAS at each thread count combination (do the pools fight?), the smallest depthwise work for which
a parallel launch pays, and the cold-compile / cached-load time of the kernels.

Run: ``python3 benchmarks/bench_kernels.py [--quick]`` from the repository root.
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

from tinyasr.engine import threads  # noqa: E402
from tinyasr.kernels import conv1d  # noqa: E402
from tinyasr.kernels.conv1d import depthwise_rows, nonzero_taps  # noqa: E402

FRAMES_10S = 1000  # 10 ms hop: 10 s of audio
POINTWISE = [(256, 256), (512, 512), (256, 1024)]  # (Cin, Cout) of bench_pointwise
POINTWISE_FRAMES = (4, 16, 64, 500, 1000)
SAMPLES_10S = 160_000  # 16 kHz

# name: (Cin, Cout, K, group, stride, dilation, T)
LAYERS = {
    "depthwise K33 C256": (256, 256, 33, 256, 1, 1, FRAMES_10S),
    "depthwise K51 C256": (256, 256, 51, 256, 1, 1, FRAMES_10S),
    "depthwise K75 C256": (256, 256, 75, 256, 1, 1, FRAMES_10S),
    "depthwise K33 dil2 C256": (256, 256, 33, 256, 1, 2, FRAMES_10S),
    "depthwise K33 stride2 C64 (QuartzNet C1)": (64, 64, 33, 64, 2, 1, FRAMES_10S),
    "pointwise 256x256": (256, 256, 1, 1, 1, 1, FRAMES_10S),
    "pointwise 256->1024": (256, 1024, 1, 1, 1, 1, FRAMES_10S),
    "K1 stride2 256x256 (Citrinet)": (256, 256, 1, 1, 2, 1, FRAMES_10S),
    "grouped K5 g4 256x256": (256, 256, 5, 4, 1, 1, FRAMES_10S),
    "dense K11 128x128": (128, 128, 11, 1, 1, 1, FRAMES_10S),
    "STFT-as-conv 1->514 K512 s160": (1, 514, 512, 1, 160, 1, SAMPLES_10S),
}


def best_ms(fn, repeats, min_seconds=0.2, clock=time.perf_counter):
    """Best time of ``repeats`` calls (and at least min_seconds of calls in all), in milliseconds."""
    fn()
    best, spent, calls = float("inf"), 0.0, 0
    while calls < repeats or spent < min_seconds:
        t0 = clock()
        fn()
        dt = clock() - t0
        best, spent, calls = min(best, dt), spent + dt, calls + 1
    return best * 1e3


def clock_for(n_threads):
    """At 1 thread both libraries compute in the calling thread: its CPU time ignores other jobs on a
    shared machine.  At more threads only wall time counts the helpers."""
    return time.thread_time if n_threads == 1 else time.perf_counter


def ort_conv_session(x_shape, weight, bias, stride, dilation, pads, group, n_threads):
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    node = helper.make_node("Conv", ["x", "w", "b"], ["y"], group=group, strides=[stride], dilations=[dilation],
                            pads=list(pads), kernel_shape=[weight.shape[2]])
    graph = helper.make_graph(
        [node], "conv", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x_shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(weight, "w"), numpy_helper.from_array(bias, "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    options = ort.SessionOptions()
    options.intra_op_num_threads = n_threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def bench_layers(n_threads, repeats, names):
    clock = clock_for(n_threads)
    print(f"\n## one layer, {n_threads} thread(s)   (ms {clock.__name__}, best of >= {repeats}; ratio = ort / tinyasr)")
    print(f"{'layer':42s} {'tinyasr':>9s} {'ort':>9s} {'ratio':>6s}  max|diff|")
    threads.set_num_threads(n_threads)
    rng = np.random.default_rng(0)
    for name in names:
        cin, cout, taps, group, stride, dilation, t_in = LAYERS[name]
        x = rng.standard_normal((1, cin, t_in), dtype=np.float32)
        w = (rng.standard_normal((cout, cin // group, taps)) / np.sqrt(cin // group * taps)).astype(np.float32)
        b = rng.standard_normal(cout, dtype=np.float32)
        pads = (dilation * (taps - 1) // 2, dilation * (taps - 1) // 2)
        kw = dict(stride=stride, dilation=dilation, pad_left=pads[0], pad_right=pads[1], group=group)
        out = conv1d(x, w, b, **kw)
        session = ort_conv_session(x.shape, w, b, stride, dilation, pads, group, n_threads)
        feed = {"x": x}
        expected = session.run(None, feed)[0]
        ms_ours = best_ms(lambda: conv1d(x, w, b, **kw, out=out), repeats, clock=clock)
        ms_ort = best_ms(lambda: session.run(None, feed), repeats, clock=clock)
        print(f"{name:42s} {ms_ours:9.3f} {ms_ort:9.3f} {ms_ort / ms_ours:6.2f}  {np.abs(out - expected).max():.1e}")


def bench_pointwise(n_threads, repeats):
    """Dense 1x1 convs: the Numba kernels (as conv1d picks them) against numpy's BLAS matmul and onnxruntime."""
    clock = clock_for(n_threads)
    print(f"\n## pointwise (dense 1x1), {n_threads} thread(s)   (us {clock.__name__}; ratios: other / tinyasr)")
    print(f"{'Cin x Cout':>11s} {'T':>5s} {'tinyasr':>9s} {'numpy':>9s} {'ort':>9s} {'np/t':>6s} {'ort/t':>6s} "
          f"{'GFLOP/s':>8s}")
    threads.set_num_threads(n_threads)
    rng = np.random.default_rng(3)
    for cin, cout in POINTWISE:
        w = (rng.standard_normal((cout, cin, 1)) / np.sqrt(cin)).astype(np.float32)
        no_bias = np.zeros(cout, np.float32)
        for t_in in POINTWISE_FRAMES:
            x = rng.standard_normal((1, cin, t_in), dtype=np.float32)
            out = np.empty((1, cout, t_in), np.float32)
            session = ort_conv_session(x.shape, w, no_bias, 1, 1, (0, 0), 1, n_threads)
            feed = {"x": x}
            us = [1e3 * best_ms(fn, repeats, clock=clock) for fn in (
                lambda: conv1d(x, w, out=out), lambda: np.matmul(w[:, :, 0], x[0], out=out[0]),
                lambda: session.run(None, feed))]
            print(f"{cin:5d}x{cout:<5d} {t_in:5d} {us[0]:9.1f} {us[1]:9.1f} {us[2]:9.1f} {us[1] / us[0]:6.2f} "
                  f"{us[2] / us[0]:6.2f} {2e-3 * cin * cout * t_in / us[0]:8.0f}")


def bench_streaming_calls(repeats):
    """One streaming chunk's conv calls (4 new frames after the left context) through the Conv op, against the
    bare numpy matmul: what the per-call Python work costs (1 thread, us per call)."""
    from tinyasr.ops import run_op

    print("\n## streaming-sized calls through the Conv op (1 thread, us thread_time per call)")
    threads.set_num_threads(1)
    rng = np.random.default_rng(4)
    for channels, taps, frames in ((256, 33, 4), (256, 75, 4), (512, 87, 8)):
        x = rng.standard_normal((1, channels, taps - 1 + frames), dtype=np.float32)
        w = rng.standard_normal((channels, 1, taps), dtype=np.float32)
        b = rng.standard_normal(channels, dtype=np.float32)
        attrs = {"group": channels, "kernel_shape": [taps], "pads": [0, 0]}
        us = 1e3 * best_ms(lambda: run_op("Conv", [x, w, b], attrs, num_outputs=1), repeats * 10,
                           clock=time.thread_time)
        print(f"depthwise C{channels} K{taps}, {frames} output frames: {us:7.1f}")
    for channels, frames in ((256, 4), (512, 4), (512, 8)):
        x = rng.standard_normal((1, channels, frames), dtype=np.float32)
        w = (rng.standard_normal((channels, channels, 1)) / np.sqrt(channels)).astype(np.float32)
        b = rng.standard_normal(channels, dtype=np.float32)
        z = rng.standard_normal((1, channels, frames), dtype=np.float32)
        attrs = {"kernel_shape": [1], "activation": "Relu"}
        op = 1e3 * best_ms(lambda: run_op("Conv", [x, w, b, z], attrs, num_outputs=1), repeats * 10,
                           clock=time.thread_time)
        bare = 1e3 * best_ms(lambda: np.matmul(w[:, :, 0], x[0]), repeats * 10, clock=time.thread_time)
        print(f"pointwise {channels}x{channels} + bias + residual + Relu, {frames} frames: {op:7.1f}  "
              f"(bare numpy matmul {bare:7.1f})")


def quartznet_stack(channels=256, t_in=FRAMES_10S, blocks=5, taps=33):
    """Separable blocks (depthwise, then pointwise + bias + residual + Relu): alternates Numba and BLAS."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((1, channels, t_in), dtype=np.float32)
    wd = [rng.standard_normal((channels, 1, taps), dtype=np.float32) / np.sqrt(taps) for _ in range(blocks)]
    wp = [rng.standard_normal((channels, channels, 1), dtype=np.float32) / 16 for _ in range(blocks)]
    bias = rng.standard_normal(channels, dtype=np.float32)

    def run():
        h = x
        for d, p in zip(wd, wp):
            h = conv1d(conv1d(h, d, pad_left=taps // 2, pad_right=taps // 2, group=channels), p, bias, h,
                       activation="Relu")
        return h

    return run


def bench_pool_fight(repeats):
    """Numba pool size x BLAS pool size on the same alternating workload (wall time, 3 rounds)."""
    print("\n## QuartzNet-like stack: 5 x (depthwise K33 + pointwise 256x256), T=1000   (ms wall, 3 rounds)")
    run = quartznet_stack()
    results = {}
    for _ in range(3):
        for numba_n, blas_n in [(1, 1), (2, 1), (1, 2), (2, 2)]:
            threads.set_num_threads(numba_n)
            threads._set_blas_threads(blas_n)  # the combination under test, overriding the policy
            results.setdefault((numba_n, blas_n), []).append(best_ms(run, repeats))
    for (numba_n, blas_n), times in results.items():
        print(f"numba {numba_n} thread(s), BLAS {blas_n} thread(s): " + " ".join(f"{t:8.2f}" for t in times))
    threads.set_num_threads(1)


def bench_parallel_threshold(repeats):
    """Serial vs parallel depthwise build on small inputs: where does the parallel launch pay?"""
    print("\n## depthwise C256 K33: serial vs parallel build, 2 threads   (us)")
    threads.set_num_threads(2)
    rng = np.random.default_rng(2)
    w = rng.standard_normal((256, 33), dtype=np.float32)
    none_b, none_r = np.zeros(0, np.float32), np.zeros((0, 0, 0), np.float32)
    for t_in in (1, 4, 16, 64, 256):
        x = rng.standard_normal((1, 256, t_in), dtype=np.float32)
        y = np.empty((1, 256, t_in), np.float32)
        args = (x, w, *nonzero_taps(w[:, None], 1), none_b, none_r, y, 1, 1, 16, 0, np.float32(0), np.float32(0))
        serial = best_ms(lambda: depthwise_rows.serial(*args), repeats) * 1e3
        parallel = best_ms(lambda: depthwise_rows.parallel(*args), repeats) * 1e3
        print(f"T={t_in:4d} (work {256 * t_in * 33:8d}): serial {serial:8.1f}  parallel {parallel:8.1f}")
    threads.set_num_threads(1)


# Compile (or load from the cache) the dense kernels a QuartzNet uses, serial builds: both depthwise and both
# pointwise paths, the epilogue.  Kernels are built on first call (tinyasr/kernels/_compile.py).
FIRST_CALLS = """
import time; t = time.process_time()
import numpy as np
from tinyasr.kernels import conv1d
x, dw, pw = np.ones((1, 8, 80), np.float32), np.ones((8, 1, 5), np.float32), np.ones((8, 8, 1), np.float32)
conv1d(x, dw, group=8, pad_left=2, pad_right=2); conv1d(x[:, :, :8], dw, group=8)
conv1d(x, pw, activation="Tanh"); conv1d(x[:, :, :4], pw); conv1d(x[:, :, :8], pw, np.ones(8, np.float32))
print(time.process_time() - t)
"""


def bench_compile():
    """Seconds (CPU of a fresh process) to import tinyasr.kernels and make the first call of each dense kernel,
    with an empty Numba cache, then cached."""
    code = FIRST_CALLS
    base = "import time; t = time.process_time(); import numba, numpy; print(time.process_time() - t)"
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, NUMBA_CACHE_DIR=cache, PYTHONPATH=root)

        def seconds(source):
            return float(subprocess.run([sys.executable, "-c", source], env=env, check=True, capture_output=True,
                                        text=True).stdout)

        cold, warm, numba_only = seconds(code), seconds(code), seconds(base)
    print(f"\n## import + first call of each dense kernel (CPU s): cold compile {cold:.2f}, cached load {warm:.2f} "
          f"(of which importing numba + numpy {numba_only:.2f})")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats and layers")
    args = parser.parse_args(argv)
    repeats = 3 if args.quick else 10
    names = list(LAYERS)[:: 2 if args.quick else 1]
    print(f"cores: {os.cpu_count()}, BLAS thread control: {threads.blas_threads_controllable()}, "
          f"OpenBLAS core: {threads.blas_core_name()}")
    for n in (1, 2):
        bench_layers(n, repeats, names)
        bench_pointwise(n, repeats)
    bench_streaming_calls(repeats)
    bench_pool_fight(repeats)
    bench_parallel_threshold(repeats * 10)
    bench_compile()


if __name__ == "__main__":
    main()
