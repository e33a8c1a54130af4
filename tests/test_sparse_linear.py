"""Sparse linear layers on time-major activations (MatMul with a stored CSR / BSR B): the kernel
(tinyasr/kernels/sparse.py, matmul_time_major) against float64 numpy over many shapes, the converter's choice,
and a 90 %-pruned NeMo Conformer converted sparse against onnxruntime on the same pruned ONNX model.

Kernel tolerance: |y - ref| <= 1e-5 * (|x| @ |W| + |bias|), the float32 rounding bound of a sum (relative to the
sum of the magnitudes of its terms, so cancellation cannot make the test flaky).
"""

from __future__ import annotations

import fnmatch

import numpy as np
import pytest

from tinyasr.engine.offline import Model, load_model
from tinyasr.errors import GraphError
from tinyasr.format.encodings.sparse import BSRMatrix, CSRMatrix, bsr_arrays, csr_arrays
from tinyasr.format.graph import Graph, Node, ValueInfo
from tinyasr.kernels.sparse import TIME_MAJOR_KERNELS, matmul_time_major, time_major_matrix

RTOL = 1e-5


def pruned(rng, inputs, outputs, density, empty_rows=(), empty_columns=()):
    """A float32 W [inputs, outputs] with about ``density`` of its entries kept, some rows / columns all zero."""
    weight = rng.standard_normal((inputs, outputs)).astype(np.float32)
    weight[rng.random(weight.shape) >= density] = 0.0
    weight[list(empty_rows)] = 0.0
    weight[:, list(empty_columns)] = 0.0
    return weight


def as_csr(weight):
    return CSRMatrix(*csr_arrays(weight), weight.shape)


def assert_close(y, x, weight, bias=None):
    x64 = np.asarray(x, np.float64)
    expected = x64 @ weight.astype(np.float64) + (0.0 if bias is None else bias.astype(np.float64))
    bound = np.abs(x64) @ np.abs(weight).astype(np.float64) + (0.0 if bias is None else np.abs(bias))
    assert y.dtype == np.float32 and y.shape == expected.shape
    assert np.all(np.abs(y - expected) <= RTOL * bound + 1e-30), np.max(np.abs(y - expected) - RTOL * bound)


@pytest.mark.parametrize("frames", [1, 2, 7, 63, 64, 65, 200, 2000])
@pytest.mark.parametrize("inputs, outputs", [(1, 1), (7, 13), (88, 352), (352, 88), (130, 67)])
def test_kernel_matches_numpy(frames, inputs, outputs):
    rng = np.random.default_rng(frames * 1000 + inputs + outputs)
    weight = pruned(rng, inputs, outputs, 0.1, empty_rows=range(0, inputs, 5), empty_columns=range(1, outputs, 3))
    x = rng.standard_normal((frames, inputs)).astype(np.float32)
    bias = rng.standard_normal(outputs).astype(np.float32)
    assert_close(matmul_time_major(x, as_csr(weight), bias), x, weight, bias)
    assert_close(matmul_time_major(x, as_csr(weight)), x, weight)


def test_every_variant_matches_and_is_the_same_at_any_thread_count():
    """Each calibrated variant (not only the one chosen here) is exact to rounding, serial and parallel alike."""
    rng = np.random.default_rng(3)
    weight = pruned(rng, 96, 80, 0.15)
    matrix = as_csr(weight).transposed
    x = rng.standard_normal((300, 96)).astype(np.float32)
    bias = rng.standard_normal(80).astype(np.float32)
    args = (x, matrix.values.reshape(-1, 1, 1), matrix.indices, matrix.indptr, bias)
    for kernel in TIME_MAJOR_KERNELS.values():
        serial, parallel = np.empty((300, 80), np.float32), np.empty((300, 80), np.float32)
        kernel.serial(*args, serial)
        kernel.parallel(*args, parallel)
        assert_close(serial, x, weight, bias)
        np.testing.assert_array_equal(serial, parallel)


def test_batch_dims_all_zero_weights_and_empty_inputs():
    rng = np.random.default_rng(4)
    weight = pruned(rng, 24, 40, 0.2)
    x = rng.standard_normal((2, 3, 70, 24)).astype(np.float32)
    assert_close(matmul_time_major(x, as_csr(weight)), x, weight)  # leading dims fold into frames
    zero = np.zeros((24, 40), np.float32)
    bias = rng.standard_normal(40).astype(np.float32)
    np.testing.assert_array_equal(matmul_time_major(x, as_csr(zero), bias), np.broadcast_to(bias, (2, 3, 70, 40)))
    assert matmul_time_major(np.zeros((0, 24), np.float32), as_csr(weight)).shape == (0, 40)
    vector = rng.standard_normal(24).astype(np.float32)  # MatMul of a 1-D A
    assert_close(matmul_time_major(vector, as_csr(weight)), vector, weight)


