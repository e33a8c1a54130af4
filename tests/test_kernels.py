"""conv1d / bias_act against torch (independent) and the numpy references; thread control.

Tolerance: |y - ref| <= 1e-5 + 1e-5 * |ref| elementwise (TOL).  Weights are scaled by
1/sqrt(fan_in) as in a real network, so outputs are O(1) and float32 summation error over up to
~2,500 terms stays below it (seen: <= 4e-6 absolute).
"""

import itertools
import json
import os
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tinyasr.engine import threads
from tinyasr.errors import GraphError, TinyASRError
from tinyasr.kernels import ACTIVATIONS, bias_act, bias_act_reference, conv1d, conv1d_reference, output_length
from tinyasr.kernels.conv1d import (
    BLOCKED_MIN_DENSITY,
    DEPTHWISE_SHORT,
    NO_TAPS,
    SHORT_FRAMES,
    deinterleave,
    depthwise_rows,
    depthwise_short_rows,
    nonzero_taps,
)
from tinyasr.kernels import depthwise
from tinyasr.kernels.conv2d import conv2d
from tinyasr.kernels.depthwise import BLOCK_KERNELS, LANE_CHOICES
from tinyasr.kernels.epilogue import NO_RESIDUAL, epilogue_rows
from tinyasr.kernels.pointwise import NARROW_KERNELS, TILE_KERNELS, frames_first, packed_strips

TOL = dict(rtol=1e-5, atol=1e-5)
CLIP = (-0.5, 0.75)  # the Clip activation_params used throughout
TORCH_ACTIVATIONS = {"": lambda v: v, "Relu": torch.relu, "Sigmoid": torch.sigmoid, "Tanh": torch.tanh,
                     "Clip": lambda v: torch.clamp(v, *CLIP)}


def _torch_conv1d(x, w, bias=None, residual=None, *, stride=1, dilation=1, pad_left=0, pad_right=0, group=1,
                  activation="", activation_params=()):
    """The same computation written with torch only (the independent reference)."""
    xt = F.pad(torch.from_numpy(x), (pad_left, pad_right))
    y = F.conv1d(xt, torch.from_numpy(w), None if bias is None else torch.from_numpy(bias),
                 stride=stride, dilation=dilation, groups=group)
    if residual is not None:
        y = y + torch.from_numpy(residual)
    assert activation != "Clip" or tuple(activation_params) == CLIP
    return TORCH_ACTIVATIONS[activation](y).numpy()


