"""The CSR / BSR kernels (tinyasr/kernels/sparse.py) against dense numpy matmuls computed in float64.

Tolerance: |y - ref| <= 1e-5 * (|W| @ |x| + |bias| + |residual|), the float32 rounding bound of a sum
(relative to the sum of the magnitudes of its terms, so cancellation cannot make the test flaky).
"""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tinyasr.engine import threads
from tinyasr.errors import GraphError
from tinyasr.kernels.conv1d import conv1d_reference
from tinyasr.kernels.epilogue import activate_reference
from tinyasr.kernels.pointwise import row_parts
from tinyasr.kernels.sparse import (BSR_KERNELS, CSR_KERNELS, conv1d_any, kernel_matrix, linear, spmm,
                                   spmm_reference)
from tinyasr.format.encodings.sparse import BSRMatrix, CSRMatrix, Int8Matrix, bsr_arrays, csr_arrays, int8_arrays

RTOL = 1e-5


def random_weight(rng, rows, columns, density, block_rows=1):
    weight = rng.standard_normal((rows, columns)).astype(np.float32)
    keep = rng.random((rows // block_rows, 1, columns)) < density
    return weight * np.broadcast_to(keep, (rows // block_rows, block_rows, columns)).reshape(rows, columns)


def encoded(weight, block_rows, taps=1):
    """The CSR (block_rows 1) or BSR (block_rows x 1) matrix of a dense [rows, columns * taps] weight."""
    shape = (weight.shape[0], weight.shape[1] // taps, taps)
    if block_rows == 1:
        return CSRMatrix(*csr_arrays(weight), shape)
    return BSRMatrix(*bsr_arrays(weight, (block_rows, 1)), shape, (block_rows, 1))


def dense_reference(weight, x, bias=None, residual=None, activation="", params=()):
    """float64 numpy: act(W @ x + bias + residual), independent of the sparse code."""
    y = np.matmul(weight.astype(np.float64), x.astype(np.float64))
    if bias is not None:
        y = y + bias.astype(np.float64)[:, None]
    if residual is not None:
        y = y + residual
    return activate_reference(y, activation, params)


def assert_close(y, weight, x, expected, bias=None, residual=None):
    bound = np.matmul(np.abs(weight).astype(np.float64), np.abs(x).astype(np.float64))
    if bias is not None:
        bound = bound + np.abs(bias)[:, None]
    if residual is not None:
        bound = bound + np.abs(residual)
    assert y.dtype == np.float32 and y.shape == expected.shape
    assert np.all(np.abs(y - expected) <= RTOL * bound + 1e-30), np.max(np.abs(y - expected) - RTOL * bound)


@pytest.mark.parametrize("frames", [1, 7, 16, 64, 1000])
@pytest.mark.parametrize("block_rows", [1, 4, 8])
@pytest.mark.parametrize("activation", ["", "Relu", "Clip"])
def test_kernel_matches_dense_matmul(frames, block_rows, activation):
    """Whole tiles (64, 1000 frames) are finished in the gather's IR, short ones through a buffer: both with a bias,
    a residual and each activation the kernels apply themselves."""
    rng = np.random.default_rng(frames * 10 + block_rows)
    rows, columns = 48, 37
    weight = random_weight(rng, rows, columns, 0.3, block_rows)
    x = rng.standard_normal((2, columns, frames)).astype(np.float32)
    bias = rng.standard_normal(rows).astype(np.float32)
    residual = rng.standard_normal((2, rows, frames)).astype(np.float32)
    matrix = encoded(weight, block_rows)
    params = (-0.5, 0.75) if activation == "Clip" else ()
    y = spmm(matrix, x, bias, residual, activation, params)
    assert_close(y, weight, x, dense_reference(weight, x, bias, residual, activation, params), bias, residual)
    y_plain = spmm(matrix, x)
    assert_close(y_plain, weight, x, dense_reference(weight, x))


@settings(max_examples=60, deadline=None)
@given(rows_4=st.integers(1, 20), columns=st.integers(1, 70), frames=st.integers(1, 150),
       density=st.floats(0, 1), block_rows=st.sampled_from([1, 4, 8]), batch=st.integers(1, 2),
       activation=st.sampled_from(["", "Relu", "Sigmoid", "Tanh", "Clip"]), seed=st.integers(0, 2**31))
def test_kernel_matches_dense_over_many_shapes(rows_4, columns, frames, density, block_rows, batch, activation, seed):
    rng = np.random.default_rng(seed)
    rows = 8 * rows_4 if block_rows == 8 else 4 * rows_4
    weight = random_weight(rng, rows, columns, density, block_rows)
    x = rng.standard_normal((batch, columns, frames)).astype(np.float32)
    bias = rng.standard_normal(rows).astype(np.float32)
    params = (-0.5, 0.75) if activation == "Clip" else ()
    y = spmm(encoded(weight, block_rows), x, bias, None, activation, params)
    if activation in ("", "Relu", "Clip"):
        assert_close(y, weight, x, dense_reference(weight, x, bias, None, activation, params), bias)
    else:  # Sigmoid and Tanh are 1-Lipschitz: the sum's rounding bound holds after them, plus their own rounding
        expected = dense_reference(weight, x, bias, None, activation, params)
        bound = RTOL * (np.matmul(np.abs(weight).astype(np.float64), np.abs(x)) + np.abs(bias)[:, None]) + 2e-6
        assert np.all(np.abs(y - expected) <= bound), np.max(np.abs(y - expected) - bound)


def test_parallel_build_matches_serial():
    rng = np.random.default_rng(5)
    weight = random_weight(rng, 256, 256, 0.1, 4)
    x = rng.standard_normal((1, 256, 300)).astype(np.float32)
    before = threads.get_num_threads()
    try:
        for block_rows in (1, 4):
            matrix = encoded(weight, block_rows)
            threads.set_num_threads(1)
            serial = spmm(matrix, x, activation="Relu")
            threads.set_num_threads(2)
            np.testing.assert_array_equal(spmm(matrix, x, activation="Relu"), serial)
    finally:
        threads.set_num_threads(before)


@pytest.mark.parametrize("name", sorted(CSR_KERNELS) + sorted(BSR_KERNELS))
@pytest.mark.parametrize("rows,columns,frames,density", [(4, 1, 1, 1.0), (12, 37, 33, 0.3), (36, 129, 127, 0.1),
                                                         (8, 64, 2000, 0.05), (20, 16, 200, 0.0)])
def test_every_kernel_variant_matches_dense(name, rows, columns, frames, density):
    """Each CPU runs one variant per encoding (tuning.py): all of them against float64 numpy, over odd sizes,
    T = 1 .. 2000, rows with no non-zeros and an all-zero matrix; serial and parallel builds agree bit for bit."""
    rng = np.random.default_rng(rows + columns + frames)
    block_rows = 1 if name in CSR_KERNELS else 4
    weight = random_weight(rng, rows, columns, density, block_rows)
    weight[rows // 2 : rows // 2 + block_rows] = 0.0  # an empty row (block row)
    matrix = encoded(weight, block_rows)
    kernel = CSR_KERNELS[name] if block_rows == 1 else BSR_KERNELS[name]
    values = matrix.values.reshape(-1, 1, 1) if block_rows == 1 else matrix.values
    x = rng.standard_normal((2, columns, frames)).astype(np.float32)
    bias = rng.standard_normal(rows).astype(np.float32)
    residual = rng.standard_normal((2, rows, frames)).astype(np.float32)
    ys = [np.full((2, rows, frames), np.nan, np.float32) for _ in range(2)]
    for build, y, parts in zip((kernel.serial, kernel.parallel), ys, (1, 3)):  # strips split in parts or not
        build(x, values, matrix.indices, matrix.indptr, bias, residual, y, 1, np.float32(0), np.float32(0), parts)
    np.testing.assert_array_equal(ys[0], ys[1])
    assert_close(ys[0], weight, x, dense_reference(weight, x, bias, residual, "Relu"), bias, residual)


def test_row_parts_give_every_worker_two_items():
    """The CSR kernels split the rows only where the tiles are fewer than two per worker."""
    assert row_parts(1, 1000, 256, 64, 1) == 1  # one worker: never split
    assert row_parts(1, 1000, 256, 64, 2) == 1  # 16 tiles for 2 workers
    assert row_parts(1, 64, 256, 64, 2) == 4  # one tile: 4 parts of 64 rows
    assert row_parts(2, 100, 256, 64, 4) == 2  # 4 tiles, 8 items wanted
    assert row_parts(1, 8, 3, 64, 8) == 3  # never more parts than rows


def test_reference_and_out_buffer():
    rng = np.random.default_rng(2)
    weight = random_weight(rng, 16, 9, 0.5, 4)
    matrix = encoded(weight, 4)
    x = rng.standard_normal((1, 9, 33)).astype(np.float32)
    out = np.empty((1, 16, 33), np.float32)
    assert spmm(matrix, x, out=out) is out
    np.testing.assert_allclose(out, spmm_reference(matrix, x), rtol=1e-5, atol=1e-6)


def test_block_shapes_without_a_kernel_run_as_csr():
    rng = np.random.default_rng(3)
    weight = random_weight(rng, 6, 8, 0.5)
    matrix = BSRMatrix(*bsr_arrays(weight, (2, 2)), (6, 8, 1), (2, 2))
    assert isinstance(kernel_matrix(matrix), CSRMatrix)
    x = rng.standard_normal((1, 8, 20)).astype(np.float32)
    assert_close(spmm(matrix, x), weight, x, dense_reference(weight, x))


@pytest.mark.parametrize("x_shape, pattern", [
    ((1, 5, 10), r"input X must be \[batch, 9, time\] for a 16x9 weight, got shape \(1, 5, 10\)"),
    ((9, 10), r"input X must be \[batch, 9, time\]"),
])
def test_bad_shapes_are_refused(x_shape, pattern):
    matrix = encoded(random_weight(np.random.default_rng(0), 16, 9, 0.5), 1)
    with pytest.raises(GraphError, match=pattern):
        spmm(matrix, np.zeros(x_shape, np.float32))
    with pytest.raises(GraphError, match=r"spmm: bias has shape \(3,\), expected \(16,\)"):
        spmm(matrix, np.zeros((1, 9, 4), np.float32), bias=np.zeros(3, np.float32))
    with pytest.raises(GraphError, match="must be a CSRMatrix or BSRMatrix"):
        spmm(np.zeros((16, 9), np.float32), np.zeros((1, 9, 4), np.float32))


@pytest.mark.parametrize("stride, taps, group, pads", [(1, 1, 1, (0, 0)), (2, 1, 1, (0, 0)), (1, 3, 1, (1, 1)),
                                                       (1, 1, 2, (0, 0)), (2, 5, 1, (2, 2))])
def test_conv1d_any_matches_the_conv_reference(stride, taps, group, pads):
    """Pointwise convs run the sparse kernel, every other geometry the dense conv on the decoded weight."""
    rng = np.random.default_rng(stride * 100 + taps)
    cin, cout, frames = 12, 16, 41
    weight = random_weight(rng, cout, cin // group * taps, 0.4, 4)
    x = rng.standard_normal((2, cin, frames)).astype(np.float32)
    bias = rng.standard_normal(cout).astype(np.float32)
    attrs = dict(stride=stride, pad_left=pads[0], pad_right=pads[1], group=group, activation="Relu")
    expected = conv1d_reference(x, weight.reshape(cout, cin // group, taps), bias, **attrs)
    for matrix in (encoded(weight, 1, taps), encoded(weight, 4, taps)):
        np.testing.assert_allclose(conv1d_any(x, matrix, bias, **attrs), expected, rtol=1e-5, atol=1e-5)
    values, scales = int8_arrays(weight.reshape(cout, cin // group, taps))
    int8 = Int8Matrix(values, scales, 0)
    np.testing.assert_allclose(conv1d_any(x, int8, bias, **attrs),
                               conv1d_reference(x, int8.to_dense(), bias, **attrs), rtol=1e-5, atol=1e-5)


def test_linear_matches_a_transposed_matmul():
    rng = np.random.default_rng(4)
    weight = random_weight(rng, 24, 10, 0.5, 8)
    a = rng.standard_normal((3, 10)).astype(np.float32)
    expected = a.astype(np.float64) @ weight.T.astype(np.float64)
    for matrix in (encoded(weight, 1), encoded(weight, 8)):
        np.testing.assert_allclose(linear(a, matrix), expected, rtol=1e-5, atol=1e-5)
    values, scales = int8_arrays(weight)
    int8 = Int8Matrix(values, scales, 0)
    np.testing.assert_allclose(linear(a, int8), a @ int8.to_dense().T, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("alpha, beta", [(1.0, 1.0), (0.5, 2.0)])
def test_gemm_op_with_a_sparse_weight_matches_onnxruntime(alpha, beta):
    """The Gemm op (a torch Linear: transB=1) runs CSR / BSR weights through the sparse kernel."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    from tinyasr.ops import run_op

    rng = np.random.default_rng(5)
    weight = random_weight(rng, 16, 12, 0.3, 4)
    a = rng.standard_normal((3, 12)).astype(np.float32)
    c = rng.standard_normal(16).astype(np.float32)
    node = helper.make_node("Gemm", ["A", "B", "C"], ["Y"], transB=1, alpha=alpha, beta=beta)
    graph = helper.make_graph(
        [node], "g",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in (("A", a.shape), ("B", weight.shape),
                                                                             ("C", c.shape))],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    (expected,) = session.run(None, {"A": a, "B": weight, "C": c})
    for matrix in (encoded(weight, 1), encoded(weight, 4)):
        (got,) = run_op("Gemm", [a, matrix, c], {"transB": 1, "alpha": alpha, "beta": beta})
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


_CACHE_PROBE = """
import numpy as np
from tinyasr.engine import threads
from tinyasr.format.encodings.sparse import BSRMatrix, CSRMatrix, bsr_arrays, csr_arrays
from tinyasr.kernels.sparse import spmm
rng = np.random.default_rng(0)
w = rng.standard_normal((64, 64)).astype(np.float32)
w[np.repeat(rng.random((16, 64)) < 0.9, 4, axis=0)] = 0.0
x = rng.standard_normal((1, 64, 300)).astype(np.float32)
for n in (1, 2):
    threads.set_num_threads(n)
    for matrix in (CSRMatrix(*csr_arrays(w), (64, 64, 1)), BSRMatrix(*bsr_arrays(w, (4, 1)), (64, 64, 1), (4, 1))):
        assert np.abs(spmm(matrix, x)[0] - w @ x[0]).max() < 1e-4
"""


def test_a_second_process_loads_the_sparse_kernels_from_numbas_cache(tmp_path):
    """Serial and parallel builds of every variant are cached under a key that is the same in the next process
    (a dispatcher in a kernel's closure made the key differ per process: each process compiled them again and
    the cache index grew by one entry per run)."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path), "NUMBA_DEBUG_CACHE": "1"}
    runs = [subprocess.run([sys.executable, "-c", _CACHE_PROBE], env=env, capture_output=True, text=True, timeout=600)
            for _ in range(2)]
    for run in runs:
        assert run.returncode == 0, run.stderr[-2000:]
    assert "data saved" in runs[0].stdout
    saved = [line for line in runs[1].stdout.splitlines() if "data saved" in line]
    assert not saved, saved