def test_bsr_weights_run_through_their_csr_form():
    rng = np.random.default_rng(5)
    weight = pruned(rng, 32, 24, 1.0)
    weight[np.repeat(rng.random((8, 24)) < 0.8, 4, axis=0)] = 0.0
    bsr = BSRMatrix(*bsr_arrays(weight, (4, 1)), (32, 24), (4, 1))
    x = rng.standard_normal((90, 32)).astype(np.float32)
    assert_close(matmul_time_major(x, bsr), x, weight)


def test_transposed_csr_is_the_transpose():
    rng = np.random.default_rng(6)
    weight = pruned(rng, 50, 33, 0.2, empty_rows=[0, 49], empty_columns=[0, 32])
    transposed = as_csr(weight).transposed
    assert transposed.shape == (33, 50) and transposed.indices.dtype == np.uint16
    np.testing.assert_array_equal(transposed.to_dense(), weight.T)
    values, indices, indptr = csr_arrays(np.ascontiguousarray(weight.T))  # the order csr_arrays writes
    np.testing.assert_array_equal(transposed.indptr, indptr)
    np.testing.assert_array_equal(transposed.indices, indices)
    np.testing.assert_array_equal(transposed.values, values)


def test_bad_arguments_are_named():
    rng = np.random.default_rng(7)
    csr = as_csr(pruned(rng, 8, 6, 0.5))
    with pytest.raises(GraphError, match=r"input A must be \[\.\.\., 8\]"):
        matmul_time_major(np.zeros((4, 7), np.float32), csr)
    with pytest.raises(GraphError, match="bias has shape"):
        matmul_time_major(np.zeros((4, 8), np.float32), csr, np.zeros(5, np.float32))
    with pytest.raises(GraphError, match="out must be"):
        matmul_time_major(np.zeros((4, 8), np.float32), csr, out=np.zeros((4, 5), np.float32))
    with pytest.raises(GraphError, match="2-D CSRMatrix"):
        matmul_time_major(np.zeros((4, 8), np.float32), CSRMatrix(csr.values, csr.indices, csr.indptr, (8, 6, 1)))
    assert time_major_matrix(np.zeros((8, 6), np.float32)) is None


def test_matmul_op_runs_a_sparse_weight_like_the_dense_one():
    """A graph MatMul with a CSR B (and one with the same B dense) in the engine, 3-D time-major activations."""
    rng = np.random.default_rng(8)
    weight = pruned(rng, 40, 56, 0.1)
    graph = Graph([ValueInfo("x", "float32", (1, "T", 40))], [ValueInfo("y", "float32", (1, "T", 56))],
                  [Node("linear", "MatMul", ("x", "w"), ("y",))])
    x = rng.standard_normal((1, 77, 40)).astype(np.float32)
    sparse = Model(graph, {"w": as_csr(weight)}).run({"x": x})["y"]
    assert_close(sparse, x, weight)
    np.testing.assert_allclose(sparse, Model(graph, {"w": weight}).run({"x": x})["y"], rtol=1e-5, atol=1e-5)
    with pytest.raises(GraphError, match="one element type"):
        Model(graph.__class__([ValueInfo("x", "float64", (1, "T", 40))], graph.outputs, graph.nodes),
              {"w": as_csr(weight)}).run({"x": x.astype(np.float64)})


# --------------------------------------------------------------------------- the converter's choice

tinyasr_convert = pytest.importorskip("tinyasr_convert")
from tinyasr_convert.sparse_choice import (choose_encoding, encode_weights, sparse_candidates,  # noqa: E402
                                           time_major_weights)


def test_converter_stores_sparse_matmul_weights_as_csr():
    rng = np.random.default_rng(9)
    sparse, dense = pruned(rng, 256, 512, 0.1), pruned(rng, 256, 512, 1.0)
    tensors = {"w_sparse": sparse, "w_dense": dense, "w_const": sparse.copy(), "c": np.ones((4, 256), np.float32)}
    nodes = [Node("a", "MatMul", ("x", "w_sparse"), ("y",)), Node("b", "MatMul", ("x", "w_dense"), ("z",)),
             Node("c", "MatMul", ("c", "w_const"), ("k",))]  # both operands stored: folded, not a layer
    graph = Graph([ValueInfo("x", "float32", (1, "T", 256))],
                  [ValueInfo(n, "float32", (1, "T", 512)) for n in "yzk"], nodes)
    assert time_major_weights(graph, tensors) == {"w_sparse", "w_dense"}
    candidates = sparse_candidates(graph, tensors)
    assert set(candidates) == {"w_sparse", "w_dense"} and candidates["w_sparse"].shape == (512, 256)  # as W^T
    encoded, kinds = encode_weights(graph, tensors, "auto")
    assert kinds == {"w_sparse": "csr"}
    assert encoded["w_sparse"].encoding == "csr" and tuple(encoded["w_sparse"].shape) == (256, 512)
    assert encode_weights(graph, tensors, "bsr")[1] == {"w_sparse": "csr"}  # no time-major BSR kernel
    assert choose_encoding(sparse.T, time_major=True) == "csr"
    assert choose_encoding(dense.T, time_major=True) == "dense"