def _case(rng, batch, cin, cout, taps, t_in, group, stride=1, dilation=1, pads=(0, 0), with_bias=True,
          with_residual=False, activation=""):
    x = rng.standard_normal((batch, cin, t_in), dtype=np.float32)
    w = (rng.standard_normal((cout, cin // group, taps)) / np.sqrt(cin // group * taps)).astype(np.float32)
    kw = dict(stride=stride, dilation=dilation, pad_left=pads[0], pad_right=pads[1], group=group,
              activation=activation, activation_params=CLIP if activation == "Clip" else ())
    t_out = output_length(t_in, taps, stride, dilation, *pads)
    bias = rng.standard_normal(cout, dtype=np.float32) if with_bias else None
    residual = rng.standard_normal((batch, cout, t_out), dtype=np.float32) if with_residual else None
    return x, w, bias, residual, kw


def _check(x, w, bias, residual, kw):
    y = conv1d(x, w, bias, residual, **kw)
    np.testing.assert_allclose(y, _torch_conv1d(x, w, bias, residual, **kw), **TOL)
    np.testing.assert_allclose(y, conv1d_reference(x, w, bias, residual, **kw), **TOL)
    assert y.dtype == np.float32 and y.shape == (x.shape[0], w.shape[0], output_length(x.shape[2], w.shape[2],
                                                 kw["stride"], kw["dilation"], kw["pad_left"], kw["pad_right"]))
    return y


# (K, dilation, stride, pads, batch, T): every K with each of dilation/stride/pad styles, T from 1 to 3000
DEPTHWISE = [
    (1, 1, 1, (0, 0), 1, 1), (1, 2, 2, (1, 0), 3, 17),
    (3, 1, 1, (1, 1), 3, 40), (3, 2, 2, (0, 3), 1, 2),
    (11, 1, 2, (5, 5), 1, 300), (11, 2, 1, (10, 10), 3, 64),
    (33, 1, 1, (16, 16), 1, 3000), (33, 1, 2, (16, 16), 3, 201), (33, 2, 1, (40, 24), 1, 500),
    (75, 1, 1, (37, 37), 3, 129), (75, 2, 2, (74, 0), 1, 1000), (75, 1, 1, (0, 80), 1, 60),
    (7, 1, 3, (3, 1), 2, 50), (5, 3, 4, (6, 2), 1, 23),
]


@pytest.fixture(params=LANE_CHOICES)
def block_width(request, monkeypatch):
    """Each channel block width of the depthwise kernel in turn, whichever this CPU's measurement chose."""
    monkeypatch.setattr(depthwise, "block_lanes", lambda: request.param)
    return request.param


@pytest.mark.parametrize("taps,dilation,stride,pads,batch,t_in", DEPTHWISE)
def test_depthwise_matches_torch(taps, dilation, stride, pads, batch, t_in, block_width):
    """24 channels: three whole blocks of 8, or one of 16 and a partial one."""
    rng = np.random.default_rng(taps * 1000 + t_in)
    _check(*_case(rng, batch, 24, 24, taps, t_in, 24, stride, dilation, pads))


# (x shape, kernel, strides, dilations, pads top / left / bottom / right): FastConformer's dw_striding, partial blocks
DEPTHWISE_2D = [((1, 8, 20, 16), (3, 3), (2, 2), (1, 1), (1, 1, 1, 1)),
                ((2, 19, 13, 21), (3, 3), (2, 2), (1, 1), (1, 1, 1, 1)),
                ((1, 16, 11, 19), (3, 5), (1, 2), (2, 1), (2, 2, 1, 3)),
                ((1, 40, 9, 37), (3, 3), (1, 1), (1, 1), (1, 1, 1, 1))]


@pytest.mark.parametrize("x_shape,kernel,strides,dilations,pads", DEPTHWISE_2D)
def test_depthwise_2d_matches_torch(x_shape, kernel, strides, dilations, pads, block_width):
    rng = np.random.default_rng(sum(x_shape))
    channels = x_shape[1]
    x = rng.standard_normal(x_shape, dtype=np.float32)
    w = (rng.standard_normal((channels, 1, *kernel)) / np.sqrt(np.prod(kernel))).astype(np.float32)
    bias = rng.standard_normal(channels, dtype=np.float32)
    y = conv2d(x, w, bias, strides=strides, dilations=dilations, pads=pads, group=channels)
    padded = F.pad(torch.from_numpy(x), (pads[1], pads[3], pads[0], pads[2]))
    expected = F.conv2d(padded, torch.from_numpy(w), torch.from_numpy(bias), stride=strides, dilation=dilations,
                        groups=channels).numpy()
    np.testing.assert_allclose(y, expected, **TOL)


def test_blocked_depthwise_weight_is_kept_only_while_it_cannot_change():
    """The blocked form of a read-only weight (a model's) is made once; a writable one is blocked on every call, so
    a weight changed between calls is never run stale."""
    import gc
    import weakref

    from tinyasr.kernels.depthwise import blocked_weight, block_lanes

    rng = np.random.default_rng(3)
    x = rng.standard_normal((1, 20, 40), dtype=np.float32)
    weight = rng.standard_normal((20, 1, 9), dtype=np.float32)
    blocked, lanes = blocked_weight(weight), block_lanes()
    blocks = -(-20 // lanes)
    assert blocked.shape == (blocks, 1, 9, lanes) and not blocked[-1, :, :, 20 - (blocks - 1) * lanes:].any()
    np.testing.assert_array_equal(blocked[1, 0, :, 3], weight[lanes + 3, 0])
    first = conv1d(x, weight, group=20, pad_left=4, pad_right=4)
    weight *= 2
    np.testing.assert_allclose(conv1d(x, weight, group=20, pad_left=4, pad_right=4), 2 * first, rtol=1e-6)
    weight.flags.writeable = False
    assert blocked_weight(weight) is blocked_weight(weight)
    np.testing.assert_allclose(conv1d(x, weight, group=20, pad_left=4, pad_right=4), 2 * first, rtol=1e-6)
    kept = weakref.ref(blocked_weight(weight))
    del weight
    gc.collect()
    assert kept() is None  # dropped with its weight


@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
@pytest.mark.parametrize("path", ["depthwise", "pointwise", "grouped"])
def test_fused_bias_residual_activation(path, activation):
    rng = np.random.default_rng(len(activation))
    cin, cout, taps, group = {"depthwise": (12, 12, 7, 12), "pointwise": (12, 20, 1, 1), "grouped": (12, 8, 3, 4)}[path]
    for with_bias, with_residual in [(True, True), (False, True), (True, False), (False, False)]:
        _check(*_case(rng, 2, cin, cout, taps, 57, group, pads=(taps // 2, taps // 2), with_bias=with_bias,
                      with_residual=with_residual, activation=activation))


@pytest.mark.parametrize(
    "batch,cin,cout,taps,t_in,group,stride,dilation,pads",
    [
        (1, 256, 256, 1, 1000, 1, 1, 1, (0, 0)),  # QuartzNet pointwise
        (3, 32, 48, 1, 77, 1, 1, 1, (0, 0)),
        (2, 64, 32, 1, 101, 1, 2, 1, (0, 0)),  # Citrinet-style K=1 stride-2
        (1, 16, 16, 1, 10, 1, 1, 1, (2, 1)),  # K=1 with padding
        (2, 16, 24, 5, 90, 2, 1, 1, (2, 2)),  # grouped
        (1, 16, 32, 3, 45, 4, 2, 2, (3, 0)),
        (3, 8, 8, 11, 33, 1, 1, 1, (5, 5)),  # dense K > 1
        (1, 1, 257, 512, 16000, 1, 160, 1, (256, 256)),  # MarbleNet STFT-as-conv
        (2, 4, 12, 5, 30, 4, 1, 1, (2, 2)),  # depthwise with channel multiplier 3
        (1, 64, 640, 3, 700, 1, 1, 1, (1, 1)),  # im2col in time chunks
    ],
)
def test_matmul_paths_match_torch(batch, cin, cout, taps, t_in, group, stride, dilation, pads):
    rng = np.random.default_rng(cin + cout + taps)
    _check(*_case(rng, batch, cin, cout, taps, t_in, group, stride, dilation, pads, with_residual=True,
                  activation="Relu"))


def test_short_inputs_and_empty_output():
    rng = np.random.default_rng(3)
    # T shorter than the kernel, made valid by padding
    _check(*_case(rng, 2, 8, 8, 33, 5, 8, pads=(16, 16)))
    _check(*_case(rng, 1, 8, 4, 11, 3, 1, pads=(5, 5)))
    # T_out == 0 (and T == 0): an empty array of the right shape, for every path
    for cin, cout, group in [(8, 8, 8), (8, 4, 1), (8, 4, 2)]:
        for t_in in (0, 10):
            x = np.zeros((2, cin, t_in), np.float32)
            w = np.ones((cout, cin // group, 33), np.float32)
            assert conv1d(x, w, group=group).shape == (2, cout, 0)
            assert conv1d_reference(x, w, group=group).shape == (2, cout, 0)
    assert output_length(10, 33) == 0 and output_length(3, 33, pad_left=15, pad_right=15) == 1


@pytest.mark.parametrize("t_in,stride", [(1, 2), (10, 3), (11, 3), (12, 4), (0, 2)])
def test_deinterleave_matches_numpy(t_in, stride):
    x = np.arange(t_in, dtype=np.float32)
    expected = np.concatenate([x[p::stride] for p in range(stride)])
    np.testing.assert_array_equal(deinterleave(x, stride), expected)


def test_inputs_converted_once_and_out_written():
    rng = np.random.default_rng(4)
    x, w, bias, residual, kw = _case(rng, 2, 6, 6, 5, 40, 6, pads=(2, 2), with_residual=True)
    expected = conv1d(x, w, bias, residual, **kw)
    x_strided = np.asfortranarray(x.astype(np.float64))  # float64, not C-contiguous
    out = np.empty_like(expected)
    assert conv1d(x_strided, w, bias, residual, **kw, out=out) is out
    np.testing.assert_allclose(out, expected, **TOL)


@pytest.mark.parametrize(
    "args,kw,needle",
    [
        (((2, 3), (3, 3, 3)), {}, "input X"),
        (((1, 8, 20), (8, 3)), {}, "weight W"),
        (((1, 8, 20), (8, 2, 3)), {"group": 3}, "group=3"),
        (((1, 8, 20), (8, 1, 3)), {"stride": 0}, "strides"),
        (((1, 8, 20), (8, 1, 3)), {"pad_left": -1}, "pads[0]"),
        (((1, 8, 20), (8, 1, 3)), {"activation": "Gelu"}, "Gelu"),
        (((1, 8, 20), (8, 1, 3)), {"activation": "Clip"}, "Clip"),
        (((1, 8, 20), (8, 1, 3)), {"activation": "Relu", "activation_params": (1.0,)}, "activation_params"),
    ],
)
def test_bad_arguments_raise_graph_error(args, kw, needle):
    x, w = (np.zeros(shape, np.float32) for shape in args)
    kw = {"group": 8, **kw} if w.ndim == 3 and w.shape[1] == 1 else kw
    with pytest.raises(GraphError, match=needle.replace("[", r"\[").replace("]", r"\]")):
        conv1d(x, w, **kw)


def test_bad_bias_residual_out_dtype_raise_graph_error():
    x, w = np.zeros((1, 4, 10), np.float32), np.zeros((4, 4, 3), np.float32)
    for kwargs, needle in [
        ({"bias": np.zeros(5, np.float32)}, "bias"),
        ({"residual": np.zeros((1, 4, 10), np.float32)}, "residual"),
        ({"out": np.zeros((1, 4, 8), np.float64)}, "out"),
    ]:
        with pytest.raises(GraphError, match=needle):
            conv1d(x, w, **kwargs)
    with pytest.raises(GraphError, match="floating-point"):
        conv1d(x.astype(np.int32), w)
    pointwise, residual = np.zeros((4, 4, 1), np.float32), np.zeros((1, 4, 10), np.float32)
    for out, kwargs in [(x, {}), (residual, {"residual": residual})]:  # read-after-write hazards
        with pytest.raises(GraphError, match="overlap"):
            conv1d(x, pointwise, **kwargs, out=out)


@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
def test_bias_act_matches_reference_and_torch(activation):
    rng = np.random.default_rng(5)
    y = (rng.standard_normal((2, 7, 50)) * 40).astype(np.float32)  # large values exercise sigmoid / tanh tails
    bias, residual = rng.standard_normal(7, dtype=np.float32), rng.standard_normal((2, 7, 50), dtype=np.float32)
    params = CLIP if activation == "Clip" else ()
    expected = bias_act_reference(y, bias, residual, activation, params)
    torch_y = (torch.from_numpy(y) + torch.from_numpy(bias)[:, None]) + torch.from_numpy(residual)
    torch_y = TORCH_ACTIVATIONS[activation](torch_y).numpy()
    result = bias_act(y.copy(), bias, residual, activation, params)
    np.testing.assert_allclose(result, expected, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(result, torch_y, rtol=1e-6, atol=1e-7)
    y2 = y[0].copy()  # a [C, T] array is one batch item
    np.testing.assert_allclose(bias_act(y2, bias, None, activation, params),
                               bias_act_reference(y[0], bias, None, activation, params), rtol=1e-6, atol=1e-7)
    with pytest.raises(GraphError, match="bias_act"):
        bias_act(y.astype(np.float64), bias)


# ---------------------------------------------------------------------------------------------
# Threads
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def restore_threads():
    before = threads.get_num_threads()
    yield
    threads.set_num_threads(before)


def _quartznet_block(rng, t_in=400, channels=256):
    """Depthwise then pointwise (+ bias, residual, Relu), large enough to take the parallel paths at 2 threads."""
    x = rng.standard_normal((2, channels, t_in), dtype=np.float32)
    wd = rng.standard_normal((channels, 1, 33), dtype=np.float32) / 6
    wp = rng.standard_normal((channels, channels, 1), dtype=np.float32) / 8
    bias = rng.standard_normal(channels, dtype=np.float32)

    def run():
        h = conv1d(x, wd, pad_left=16, pad_right=16, group=channels)
        return conv1d(h, wp, bias, x, activation="Relu")

    return run


def test_one_and_two_threads_give_identical_results(restore_threads, monkeypatch):
    """Bit-identical: each Numba row is computed by one thread in one order, and BLAS stays at 1 thread.  (The
    pointwise convs on their tile kernel at both counts: where BLAS measured faster, a serial run uses it.)"""
    monkeypatch.setattr(sys.modules["tinyasr.kernels.conv1d"], "prefer_blas", lambda frames: False)
    run = _quartznet_block(np.random.default_rng(6))
    threads.set_num_threads(1)
    one = run()
    threads.set_num_threads(2)
    two = run()
    np.testing.assert_array_equal(one, two)
    # and the two builds of each kernel directly, whatever the dispatcher decides
    rng = np.random.default_rng(8)
    x, w = rng.standard_normal((2, 8, 300), dtype=np.float32), rng.standard_normal((8, 33), dtype=np.float32)
    bias, residual = rng.standard_normal(8, dtype=np.float32), rng.standard_normal((2, 8, 150), dtype=np.float32)
    ys = [np.empty((2, 8, 150), np.float32) for _ in range(2)]
    for build, y in zip((depthwise_rows.serial, depthwise_rows.parallel), ys):  # stride 2: the per-tap loop
        build(x, w, *NO_TAPS, bias, residual, y, 2, 1, 16, ACTIVATIONS["Tanh"], np.float32(0), np.float32(0))
    np.testing.assert_array_equal(ys[0], ys[1])
    w[:, ::3] = 0.0  # stride 1: the listed taps in time tiles
    ys = [np.empty((2, 8, 300), np.float32) for _ in range(2)]
    for build, y in zip((depthwise_rows.serial, depthwise_rows.parallel), ys):
        build(x, w, *nonzero_taps(w[:, None], 1), bias, residual.repeat(2, axis=2), y, 1, 1, 16, ACTIVATIONS["Relu"],
              np.float32(0), np.float32(0))
    np.testing.assert_array_equal(ys[0], ys[1])
    for build, y in zip((epilogue_rows.serial, epilogue_rows.parallel), ys):
        build(y, bias, residual, ACTIVATIONS["Sigmoid"], np.float32(0), np.float32(0))
    np.testing.assert_array_equal(ys[0], ys[1])
    # the depthwise blocks kernel, its work split into 1 to 5 chunks of time, 2-D at stride 2 and 1-D (one row)
    from tinyasr.kernels.depthwise import _blocked_weight

    cases = (((2, 19, 23, 17), (3, 3), (2, 2), (1, 1)), ((1, 24, 1, 301), (1, 33), (1, 1), (0, 16)))
    for (shape, taps, strides, pads), lanes in itertools.product(cases, LANE_CHOICES):
        x4 = rng.standard_normal(shape, dtype=np.float32)
        w4 = rng.standard_normal((shape[1], 1, *taps), dtype=np.float32)  # as a model stores it
        out_shape = (shape[0], shape[1], (shape[2] + 2 * pads[0] - taps[0]) // strides[0] + 1,
                     (shape[3] + 2 * pads[1] - taps[1]) // strides[1] + 1)
        results = []
        for parts in (1, 2, 5):
            for build in (BLOCK_KERNELS[lanes].serial, BLOCK_KERNELS[lanes].parallel):
                y4 = np.empty(out_shape, np.float32)
                build(x4, _blocked_weight(w4, lanes), y4, *strides, 1, 1, *pads, parts)
                results.append(y4)
        for y4 in results[1:]:
            np.testing.assert_array_equal(results[0], y4)


def test_concurrent_calls_from_python_threads(restore_threads):
    """Several Python threads at 2 Numba threads: one gets the parallel pool, the others run serially."""
    threads.set_num_threads(2)
    run = _quartznet_block(np.random.default_rng(7))
    expected = run()
    results = [None] * 4
    workers = [threading.Thread(target=lambda i=i: results.__setitem__(i, run())) for i in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    for result in results:
        np.testing.assert_array_equal(result, expected)


def test_set_num_threads_controls_numba_and_blas(restore_threads):
    import numba

    threads.set_num_threads(2)
    assert threads.get_num_threads() == 2 and numba.get_num_threads() == 2
    threads.set_num_threads(1)
    assert threads.get_num_threads() == 1 and numba.get_num_threads() == 1
    # this machine's numpy bundles OpenBLAS: it must be found, and kept at BLAS_THREADS by the policy
    assert threads.blas_threads_controllable()
    threads._set_blas_threads(2)
    assert threads.blas_num_threads() == 2
    threads.set_num_threads(2)
    assert threads.blas_num_threads() == threads.BLAS_THREADS
    threads.set_num_threads(10_000)  # capped at Numba's pool size
    assert threads.get_num_threads() == numba.config.NUMBA_NUM_THREADS
    for bad in (0, -1, 1.5, "2", True):
        with pytest.raises(TinyASRError, match="threads"):
            threads.set_num_threads(bad)


def test_without_a_controllable_blas_threads_still_work(monkeypatch, restore_threads):
    monkeypatch.setattr(threads, "_blas", [])
    assert not threads.blas_threads_controllable()
    assert threads.blas_num_threads() is None and threads.blas_core_name() is None
    threads.set_num_threads(2)
    assert threads.get_num_threads() == 2


def test_ctypes_fallback_finds_the_blas_threadpoolctl_finds(monkeypatch):
    """Without threadpoolctl, the ctypes helper controls the same OpenBLAS, as threadpoolctl itself reads it."""
    from threadpoolctl import threadpool_info

    monkeypatch.setitem(sys.modules, "threadpoolctl", None)  # import fails, as when it is not installed
    found = threads._find_blas()
    monkeypatch.undo()
    numpy_dir = os.path.realpath(os.path.dirname(np.__file__))  # numpy.libs/ (wheels) or numpy/.dylibs/
    numpy_blas = {os.path.realpath(i["filepath"]): i for i in threadpool_info()
                  if i["user_api"] == "blas" and os.path.realpath(i["filepath"]).startswith(numpy_dir)}
    assert [os.path.realpath(lib.filepath) for lib in found] == list(numpy_blas)
    (lib,), (info,) = found, numpy_blas.values()
    assert isinstance(lib, threads._CtypesOpenBLAS) and lib.architecture == info["architecture"]
    before = lib.num_threads
    try:
        for n in (2, 1):
            lib.set_num_threads(n)
            assert [i["num_threads"] for i in threadpool_info() if i["filepath"] == info["filepath"]] == [n]
    finally:
        lib.set_num_threads(before)


# Child process: numpy's BLAS at a count tinyasr never picks, then tinyasr imported, then its first run.
FIRST_RUN = """
import json, sys
import numpy as np
from threadpoolctl import threadpool_info, threadpool_limits
threadpool_limits(3, user_api="blas")
numpy_blas = [i["filepath"] for i in threadpool_info() if i["user_api"] == "blas"]  # only numpy's is loaded
import tinyasr.kernels
from tinyasr.engine import offline, streaming, threads


def state():
    return [threads.get_num_threads(), [i["num_threads"] for i in threadpool_info() if i["filepath"] in numpy_blas]]


imported = state()
model = offline.load_model("tinyasr/models/digits.tasr")
x = np.zeros((1, 64, 40), np.float32)
if sys.argv[1] == "stream":
    streaming.GraphStream(streaming.StreamPlan.from_model(model)).accept(x)
else:
    if sys.argv[1] == "set_num_threads":
        threads.set_num_threads(1)  # explicit: wins over the variable, also at the run after it
    model.run({model.inputs[0].name: x})
heavy = [m for m in ("torch", "onnx", "onnxruntime", "librosa") if m in sys.modules]
print(json.dumps([imported, state(), heavy]))
"""


@pytest.mark.parametrize("value,first,expected", [
    ("2", "run", 2), ("zero", "stream", threads.DEFAULT_THREADS), ("2", "set_num_threads", 1)])
def test_environment_variable_read_at_first_run(value, first, expected):
    """Nothing is set at import; the first run (offline or streamed) or set_num_threads applies the policy."""
    env = dict(os.environ, TINYASR_NUM_THREADS=value, NUMBA_NUM_THREADS="2")
    done = subprocess.run([sys.executable, "-c", FIRST_RUN, first], env=env, capture_output=True, text=True,
                          timeout=120, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert done.returncode == 0, done.stderr
    imported, ran, heavy = json.loads(done.stdout.strip().splitlines()[-1])
    assert imported == [threads.DEFAULT_THREADS, [3]]  # import read nothing and set nothing
    assert ran == [expected, [threads.BLAS_THREADS]]
    assert heavy == []  # the kernels pull in no test-only library (numba itself imports scipy when present)
    assert ("not a positive integer" in done.stderr) == (value == "zero")


@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
def test_non_finite_values_pass_through_like_torch(activation):
    y = np.array([[[np.nan, np.inf, -np.inf, 2.0]]], np.float32)
    params = CLIP if activation == "Clip" else ()
    expected = TORCH_ACTIVATIONS[activation](torch.from_numpy(y)).numpy()
    np.testing.assert_array_equal(bias_act(y.copy(), activation=activation, params=params), expected)


@pytest.mark.parametrize("group, taps", [(8, 5), (1, 1), (1, 3)])
def test_read_only_weights_run_without_copy(group, taps):
    """Weights come from the memory-mapped model file as read-only views; every path must accept them."""
    rng = np.random.default_rng(7)
    x = rng.standard_normal((2, 8, 40)).astype(np.float32)
    weight = rng.standard_normal((8, 8 // group, taps)).astype(np.float32)
    bias = rng.standard_normal(8).astype(np.float32)
    residual = rng.standard_normal((2, 8, 40)).astype(np.float32)
    for array in (x, weight, bias, residual):
        array.flags.writeable = False
    pad = taps // 2
    got = conv1d(x, weight, bias, residual, group=group, pad_left=pad, pad_right=pad, activation="Relu")
    want = conv1d_reference(x, weight, bias, residual, group=group, pad_left=pad, pad_right=pad, activation="Relu")
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


# The Numba pointwise kernels (pointwise_tiles: T_out >= POINTWISE_MIN_FRAMES, any Cout; pointwise_narrow:
# T_out in NARROW_FRAMES) and the short-input depthwise kernel (stride 1, T_out <= SHORT_FRAMES), each checked
# against torch and the numpy reference at its edges
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "batch,cin,cout,t_in,stride",
    [
        (1, 256, 256, 64, 1),  # exactly one tile
        (2, 48, 64, 24, 1),  # the smallest T on the Numba path: one partial tile
        (3, 37, 8, 130, 1),  # odd Cin, two full tiles and a 2-frame tail
        (1, 32, 40, 23, 1),  # below POINTWISE_MIN_FRAMES: BLAS
        (1, 32, 30, 200, 1),  # Cout % 4 != 0: the weight padded to whole strips, the last one's rows kept
        (2, 40, 29, 131, 1),  # a vocabulary's 29 outputs (QuartzNet), partial strip and partial tile together
        (1, 64, 5, 96, 1),  # fewer outputs than a strip of 4 rows after the first
        (2, 64, 32, 301, 2),  # K=1 stride 2: tiles of the subsampled input
        (1, 256, 256, 1, 1),  # T = 1: pointwise_narrow
        (2, 37, 29, 4, 1),  # 4 frames, odd Cout, Cin % 16 == 5
        (1, 8, 3, 2, 1),  # Cin < 16: no vector step at all
        (3, 48, 64, 7, 2),  # stride 2, 4 output frames
        (2, 40, 12, 6, 1),  # 6 frames: pointwise_narrow's second group of 4 frames is partial
        (1, 16, 8, 13, 1),  # 13 frames: BLAS
    ],
)
@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
@pytest.mark.parametrize("tiles_or_blas", ["tiles", "as measured"])
def test_pointwise_paths_match_torch(batch, cin, cout, t_in, stride, activation, tiles_or_blas, monkeypatch):
    """Both the tile kernel and what conv1d runs on this CPU (BLAS where it measured faster than the tiles)."""
    if tiles_or_blas == "tiles":
        monkeypatch.setattr(sys.modules["tinyasr.kernels.conv1d"], "prefer_blas", lambda frames: False)
    rng = np.random.default_rng(cin * cout + t_in)
    for with_bias, with_residual in [(True, True), (False, False)]:
        _check(*_case(rng, batch, cin, cout, 1, t_in, 1, stride, with_bias=with_bias, with_residual=with_residual,
                      activation=activation))


@pytest.mark.parametrize(
    "taps,dilation,pads,batch,t_in,multiplier",
    [
        (75, 1, (0, 0), 1, 78, 1),  # a streaming chunk: 4 new frames after 74 of context
        (33, 2, (0, 0), 2, 64 + 15, 1),  # dilated, SHORT_FRAMES outputs exactly
        (33, 1, (16, 16), 1, 1, 1),  # T = 1 < K, all but one tap in the padding
        (11, 1, (5, 5), 3, 7, 2),  # T < K with a channel multiplier
        (5, 3, (0, 0), 1, 13, 1),  # T_out = 1
        (1, 1, (0, 0), 2, 16, 1),  # K = 1
    ],
)
@pytest.mark.parametrize("activation", ["", "Relu", "Tanh"])
def test_short_depthwise_matches_torch(taps, dilation, pads, batch, t_in, multiplier, activation):
    rng = np.random.default_rng(taps + t_in)
    x, w, bias, residual, kw = _case(rng, batch, 8, 8 * multiplier, taps, t_in, 8, 1, dilation, pads,
                                     with_residual=True, activation=activation)
    assert 1 <= output_length(t_in, taps, 1, dilation, *pads) <= SHORT_FRAMES
    _check(x, w, bias, residual, kw)


def test_new_kernels_read_only_weights_and_identical_builds():
    """Read-only (memory-mapped) weights pass without a copy; serial and parallel builds agree bit for bit."""
    rng = np.random.default_rng(11)
    x = rng.standard_normal((2, 16, 100), dtype=np.float32)
    pointwise_w = rng.standard_normal((12, 16, 1), dtype=np.float32) / 4
    depthwise_w = rng.standard_normal((16, 1, 9), dtype=np.float32) / 3
    bias = rng.standard_normal(16, dtype=np.float32)
    for array in (x, pointwise_w, depthwise_w, bias):
        array.flags.writeable = False
    got = conv1d(x, pointwise_w, bias[:12], activation="Clip", activation_params=CLIP)
    np.testing.assert_allclose(got, _torch_conv1d(x.copy(), pointwise_w.copy(), bias[:12].copy(),
                                                  activation="Clip", activation_params=CLIP), **TOL)
    short = x[:, :, :12]
    got = conv1d(short, depthwise_w, bias, group=16, pad_left=4, pad_right=4, activation="Relu")
    np.testing.assert_allclose(got, _torch_conv1d(short.copy(), depthwise_w.copy(), bias.copy(), group=16,
                                                  pad_left=4, pad_right=4, activation="Relu"), **TOL)

    for outputs in (12, 11):  # 11: the last strip of 4 rows (of 2 rows for 2x48) keeps fewer
        ys = []  # every tile shape (each CPU picks one), serial and parallel, strips in 1-5 parts: the same sums
        for kernel in TILE_KERNELS.values():
            for build in (kernel.serial, kernel.parallel):
                for parts in (1, 2, 5):
                    ys.append(np.empty((2, outputs, 100), np.float32))
                    build(x, packed_strips(pointwise_w[:outputs, :, 0], kernel.rows), bias[:outputs],
                          np.ascontiguousarray(x[:, :outputs]), ys[-1], ACTIVATIONS["Relu"], np.float32(0),
                          np.float32(0), parts)
        for y in ys[1:]:
            np.testing.assert_array_equal(ys[0], y)
    x_t = frames_first(x[:, :, :6])
    np.testing.assert_array_equal(x_t[:, :6], x[:, :, :6].transpose(0, 2, 1))
    assert x_t.shape == (2, 8, 16) and not x_t[:, 6:].any()
    for narrow in NARROW_KERNELS.values():  # each strip height: serial and parallel the same sums in the same order
        ys = [np.empty((2, 12, 6), np.float32) for _ in range(2)]
        for build, y in zip((narrow.serial, narrow.parallel), ys):
            build(x_t, pointwise_w[:, :, 0], bias[:12], NO_RESIDUAL, y, ACTIVATIONS["Clip"], *np.float32(CLIP))
        np.testing.assert_array_equal(ys[0], ys[1])
    padded = np.zeros((2, 16, 8 + SHORT_FRAMES), np.float32)
    padded[:, :, :20] = x[:, :, :20]
    want = conv1d_reference(x[:, :, :20], depthwise_w, bias, group=16)
    for outputs, short in DEPTHWISE_SHORT.items():  # every width, serial and parallel: the same sums
        frames = min(outputs, 12)
        ys = [np.empty((2, 16, frames), np.float32) for _ in range(2)]
        for build, y in zip((short.serial, short.parallel), ys):
            build(padded, depthwise_w[:, 0], bias, NO_RESIDUAL, y, 1, 0, np.float32(0), np.float32(0))
        np.testing.assert_array_equal(ys[0], ys[1])
        np.testing.assert_allclose(ys[0], want[:, :, :frames], **TOL)


# Every register-tile shape of the dense pointwise kernel (the CPU picks one at first use, tuning.py) against the
# float64 numpy product, over odd sizes, T = 1 .. 2000 and an all-zero weight
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(TILE_KERNELS))
@pytest.mark.parametrize("cin,cout,frames", [(1, 4, 1), (37, 8, 15), (5, 12, 16), (64, 20, 47), (129, 36, 97),
                                             (33, 4, 2000), (256, 16, 1000)])
def test_every_tile_shape_matches_numpy(name, cin, cout, frames):
    kernel = TILE_KERNELS[name]
    rng = np.random.default_rng(cin + cout + frames)
    x = rng.standard_normal((2, cin, frames), dtype=np.float32)
    bias = rng.standard_normal(cout, dtype=np.float32)
    residual = rng.standard_normal((2, cout, frames), dtype=np.float32)
    longer = np.concatenate([x, np.full((2, cin, 3), np.nan, np.float32)], axis=2)  # frames past T are not read
    for w in (rng.standard_normal((cout, cin), dtype=np.float32), np.zeros((cout, cin), np.float32)):
        want = np.maximum(np.matmul(w.astype(np.float64), x.astype(np.float64)) + bias[:, None] + residual, 0)
        for source in (x, longer):
            y = np.full((2, cout, frames), np.nan, np.float32)
            kernel.serial(source, packed_strips(w, kernel.rows), bias, residual, y, ACTIVATIONS["Relu"],
                          np.float32(0), np.float32(0), 1)
            np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-4 * np.sqrt(cin))


@pytest.mark.parametrize("rows", [2, 4])
@pytest.mark.parametrize("cout", [4, 5, 129])
def test_packed_strips_layout(rows, cout):
    """packed_strips against its definition, element by element: strip s's weight of row k for input c at
    (s * Cin + c) * rows + k, zero rows after Cout up to whole strips; one copy per read-only weight."""
    weight = np.random.default_rng(cout).standard_normal((cout, 7, 1)).astype(np.float32)
    weight.flags.writeable = False
    packed = packed_strips(weight, rows)
    strips = -(-cout // rows)
    assert packed.shape == (strips * rows, 7) and packed.flags.c_contiguous
    flat = packed.reshape(-1)
    for s in range(strips):
        for c in range(7):
            for k in range(rows):
                r = s * rows + k
                assert flat[(s * 7 + c) * rows + k] == (weight[r, c, 0] if r < cout else 0.0)
    assert packed_strips(weight, rows) is packed


def test_tile_choice_is_measured_once_and_cached(tmp_path, monkeypatch):
    """tuning.fastest times the candidates once, keeps the fastest in its file, and reads it back (a damaged file
    is measured again, as is a changed kernel source) -- a second process on the same CPU does not measure."""
    from tinyasr.kernels import tuning

    calls = {"slow": 0, "fast": 0}

    def candidate(name, seconds):
        def run():
            calls[name] += 1
            end = time.thread_time() + seconds
            while time.thread_time() < end:
                pass
        return run

    candidates = {"slow": candidate("slow", 2e-3), "fast": candidate("fast", 0.0)}
    monkeypatch.setattr(tuning, "_chosen", {})
    assert tuning.fastest("family", candidates, tmp_path) == "fast"
    assert calls["slow"] == tuning.ROUNDS * tuning.CALLS + 1
    monkeypatch.setattr(tuning, "_chosen", {})  # a new process: reads the file
    assert tuning.fastest("family", candidates, tmp_path) == "fast" and calls["slow"] == tuning.ROUNDS * tuning.CALLS + 1
    (tmp_path / tuning.CACHE_FILE).write_text("{not json")
    monkeypatch.setattr(tuning, "_chosen", {})
    assert tuning.fastest("family", candidates, tmp_path) == "fast" and calls["slow"] == 2 * (tuning.ROUNDS * tuning.CALLS + 1)
    monkeypatch.setattr(tuning, "_chosen", {})  # the kernels' source changed: measured again
    assert tuning.fastest("family", candidates, tmp_path, "edited") == "fast"
    assert calls["slow"] == 3 * (tuning.ROUNDS * tuning.CALLS + 1)
    assert tuning.fastest("family", candidates, None) == "fast"  # no folder: remembered in the process


def test_timing_problems_hand_out_weights_read_from_beyond_the_caches():
    """A Rotation hands out its copies in turn, each with the original's values and dtypes and in memory of its own,
    ROTATION_BYTES of them, so a call's weights were last read that many bytes of weights ago."""
    from tinyasr.kernels import tuning

    weight, indices = np.arange(256 * 64, dtype=np.float32).reshape(256, 64), np.arange(5, dtype=np.uint16)
    rotation = tuning.Rotation(weight, indices)
    count = -(-tuning.ROTATION_BYTES // (weight.nbytes + indices.nbytes))
    handed = [rotation() for _ in range(count + 1)]
    for w, i in handed:
        np.testing.assert_array_equal(w, weight)
        np.testing.assert_array_equal(i, indices)
        assert w.dtype == weight.dtype and i.dtype == indices.dtype
    firsts = {w.ctypes.data for w, _ in handed[:count]}
    assert len(firsts) == count and weight.ctypes.data not in firsts
    assert handed[count][0] is handed[0][0]  # round again


def test_candidates_are_timed_with_blas_at_the_thread_count_tinyasr_runs_it(tmp_path, monkeypatch, restore_threads):
    """A choice made before the first run, while numpy's BLAS still has its own thread count, times BLAS as conv1d
    will run it (with 2 threads and this thread's CPU time, a matmul looked 1.8x faster than at one), and leaves
    BLAS as it found it."""
    from tinyasr.kernels import tuning

    seen = []
    threads._set_blas_threads(2)
    monkeypatch.setattr(tuning, "_chosen", {})
    assert tuning.fastest("family", {"only": lambda: seen.append(threads.blas_num_threads())}, tmp_path) == "only"
    assert seen and set(seen) == {threads.BLAS_THREADS}
    assert threads.blas_num_threads() == 2


@pytest.mark.parametrize("rows, width", [(1, 1), (7, 29), (64, 500)])
@pytest.mark.parametrize("in_place", [False, True])
def test_rowwise_kernels_match_torch(rows, width, in_place):
    """softmax / log-softmax / layer norm / sigmoid rows (the ops' float32 fast paths) against torch, also writing
    over x (the layer norm then through its in-place kernel, as the op runs it on a donated buffer)."""
    from tinyasr.kernels.rowwise import (layer_norm_rows, layer_norm_rows_in_place, log_softmax_rows, sigmoid_flat,
                                         softmax_rows)

    rng = np.random.default_rng(rows + width)
    x = (rng.standard_normal((rows, width)) * 4).astype(np.float32)
    scale, bias = rng.standard_normal(width).astype(np.float32), rng.standard_normal(width).astype(np.float32)
    t = torch.from_numpy(x)
    expected = [torch.softmax(t, -1), F.layer_norm(t, (width,), torch.from_numpy(scale), torch.from_numpy(bias), 1e-5),
                F.layer_norm(t, (width,), torch.from_numpy(scale), None, 1e-3), torch.sigmoid(t),
                torch.log_softmax(t, -1)]
    def layer_norm(a, o, b, epsilon):
        if o is a:
            layer_norm_rows_in_place(a, scale, b, np.float32(epsilon))
        else:
            layer_norm_rows(a, scale, b, np.float32(epsilon), o)

    runs = [lambda a, o: softmax_rows(a, o),
            lambda a, o: layer_norm(a, o, bias, 1e-5),
            lambda a, o: layer_norm(a, o, np.zeros(0, np.float32), 1e-3),
            lambda a, o: sigmoid_flat(a.reshape(-1), o.reshape(-1)),
            lambda a, o: log_softmax_rows(a, o)]
    for run, ref in zip(runs, expected):
        a = x.copy()
        out = a if in_place else np.empty_like(a)
        run(a, out)
        np.testing.assert_allclose(out, ref.numpy(), **TOL)
    extreme = np.array([-100.0, -20.0, 0.0, 30.0, 100.0, np.inf, -np.inf], np.float32)
    out = np.empty_like(extreme)
    sigmoid_flat(extreme, out)  # exact 0 and 1 at the ends, no NaN from inf / inf; within an ulp elsewhere
    np.testing.assert_allclose(out, torch.sigmoid(torch.from_numpy(extreme)).numpy(), rtol=2e-7, atol=0)


@pytest.mark.parametrize("shape", [(1, 29, 500), (2, 7, 3), (1, 1, 5), (3, 129, 1)])
@pytest.mark.parametrize("in_place", [False, True])
def test_log_softmax_columns_match_torch(shape, in_place):
    """The classes-in-the-middle log-softmax (an offline CTC conv stack's [B, classes, T]) against torch, also
    writing over x, and the LogSoftmax op on such a tensor (axis 1), its transposed view and a slice of it, all
    bit for bit what the rows kernel gives on time-major rows."""
    from tinyasr.kernels.rowwise import log_softmax_columns
    from tinyasr.ops import nn as nn_ops
    from tinyasr.ops.context import OpContext

    rng = np.random.default_rng(sum(shape))
    x = (rng.standard_normal(shape) * 4).astype(np.float32)
    x[0, 0, 0] = 60.0  # one large logit: the shift keeps exp in range
    expected = torch.log_softmax(torch.from_numpy(x), 1).numpy()
    a = x.copy()
    out = a if in_place else np.empty_like(a)
    log_softmax_columns(a, out)
    np.testing.assert_allclose(out, expected, **TOL)

    (got,) = nn_ops.log_softmax(OpContext(), [x], {"axis": 1})
    np.testing.assert_allclose(got, expected, **TOL)
    # as a CTC head gives it, [B, T, C] the transposed view of the conv's [B, C, T]; a slice of frames; the rows
    # kernel on the same values in time-major rows gives the same bits
    (viewed,) = nn_ops.log_softmax(OpContext(), [x.transpose(0, 2, 1)], {"axis": -1})
    np.testing.assert_array_equal(viewed, got.transpose(0, 2, 1))
    (sliced,) = nn_ops.log_softmax(OpContext(), [x[:, :, 1:]], {"axis": 1})
    np.testing.assert_array_equal(sliced, got[:, :, 1:])
    (rows,) = nn_ops.log_softmax(OpContext(), [np.ascontiguousarray(x.transpose(0, 2, 1))], {"axis": -1})
    np.testing.assert_array_equal(rows, got.transpose(0, 2, 1))


def test_exp32_is_within_an_ulp_and_keeps_the_limits():
    """kernels/vector_math.exp32 (the vectorised exp of the softmax / sigmoid / Swish kernels) against float64
    numpy over its whole range, then its documented behaviour outside it; lane_max / lane_sum on odd lengths."""
    from numba import njit

    from tinyasr.kernels.vector_math import HIGHEST, LOWEST, exp32, lane_max, lane_sum

    @njit
    def exp_all(x):
        out = np.empty_like(x)
        for i in range(x.shape[0]):
            out[i] = exp32(x[i])
        return out

    x = np.concatenate([np.linspace(LOWEST, HIGHEST, 1_000_001, dtype=np.float32),
                        np.float32([0, -0.0, 1e-30, -1e-30, 0.5, -0.5])])
    exact = np.exp(x.astype(np.float64))
    ulps = np.abs(exp_all(x) - exact) / np.spacing(exact.astype(np.float32)).astype(np.float64)
    assert ulps.max() <= 1.0
    limits = np.float32([-np.inf, -1000, -87.4, 88.4, 1000, np.inf, np.nan])
    np.testing.assert_array_equal(exp_all(limits), np.float32([0, 0, 0, np.inf, np.inf, np.inf, np.nan]))

    @njit
    def reduce(row):
        return lane_max(row), lane_sum(row)

    rng = np.random.default_rng(3)
    for n in (1, 7, 8, 9, 250, 1001):
        row = rng.standard_normal(n).astype(np.float32)
        top, total = reduce(row)
        assert top == row.max()
        np.testing.assert_allclose(total, row.astype(np.float64).sum(), rtol=1e-5, atol=1e-5)


def test_all_finite_agrees_with_numpy():
    """vector_math.all_finite (the audio checks' NaN / Inf test) against np.isfinite on float32 and float64, 1-D and
    2-D, empty, the largest and smallest values, and one NaN / +inf / -inf at every place of short arrays."""
    from tinyasr.kernels.vector_math import all_finite

    rng = np.random.default_rng(5)
    for dtype in (np.float32, np.float64):
        info = np.finfo(dtype)
        for x in (np.zeros(0, dtype), rng.standard_normal(1281).astype(dtype),
                  rng.standard_normal((640, 2)).astype(dtype), np.array([info.max, -info.max, info.tiny, -0.0], dtype),
                  np.array([info.smallest_subnormal], dtype)):
            assert all_finite(x) == bool(np.isfinite(x).all())
        for bad in (np.nan, np.inf, -np.inf):
            for n in (1, 7, 8, 9, 33):
                for at in range(n):
                    x = rng.standard_normal(n).astype(dtype)
                    x[at] = bad
                    assert not all_finite(x) and not all_finite(x.reshape(n, 1))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_decoder_log_probs_match_torch(dtype):
    """rowwise.log_probs_rows (every CTC decoder's log-softmax, float64) against torch.log_softmax in float64 and
    its argmax against np.argmax: logits, probs (log taken; a zero gives -inf), a strided view, a row with NaN
    (all NaN, best 0), rows of -inf and +inf, a tie (the first wins), one class."""
    from tinyasr.kernels.rowwise import log_probs_rows

    rng = np.random.default_rng(11)
    logits = (rng.standard_normal((37, 29)) * 5).astype(dtype)
    logits[3, 7] = logits[3, 2] = logits[3].max() + 1  # a tie
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    probs[5, :4] = 0.0
    cases = [(logits, False), (probs.astype(dtype), True), (logits[:, ::2], False), (logits[::3].T.copy(), False),
             (logits[:, :1], False)]
    for x, take_log in cases:
        out, best = np.empty(x.shape), np.empty(x.shape[0], np.int64)
        log_probs_rows(x, take_log, out, best)
        source = torch.from_numpy(np.asarray(x, np.float64))
        expected = torch.log_softmax(torch.log(source) if take_log else source, dim=1).numpy()
        np.testing.assert_allclose(out, expected, rtol=1e-12, atol=1e-12)
        assert np.array_equal(best, out.argmax(axis=1)) and np.array_equal(best, expected.argmax(axis=1))
    broken = logits[:4].copy()
    broken[0, 5], broken[1, :], broken[2, 3] = np.nan, -np.inf, np.inf
    out, best = np.empty(broken.shape), np.empty(4, np.int64)
    log_probs_rows(broken, False, out, best)
    assert np.isnan(out[:3]).all() and np.array_equal(best, [0, 0, 0, broken[3].argmax()])


def test_run_confidences_are_the_exp_of_each_runs_mean():
    """greedy.run_confidences against exp(mean) of each run in numpy, and run_confidence (a stream's partial
    result, one run at a time) against it to the bit; a strided column (the beam search's) as well."""
    from tinyasr.kernels.greedy import run_confidence, run_confidences

    rng = np.random.default_rng(2)
    scores = -rng.gamma(0.5, 1.0, 400)
    stops = np.cumsum(rng.integers(1, 40, 30))
    stops = stops[stops < 400]
    firsts = np.concatenate([[0], stops[:-1]]).astype(np.int64)
    got = run_confidences(scores, firsts, stops.astype(np.int64))
    np.testing.assert_allclose(got, [np.exp(scores[a:b].mean()) for a, b in zip(firsts, stops)], rtol=1e-14)
    assert [run_confidence(scores, a, b) for a, b in zip(firsts, stops)] == got.tolist()
    columns = np.stack([scores, scores[::-1]], axis=1)
    assert run_confidence(columns[:, 0], int(firsts[3]), int(stops[3])) == got[3]


@pytest.mark.parametrize("taps,dilation,frames", [(25, 1, 1), (33, 1, 95), (33, 2, 97), (75, 1, 500), (33, 1, 2000)])
def test_tiled_depthwise_matches_torch_and_the_short_kernel(taps, dilation, frames):
    """Stride-1 rows of a pruned depthwise conv (under BLOCKED_MIN_DENSITY) run in register tiles over their
    non-zero taps, an all-zero row and a one-tap row included: against torch, and bit for bit against
    depthwise_short_rows (streaming), which sums in the same tap order."""
    rng = np.random.default_rng(taps + frames)
    x = rng.standard_normal((2, 8, frames), dtype=np.float32)
    w = (rng.standard_normal((8, 1, taps)) / np.sqrt(taps)).astype(np.float32)
    w[rng.random(w.shape) < 0.6] = 0.0
    w[3], w[5, 0, 1:] = 0.0, 0.0
    assert np.count_nonzero(w) < BLOCKED_MIN_DENSITY * w.size  # conv1d takes depthwise_rows
    bias = rng.standard_normal(8, dtype=np.float32)
    pad = dilation * (taps - 1) // 2
    got = conv1d(x, w, bias, group=8, dilation=dilation, pad_left=pad, pad_right=pad, activation="Relu")
    np.testing.assert_allclose(got, _torch_conv1d(x, w, bias, group=8, dilation=dilation, pad_left=pad, pad_right=pad,
                                                  activation="Relu"), **TOL)
    padded = np.zeros((2, 8, frames + 2 * pad + SHORT_FRAMES), np.float32)
    padded[:, :, pad : pad + frames] = x
    for outputs in sorted(DEPTHWISE_SHORT):
        short = np.empty((2, 8, min(frames, outputs)), np.float32)
        depthwise_short_rows(short.shape[2]).serial(padded, w[:, 0], bias, NO_RESIDUAL, short, dilation,
                                                    ACTIVATIONS["Relu"], np.float32(0), np.float32(0))
        np.testing.assert_array_equal(got[:, :, : short.shape[2]], short)


@pytest.mark.parametrize("variant", sorted(NARROW_KERNELS))
@pytest.mark.parametrize("cin,cout,frames", [(1, 1, 1), (37, 29, 4), (16, 8, 12), (256, 30, 7), (5, 3, 2)])
def test_narrow_kernel_matches_numpy(cin, cout, frames, variant):
    """Each few-frame kernel against float64 numpy, whichever of them and BLAS this CPU's conv1d uses."""
    rng = np.random.default_rng(cin * frames + cout)
    x = rng.standard_normal((2, cin, frames), dtype=np.float32)
    w = rng.standard_normal((cout, cin), dtype=np.float32)
    bias = rng.standard_normal(cout, dtype=np.float32)
    y = np.full((2, cout, frames), np.nan, np.float32)
    NARROW_KERNELS[variant].serial(frames_first(x), w, bias, NO_RESIDUAL, y, 0, np.float32(0), np.float32(0))
    want = np.matmul(w.astype(np.float64), x.astype(np.float64)) + bias[:, None]
    np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-4 * np.sqrt(cin))