# --------------------------------------------------------------------------- a pruned Conformer end to end

from _paths import SHARED_DIR  # noqa: E402

NEMO = SHARED_DIR / "models" / "nemo-random"
SPARSITY = 0.9
TOLERANCE = 1e-4  # max abs difference of the log-probs to onnxruntime's on the same pruned model


@pytest.fixture(scope="module", params=[("conformer_ctc_small", 16), ("fastconformer_ctc_small", 4)],
                ids=lambda p: p[0])
def pruned_conformer(request, tmp_path_factory):
    """(model name, layers, pruned ONNX path, conversion, pruned weight names): a shared Conformer CTC export with
    its FFN and attention linears 90 % pruned by magnitude in the ONNX file, converted with every weight that has
    zeros stored CSR (``sparse="csr"``: the kernel runs whatever the cost constants say; the choice is tested
    above)."""
    name, layers = request.param
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("yaml")
    if not NEMO.exists():
        pytest.skip(f"shared NeMo models not available ({NEMO})")
    from tinyasr_convert.conversion import convert_model
    from tinyasr_convert.nemo import load_config, manifest_from_nemo_config
    from tinyasr_convert.sparsity import NEMO_CONFORMER_LINEARS, onnx_weights_of_nodes, prune_onnx

    folder = tmp_path_factory.mktemp(name)
    model = onnx.load(str(NEMO / name / "model.onnx"))
    weights = [w for pattern in NEMO_CONFORMER_LINEARS for w in onnx_weights_of_nodes(model, pattern)]
    model, levels = prune_onnx(model, 0.0, overrides={w: SPARSITY for w in weights}, keep_first=False,
                               keep_last=False)
    assert sorted(w for w, level in levels.items() if level) == sorted(weights)
    onnx.save(model, str(folder / "pruned.onnx"))
    settings = manifest_from_nemo_config(load_config(NEMO / name / "model_config.yaml"))
    conversion = convert_model(folder / "pruned.onnx", folder / "pruned.tasr", sparse="csr", **settings)
    return name, layers, folder / "pruned.onnx", conversion, weights


def test_pruned_conformer_runs_sparse_and_matches_onnxruntime(pruned_conformer):
    ort = pytest.importorskip("onnxruntime")
    from tinyasr_convert.sparsity import NEMO_CONFORMER_LINEARS

    name, layers, onnx_path, conversion, weights = pruned_conformer
    assert len(weights) == layers * 9  # (4 FFN + 5 attention linears) per layer
    model = load_model(conversion.path)
    # compaction may have dropped an FFN unit that pruning zeroed whole, renaming its weights: go by node
    linears = [n.inputs[1] for n in model.graph.nodes
               if n.op in ("MatMul", "Linear") and any(fnmatch.fnmatchcase(n.name, p) for p in NEMO_CONFORMER_LINEARS)]
    assert len(linears) == len(weights)
    assert {w: conversion.encodings.get(w) for w in linears} == dict.fromkeys(linears, "csr")
    assert all(time_major_matrix(model.tensors[w]) is not None for w in linears)
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    vectors = np.load(NEMO / name / "test_vectors.npz")
    rng = np.random.default_rng(10)
    long_input = {"audio_signal": rng.standard_normal((1, 80, 1000)).astype(np.float32),
                  "length": np.array([1000], np.int64)}  # 10 s: 250 / 125 encoder frames, several 64-frame tiles
    for prefix in ("", "case2."):  # batch 1, and batch 2 with two lengths
        feeds = {k[len(prefix) + 6:]: vectors[k] for k in vectors.files if k.startswith(prefix + "input.")}
        expected = session.run(["logprobs"], feeds)[0]
        assert np.abs(model.run(feeds)["logprobs"] - expected).max() <= TOLERANCE
    expected = session.run(["logprobs"], long_input)[0]
    assert np.abs(model.run(long_input)["logprobs"] - expected).max() <= TOLERANCE
