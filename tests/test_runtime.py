"""The graph executor: small IR graphs written to .tasr files, run, and compared with numpy computed here."""

from __future__ import annotations

import threading

import numba
import numpy as np
import pytest
from numpy.lib.stride_tricks import sliding_window_view

from tinyasr.errors import GraphError, InputError
from tinyasr.engine import threads
from tinyasr.format.container import EncodedTensor, to_float16, write_model
from tinyasr.format.encodings.sparse import csr_arrays
from tinyasr.format.graph import Graph, Node, ValueInfo
from tinyasr.engine.offline import Model, aligned_empty, load_model

RNG = np.random.default_rng(7)
CHANNELS, VOCAB = 8, 5


def f32(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


def conv_numpy(x, w, bias=None, pad=0, group=1):
    """Stride-1 1-D convolution, float64, written independently of tinyasr (windows + einsum per group)."""
    x = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (pad, pad)))
    cin_g, cout_g, k = w.shape[1], w.shape[0] // group, w.shape[2]
    windows = sliding_window_view(x, k, axis=2)  # [B, C, T_out, K]
    y = np.concatenate([
        np.einsum("bctk,ock->bot", windows[:, g * cin_g:(g + 1) * cin_g], w[g * cout_g:(g + 1) * cout_g])
        for g in range(group)], axis=1)
    return y if bias is None else y + bias[:, None]


def save(tmp_path, nodes, inputs, outputs, tensors, decoder=None, frontend=None, name="m.tasr"):
    graph = Graph([ValueInfo(*v) for v in inputs], [ValueInfo(*v) for v in outputs], nodes)
    path = tmp_path / name
    manifest = {"graph": graph.to_dict(), "frontend": frontend, "decoder": decoder,
                "provenance": {"source": "test", "converter": "tests"}}
    write_model(path, manifest, tensors)
    return path


@pytest.fixture
def encoder_weights():
    return {"dw": f32(CHANNELS, 1, 5), "pw": f32(CHANNELS, CHANNELS, 1), "pw_b": f32(CHANNELS),
            "proj": f32(CHANNELS, VOCAB)}


@pytest.fixture
def encoder_path(tmp_path, encoder_weights):
    """A QuartzNet-like block: depthwise conv, pointwise conv with fused residual + ReLU, projection, log-softmax.

    The pointwise weight is stored as float16 (the runtime upcasts it once at load).
    """
    w = encoder_weights
    nodes = [
        Node("dw", "Conv", ("features", "dw"), ("dw_out",), {"group": CHANNELS, "pads": [2, 2]}),
        Node("pw", "Conv", ("dw_out", "pw", "pw_b", "features"), ("block",), {"activation": "Relu"}),
        Node("to_btc", "Transpose", ("block",), ("btc",), {"perm": [0, 2, 1]}),
        Node("proj", "MatMul", ("btc", "proj"), ("logits",)),
        Node("log_probs", "LogSoftmax", ("logits",), ("log_probs",), {"axis": -1}),
    ]
    tensors = {"dw": w["dw"], "pw": to_float16(w["pw"]), "pw_b": w["pw_b"], "proj": w["proj"]}
    decoder = {"type": "ctc", "output": "log_probs", "blank": VOCAB - 1, "vocabulary": list("abcd"),
               "vocabulary_type": "chars", "logits": "log_probs"}
    return save(tmp_path, nodes, [("features", "float32", ["batch", CHANNELS, "T"])],
                [("log_probs", "float32", ["batch", "T", VOCAB])], tensors, decoder=decoder)


def encoder_numpy(x, w):
    pw = w["pw"].astype(np.float16).astype(np.float64)  # what the file stores
    y = conv_numpy(x, w["dw"], pad=2, group=CHANNELS)
    y = np.maximum(conv_numpy(y, pw, w["pw_b"]) + x, 0)
    logits = y.transpose(0, 2, 1) @ w["proj"]
    logits -= logits.max(-1, keepdims=True)
    return logits - np.log(np.exp(logits).sum(-1, keepdims=True))


def test_encoder_matches_numpy_for_any_batch_and_length(encoder_path, encoder_weights):
    model = load_model(encoder_path)
    for shape in ((1, CHANNELS, 17), (3, CHANNELS, 40), (2, CHANNELS, 5)):
        x = f32(*shape)
        out = model.run({"features": x})
        assert list(out) == ["log_probs"]
        assert out["log_probs"].dtype == np.float32 and out["log_probs"].shape == (shape[0], shape[2], VOCAB)
        np.testing.assert_allclose(out["log_probs"], encoder_numpy(x, encoder_weights), rtol=1e-4, atol=1e-4)


def test_metadata(encoder_path):
    model = load_model(encoder_path)
    assert [v.name for v in model.inputs] == ["features"] and [v.name for v in model.outputs] == ["log_probs"]
    assert model.decoder["blank"] == VOCAB - 1 and model.frontend is None
    assert model.manifest["provenance"]["source"] == "test"
    assert model.path.endswith("m.tasr")


def test_float64_input_is_accepted_for_float32(encoder_path, encoder_weights):
    model = load_model(encoder_path)
    x = f32(1, CHANNELS, 9)
    out = model.run({"features": x.astype(np.float64)})["log_probs"]
    np.testing.assert_array_equal(out, model.run({"features": x})["log_probs"])


# ----------------------------------------------------------------------------- input validation

@pytest.fixture
def two_input_model(tmp_path):
    """out = features[:, :, :lengths-ish] style graph: features float32 [batch, 3, T], mask int64 [batch, T]."""
    nodes = [Node("cast", "Cast", ("mask",), ("mask_f",), {"to": 1}),
             Node("unsq", "Unsqueeze", ("mask_f", "axis1"), ("mask_3d",)),
             Node("mul", "Mul", ("features", "mask_3d"), ("masked",))]
    path = save(tmp_path, nodes, [("features", "float32", ["batch", 3, "T"]), ("mask", "int64", ["batch", "T"])],
                [("masked", "float32", ["batch", 3, "T"])], {"axis1": np.array([1], np.int64)})
    return load_model(path)


def test_two_inputs_run(two_input_model):
    x, mask = f32(2, 3, 6), (RNG.random((2, 6)) > 0.5).astype(np.int64)
    out = two_input_model.run({"features": x, "mask": mask.astype(np.int32)})["masked"]
    np.testing.assert_array_equal(out, x * mask[:, None, :])


@pytest.mark.parametrize("inputs,message", [
    (lambda: {"features": f32(1, 3, 4)}, r"missing input\(s\) \['mask'\]; expected inputs: features: float32 "
                                         r"\[batch, 3, T\]; mask: int64 \[batch, T\]"),
    (lambda: {"features": f32(1, 3, 4), "mask": np.ones((1, 4), np.int64), "lengths": np.ones(1)},
     r"unexpected input\(s\) \['lengths'\]"),
    (lambda: {"features": f32(3, 4), "mask": np.ones((1, 4), np.int64)}, r"'features' has shape \(3, 4\) \(rank 2\)"),
    (lambda: {"features": f32(1, 2, 4), "mask": np.ones((1, 4), np.int64)},
     r"'features' has size 2 on axis 1; expected 3"),
    (lambda: {"features": f32(1, 3, 4), "mask": np.ones((1, 5), np.int64)},
     r"dimension 'T' is 4 in input 'features' axis 2 but 5 in input 'mask' axis 1"),
    (lambda: {"features": f32(1, 3, 4), "mask": np.ones((1, 4), np.float32)},
     r"'mask' has dtype float32, which cannot be converted to the declared int64"),
    (lambda: {"features": f32(1, 3, 4), "mask": np.full((1, 4), 2**63, np.uint64)}, r"outside the range of int64"),
    (lambda: {"features": np.array([["a"]]), "mask": np.ones((1, 4), np.int64)}, r"'features' has dtype <U1"),
    (lambda: [f32(1, 3, 4)], "takes a dict"),
])
def test_bad_inputs_get_clear_errors(two_input_model, inputs, message):
    with pytest.raises(InputError, match=message) as info:
        two_input_model.run(inputs())
    assert str(info.value).startswith("m.tasr: ")


def test_float_refused_for_int16_input(tmp_path):
    path = save(tmp_path, [Node("id", "Identity", ("pcm",), ("out",))], [("pcm", "int16", ["N"])],
                [("out", "int16", ["N"])], {})
    model = load_model(path)
    with pytest.raises(InputError, match="'pcm' has dtype float32, which cannot be converted to the declared int16"):
        model.run({"pcm": np.zeros(4, np.float32)})
    np.testing.assert_array_equal(model.run({"pcm": np.arange(4, dtype=np.int8)})["out"], np.arange(4))


def test_unknown_op_is_refused_at_load(tmp_path):
    path = save(tmp_path, [Node("attn_0", "MultiHeadAttention", ("x",), ("y",))], [("x", "float32", [2])],
                [("y", "float32", [2])], {})
    with pytest.raises(GraphError, match=r"node 'attn_0': op 'MultiHeadAttention' is not supported by tinyasr; "
                                         r"supported ops: .*Conv.*LogSoftmax"):
        load_model(path)


def test_op_failure_names_node_and_shapes(tmp_path):
    nodes = [Node("flatten_bad", "Reshape", ("x", "shape"), ("y",))]
    path = save(tmp_path, nodes, [("x", "float32", ["N"])], [("y", "float32", [4, "M"])],
                {"shape": np.array([4, -1], np.int64)})
    model = load_model(path)
    assert model.run({"x": f32(8)})["y"].shape == (4, 2)
    with pytest.raises(GraphError, match=r"m.tasr: node 'flatten_bad' \(Reshape\): Reshape: cannot reshape a tensor "
                                         r"of shape \(6,\) to \[4, -1\]"):
        model.run({"x": f32(6)})


# ----------------------------------------------------------------------------- buffers

def conv_chain(tmp_path, depth, weights):
    """x -> Conv -> Conv -> ... (all [1, C, T]); each output is read once, by the next conv."""
    nodes, value = [], "x"
    for i in range(depth):
        nodes.append(Node(f"conv{i}", "Conv", (value, f"w{i}"), (f"c{i}",), {"pads": [1, 1], "activation": "Tanh"}))
        value = f"c{i}"
    return save(tmp_path, nodes, [("x", "float32", [1, CHANNELS, "T"])], [(value, "float32", [1, CHANNELS, "T"])],
                {f"w{i}": w for i, w in enumerate(weights)})


def test_second_run_allocates_nothing_and_dead_values_free_their_buffers(tmp_path):
    weights = [f32(CHANNELS, CHANNELS, 3) * 0.3 for _ in range(8)]
    model = load_model(conv_chain(tmp_path, len(weights), weights))
    x = f32(1, CHANNELS, 30)
    first = model.run({"x": x})["c7"]
    after_first = model.plan_stats()
    second = model.run({"x": x})["c7"]
    assert model.plan_stats() == after_first
    assert after_first["plans"] == 1 and after_first["buffers"] <= 2  # 8 convs, 2 live activations at a time
    np.testing.assert_array_equal(first, second)
    expected = x.astype(np.float64)
    for w in weights:
        expected = np.tanh(conv_numpy(expected, w, pad=1))
    np.testing.assert_allclose(first, expected, rtol=1e-4, atol=1e-5)
    model.run({"x": f32(1, CHANNELS, 31)})  # a new length gets its own plan
    assert model.plan_stats()["plans"] == 2 and model.plan_stats()["allocations"] > after_first["allocations"]


def test_replayed_runs_equal_the_first_and_allocate_nothing(tmp_path):
    """From the third run of a signature the recorded buffers are replayed: same results, no allocation, and the
    caller's inputs and earlier results untouched."""
    weights = [f32(CHANNELS, CHANNELS, 3) * 0.3 for _ in range(5)]
    model = load_model(conv_chain(tmp_path, len(weights), weights))
    inputs = [f32(1, CHANNELS, 20) for _ in range(5)]
    results = [model.run({"x": x})["c4"] for x in inputs]
    assert model._local.plans[next(iter(model._local.plans))].tape is not None
    after_recording = model.plan_stats()
    for x, got in zip(inputs, results):
        expected = x.astype(np.float64)
        for w in weights:
            expected = np.tanh(conv_numpy(expected, w, pad=1))
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(model.run({"x": inputs[0]})["c4"], results[0])
    assert model.plan_stats() == after_recording


def _sparse_pointwise(weight):
    values, indices, indptr = csr_arrays(weight.reshape(weight.shape[0], -1))
    return EncodedTensor("csr", "float32", weight.shape, {"values": values, "indices": indices, "indptr": indptr})


def test_replayed_convs_repeat_the_recorded_kernel_calls_for_new_input_values(tmp_path):
    """From the third run each Conv replays the call it bound on the recorded run (its checks and kernel choice
    made once): every kernel path (depthwise over many frames and the short-input one, sparse pointwise with a
    residual and a stride, dense pointwise) on new input values, against numpy; a new thread count records again."""
    channels = 32
    sparse = [f32(channels, channels, 1) * (RNG.random((channels, channels, 1)) < 0.2) for _ in range(2)]
    dw, pw, bias = f32(channels, 1, 5), f32(channels, channels, 1), f32(channels)
    nodes = [Node("dw", "Conv", ("x", "dw"), ("a",), {"group": channels, "pads": [2, 2]}),
             Node("sparse", "Conv", ("a", "s0", "b", "x"), ("r",), {"activation": "Relu"}),
             Node("strided", "Conv", ("r", "s1"), ("h",), {"strides": [2]}),
             Node("pw", "Conv", ("h", "pw"), ("y",), {"activation": "Tanh"})]
    path = save(tmp_path, nodes, [("x", "float32", [1, channels, "T"])], [("y", "float32", [1, channels, "U"])],
                {"dw": dw, "pw": pw, "b": bias, "s0": _sparse_pointwise(sparse[0]),
                 "s1": _sparse_pointwise(sparse[1])})
    model = load_model(path)

    def expected(x):
        r = np.maximum(conv_numpy(conv_numpy(x, dw, pad=2, group=channels), sparse[0], bias) + x, 0.0)
        return np.tanh(conv_numpy(conv_numpy(r, sparse[1])[:, :, ::2], pw))

    before = threads.get_num_threads()
    try:
        for frames, thread_count in ((70, 1), (12, 1), (70, 2)):  # 12: the short-input depthwise kernel
            threads.set_num_threads(thread_count)
            for _ in range(4):
                x = f32(1, channels, frames)
                np.testing.assert_allclose(model.run({"x": x})["y"], expected(x), rtol=1e-4, atol=1e-4)
    finally:
        threads.set_num_threads(before)
    tapes = [pool.tape for pool in model._local.plans.values()]
    assert len(tapes) == 2 + (numba.config.NUMBA_NUM_THREADS > 1)  # 2 threads: a plan of its own
    assert all(replay is not None for tape in tapes for _, _, _, replay in tape)


def test_a_replayed_conv_whose_input_length_depends_on_a_value_runs_in_full(tmp_path):
    """The Conv's input is cut to a length given by an input's value: a replayed run with another value must not
    use the call bound for the recorded length (its buffer and kernel arguments are for that length)."""
    w = f32(CHANNELS, CHANNELS, 3)
    nodes = [Node("cut", "Slice", ("x", "zero", "n", "two"), ("xs",)),
             Node("conv", "Conv", ("xs", "w"), ("y",), {"pads": [1, 1]})]
    path = save(tmp_path, nodes, [("x", "float32", [1, CHANNELS, "T"]), ("n", "int64", [1])],
                [("y", "float32", [1, CHANNELS, "M"])],
                {"w": w, "zero": np.array([0], np.int64), "two": np.array([2], np.int64)})
    model = load_model(path)
    x = f32(1, CHANNELS, 30)
    for n in (20, 20, 20, 9, 20, 27):
        got = model.run({"x": x, "n": np.array([n], np.int64)})["y"]
        np.testing.assert_allclose(got, conv_numpy(x[:, :, :n], w, pad=1), rtol=1e-4, atol=1e-5)


def test_a_replayed_run_whose_value_dependent_shapes_change_gets_fresh_buffers(tmp_path):
    """Range's length is the value of an input, not its shape: a replay where it differs from the recorded run
    cannot use the recorded buffers for it, and must not write into buffers still read."""
    nodes = [Node("range", "Range", ("zero", "n", "one"), ("r",)),
             Node("cast", "Cast", ("r",), ("rf",), {"to": 1}),
             Node("double", "Mul", ("rf", "two"), ("d",)),
             Node("shifted", "Add", ("d", "x0"), ("y",)),
             Node("scaled", "Mul", ("x", "two"), ("z",))]
    path = save(tmp_path, nodes, [("x", "float32", ["N"]), ("n", "int64", []), ("x0", "float32", [])],
                [("y", "float32", ["M"]), ("z", "float32", ["N"])],
                {"zero": np.array(0, np.int64), "one": np.array(1, np.int64), "two": np.array(2.0, np.float32)})
    model = load_model(path)
    x = f32(7)
    for n in (3, 3, 3, 5, 2, 3):
        got = model.run({"x": x, "n": np.array(n, np.int64), "x0": np.array(0.5, np.float32)})
        np.testing.assert_array_equal(got["y"], np.arange(n, dtype=np.float32) * 2 + 0.5)
        np.testing.assert_array_equal(got["z"], x * 2)


def test_outputs_are_fresh_arrays_the_caller_owns(tmp_path):
    weights = [f32(CHANNELS, CHANNELS, 3) for _ in range(2)]
    model = load_model(conv_chain(tmp_path, 2, weights))
    x = f32(1, CHANNELS, 12)
    first = model.run({"x": x})["c1"]
    kept = first.copy()
    second = model.run({"x": f32(1, CHANNELS, 12)})["c1"]
    assert not np.shares_memory(first, second)
    np.testing.assert_array_equal(first, kept)  # the second run did not write into the first run's result
    pool_buffers = [b for plans in [model._local.plans.values()] for p in plans for b in p.owned.values()]
    assert not any(np.shares_memory(second, b) for b in pool_buffers)
    assert first.flags.writeable and first.flags.c_contiguous


def test_a_view_keeps_its_buffer_alive(tmp_path):
    """c1 is read only through a Reshape view; conv c2 (same shape) must not reuse c1's buffer while the view lives."""
    w1, w2 = f32(CHANNELS, CHANNELS, 1), f32(CHANNELS, CHANNELS, 1)
    nodes = [Node("c1", "Conv", ("x", "w1"), ("c1",)),
             Node("view", "Reshape", ("c1", "same"), ("v1",)),
             Node("c2", "Conv", ("x", "w2"), ("c2",)),
             Node("diff", "Sub", ("v1", "c2"), ("y",))]
    path = save(tmp_path, nodes, [("x", "float32", [1, CHANNELS, "T"])], [("y", "float32", [1, CHANNELS, "T"])],
                {"w1": w1, "w2": w2, "same": np.array([0, 0, -1], np.int64)})
    x = f32(1, CHANNELS, 10)
    model = load_model(path)
    for _ in range(2):
        np.testing.assert_allclose(model.run({"x": x})["y"], conv_numpy(x, w1) - conv_numpy(x, w2), rtol=1e-4,
                                   atol=1e-5)


def test_elementwise_chain_reuses_dead_buffers_but_never_the_callers_input(tmp_path):
    nodes = [Node("relu", "Relu", ("x",), ("r",)),
             Node("sig", "Sigmoid", ("r",), ("s",)),
             Node("scale", "Mul", ("s", "two"), ("m",)),
             Node("shift", "Add", ("m", "x"), ("y",)),
             Node("drop", "Dropout", ("y",), ("z", "unused_mask"))]
    path = save(tmp_path, nodes, [("x", "float32", ["N", 4])], [("z", "float32", ["N", 4])],
                {"two": np.array(2.0, np.float32)})
    model = load_model(path)
    x = f32(6, 4)
    x_before = x.copy()
    out = model.run({"x": x})["z"]
    np.testing.assert_array_equal(x, x_before)
    np.testing.assert_allclose(out, 2 / (1 + np.exp(-np.maximum(x, 0))) + x, rtol=1e-6)
    assert model.plan_stats()["buffers"] == 1  # Relu's buffer carries Sigmoid, Mul and Add (x is the caller's)


def test_threads_sharing_a_model_get_the_same_results_as_alone(encoder_path):
    model = load_model(encoder_path)
    inputs = [f32(1, CHANNELS, 23), f32(2, CHANNELS, 57)]
    alone = [model.run({"features": x})["log_probs"] for x in inputs]
    failures = []

    def worker(x, expected):
        for _ in range(30):
            got = model.run({"features": x})["log_probs"]
            if not np.array_equal(got, expected):
                failures.append(x.shape)

    threads = [threading.Thread(target=worker, args=pair) for pair in zip(inputs, alone) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures


def test_output_of_the_wrong_kind_is_a_graph_error():
    graph = Graph([ValueInfo("x", "float32", ["N"])], [ValueInfo("y", "int64", ["N"])],
                  [Node("relu", "Relu", ("x",), ("y",))])
    with pytest.raises(GraphError, match="output 'y' is computed as float32 but declared int64"):
        Model(graph, {}).run({"x": f32(3)})


def test_model_from_graph_without_a_file_and_output_dtype():
    graph = Graph([ValueInfo("x", "float32", ["B", "T", 3])], [ValueInfo("best", "int64", ["B", "T"])],
                  [Node("argmax", "ArgMax", ("x",), ("best",), {"axis": -1, "keepdims": 0})])
    x = f32(2, 5, 3)
    out = Model(graph, {}).run({"x": x})["best"]
    assert out.dtype == np.int64
    np.testing.assert_array_equal(out, x.argmax(-1))


# ----------------------------------------------------------------------------- info

def test_summarize_counts_parameters_bytes_and_sparsity_per_layer(encoder_path, encoder_weights):
    from tinyasr.cli.info import format_summary, summarize

    w = encoder_weights
    summary = summarize(encoder_path)
    layers = {layer["name"]: layer for layer in summary["layers"]}
    assert [layer["op"] for layer in summary["layers"]] == ["Conv", "Conv", "Transpose", "MatMul", "LogSoftmax"]
    assert layers["pw"]["parameters"] == w["pw"].size + w["pw_b"].size
    assert layers["pw"]["bytes"] == 2 * w["pw"].size + 4 * w["pw_b"].size  # float16 weight, float32 bias
    assert layers["pw"]["encodings"] == ["dense/float16", "dense/float32"]
    assert layers["to_btc"]["parameters"] == 0 and layers["to_btc"]["sparsity"] is None
    assert summary["total"]["parameters"] == sum(a.size for a in w.values())
    assert summary["total"]["nodes"] == 5 and summary["ops"]["Conv"] == 2
    assert summary["decoder"]["vocabulary_size"] == 4 and summary["decoder"]["blank"] == VOCAB - 1
    assert summary["provenance"]["source"] == "test"
    text = format_summary(summary)
    assert "LogSoftmax" in text and f"{summary['total']['parameters']:,} parameters" in text


def test_summarize_sparsity(tmp_path):
    from tinyasr.cli.info import summarize

    weight = f32(6, 4, 1)
    weight[RNG.random(weight.shape) < 0.7] = 0
    path = save(tmp_path, [Node("pointwise", "Conv", ("x", "w"), ("y",))], [("x", "float32", [1, 4, "T"])],
                [("y", "float32", [1, 6, "T"])], {"w": weight})
    layer = summarize(path)["layers"][0]
    assert layer["sparsity"] == pytest.approx(np.mean(weight == 0))


def test_sparse_weights_stored_in_the_file_run_and_are_summarized(tmp_path):
    from tinyasr.format.container import EncodedTensor
    from tinyasr.cli.info import summarize
    from tinyasr.format.encodings.sparse import csr_arrays

    weight = f32(12, CHANNELS, 1)
    weight[RNG.random(weight.shape) < 0.8] = 0
    values, indices, indptr = csr_arrays(weight.reshape(12, CHANNELS))
    stored = EncodedTensor("csr", "float32", weight.shape, {"values": values, "indices": indices, "indptr": indptr})
    bias = f32(12)
    path = save(tmp_path, [Node("pointwise", "Conv", ("x", "w", "b"), ("y",), {"activation": "Relu"})],
                [("x", "float32", [1, CHANNELS, "T"])], [("y", "float32", [1, 12, "T"])], {"w": stored, "b": bias})
    x = f32(1, CHANNELS, 40)
    model = load_model(path)
    np.testing.assert_allclose(model.run({"x": x})["y"], np.maximum(conv_numpy(x, weight, bias), 0), rtol=1e-5,
                               atol=1e-5)
    layer = summarize(path)["layers"][0]
    assert layer["encodings"] == ["csr/float32", "dense/float32"]
    assert layer["sparsity"] == pytest.approx(np.mean(weight == 0) * weight.size / (weight.size + 12))


# ----------------------------------------------------------------------------- hostile graphs (a model file is untrusted)


def _csr_weight(rows=4, columns=CHANNELS):
    from tinyasr.format.container import EncodedTensor
    from tinyasr.format.encodings.sparse import csr_arrays

    values, indices, indptr = csr_arrays(np.eye(rows, columns, dtype=np.float32))
    return EncodedTensor("csr", "float32", (rows, columns, 1), {"values": values, "indices": indices, "indptr": indptr})


@pytest.mark.parametrize("nodes, tensors, message", [
    ([Node("r", "Reshape", ("w", "s"), ("y",))], {"w": "csr", "s": np.array([-1], np.int64)},
     r"node 'r' \(Reshape\) reads the CSRMatrix tensor 'w' as input 0; encoded weights can only feed Conv input\(s\) "
     r"\[1\], MatMul"),
    ([Node("add", "Add", ("x", "w"), ("y",))], {"w": "csr"}, r"node 'add' \(Add\) reads the CSRMatrix tensor 'w'"),
    ([Node("c", "Conv", ("x", "w"), ("y",))], {"w": f32(4, CHANNELS, 1)}, r"graph input 'x' declares dtype 'evil'"),
])
def test_graphs_an_op_could_not_handle_are_refused_at_load(tmp_path, nodes, tensors, message):
    tensors = {k: _csr_weight() if isinstance(v, str) else v for k, v in tensors.items()}
    dtype = "evil" if "evil" in message else "float32"
    path = save(tmp_path, nodes, [("x", dtype, [1, CHANNELS, "T"])], [("y", "float32", [1, 4, "T"])], tensors)
    with pytest.raises(GraphError, match=f"m.tasr: {message}"):
        load_model(path)


def test_an_encoded_tensor_cannot_be_a_graph_output(tmp_path):
    path = save(tmp_path, [], [("x", "float32", [1])], [("w", "float32", [4, CHANNELS, 1])], {"w": _csr_weight()})
    with pytest.raises(GraphError, match="m.tasr: graph output 'w' is the encoded tensor 'w'"):
        load_model(path)


@pytest.mark.parametrize("node, tensors", [
    (Node("tile", "Tile", ("x", "reps"), ("y",)), {"reps": np.array([1, 1, 2**45], np.int64)}),
    (Node("fill", "ConstantOfShape", ("shape",), ("y",)), {"shape": np.array([2**20, 2**20, 2**10], np.int64)}),
    (Node("range", "Range", ("start", "limit", "delta"), ("y",)),
     {"start": np.array(0, np.int64), "limit": np.array(2**50, np.int64), "delta": np.array(1, np.int64)}),
])
def test_absurd_sizes_are_a_graph_error_not_a_memory_error(tmp_path, node, tensors):
    """Every size is beyond a 64-bit process's address space, so allocation fails even with overcommit."""
    path = save(tmp_path, [node], [("x", "float32", [1, CHANNELS, "T"])], [("y", "float32", [1, 4, "T"])], tensors)
    with pytest.raises(GraphError, match=f"m.tasr: node '{node.name}' \\({node.op}\\) needs more memory than is "
                                         "available: Unable to allocate"):
        load_model(path).run({"x": f32(1, CHANNELS, 10)})


@pytest.mark.parametrize("vocabulary", [5, {"a": 1}, None])
def test_info_describes_a_malformed_decoder_entry_as_stored(tmp_path, vocabulary):
    from tinyasr.cli.info import format_summary, summarize

    decoder = {"type": "ctc", "output": "y", "blank": 0, "vocabulary": vocabulary}
    path = save(tmp_path, [Node("relu", "Relu", ("x",), ("y",))], [("x", "float32", [2])], [("y", "float32", [2])],
                {}, decoder=decoder)
    summary = summarize(path)
    assert summary["decoder"]["vocabulary"] == vocabulary and "vocabulary_size" not in summary["decoder"]
    assert f"vocabulary={vocabulary}" in format_summary(summary)


@pytest.mark.parametrize("weight_shape, attrs, message", [
    ((4, CHANNELS), {}, "only 1-D convolution .* and 2-D convolution .* are supported"),
    ((4, CHANNELS, 1, 1), {}, r"a 2-D convolution needs input \[N, C, H, W\], got shape \(1, 8, 10\)"),
    ((4, CHANNELS + 1, 1), {}, r"weight W of shape \(4, 9, 1\) does not fit input X with 8 channels"),
    ((4, CHANNELS, 1), {"group": "x"}, r"attribute 'group' must be an integer in \[1, 65536\], got x"),
    ((4, CHANNELS, 1), {"group": [1]}, r"attribute 'group' must be an integer in \[1, 65536\], got \[1\]"),
    ((4, CHANNELS, 1), {"pads": [2**47, 0]}, r"attribute 'pads' must be a list of 2 or 4 integers in \[0, 65536\]"),
    ((4, CHANNELS, 1), {"strides": [2**31]}, r"attribute 'strides' must be a list of 1 or 2 integers"),
    ((4, CHANNELS, 1), {"dilations": {"a": 1}}, r"attribute 'dilations' must be a list"),
    ((4, CHANNELS, 1), {"pads": [1e30, 0]}, ""),
    ((4, CHANNELS, 1), {"pads": "ab"}, ""),
    ((4, CHANNELS, 1), {"strides": [0]}, ""),
    ((4, CHANNELS, 1), {"activation": 5}, "attribute 'activation' must be one of '', 'Relu'"),
])
def test_conv_with_a_bad_weight_or_attribute_is_a_graph_error_naming_the_node(tmp_path, weight_shape, attrs, message):
    path = save(tmp_path, [Node("conv_7", "Conv", ("x", "w"), ("y",), attrs)], [("x", "float32", [1, CHANNELS, "T"])],
                [("y", "float32", [1, 4, "T"])], {"w": f32(*weight_shape)})
    with pytest.raises(GraphError, match=f"m.tasr: node 'conv_7' \\(Conv\\).*{message}"):
        load_model(path).run({"x": f32(1, CHANNELS, 10)})


@pytest.mark.parametrize("attrs, message", [
    ({"strides": [2**31]}, r"attribute 'strides' must be a list of 1 or 2 integers in \[1, 65536\]"),  # hung
    ({"pads": [2_000_000, 0]}, r"attribute 'pads' must be a list of 2 or 4 integers in \[0, 65536\]"),
    ({"dilations": {"a": 1}}, r"attribute 'dilations' must be a list"),  # was a KeyError at run
    ({"group": 0}, r"attribute 'group' must be an integer in \[1, 65536\], got 0"),
    ({"alpha": 1e39}, r"attribute 'alpha' is a number that is not finite as float32"),  # no rule: plain JSON
    ({"extra": {"a": 1}}, r"attribute 'extra' is a dict, not a number, string or flat list"),
])
def test_node_attributes_are_refused_at_load_before_any_run(tmp_path, attrs, message):
    path = save(tmp_path, [Node("conv_7", "Conv", ("x", "w"), ("y",), attrs)], [("x", "float32", [1, CHANNELS, "T"])],
                [("y", "float32", [1, 4, "T"])], {"w": f32(4, CHANNELS, 1)})
    with pytest.raises(GraphError, match=f"^m.tasr: node 'conv_7' \\(Conv\\) {message}"):
        load_model(path)


@pytest.mark.parametrize("shape, dtype", [((3, 5, 7), np.float32), ((1, 4), np.float32), ((9,), np.int64),
                                          ((2, 3), np.float16)])
def test_pool_buffers_start_on_a_cache_line(shape, dtype):
    for _ in range(8):  # numpy alone would give 16-byte alignment: some of these would miss 64
        buffer = aligned_empty(shape, dtype)
        assert buffer.ctypes.data % 64 == 0 and buffer.shape == shape and buffer.dtype == dtype
        assert buffer.flags.c_contiguous and buffer.flags.writeable
        buffer[...] = 1
        assert (buffer == 1).all()


def test_intermediate_values_of_a_run_are_aligned(encoder_path):
    model = load_model(encoder_path)
    model.run({"features": np.zeros((1, CHANNELS, 50), np.float32)})
    buffers = [b for pool in model._local.plans.values() for b in pool.owned.values()]
    assert buffers and all(b.ctypes.data % 64 == 0 for b in buffers)


@pytest.mark.parametrize("rows, width", [(1, 16), (256, 64), (512, 64), (3, 5), (0, 16)])
def test_kernel_scratch_starts_on_a_cache_line(rows, width):
    from tinyasr.kernels._compile import aligned_rows

    for _ in range(8):  # Numba's np.empty gives 32-byte alignment: half of these would miss 64
        scratch = aligned_rows(rows, width)
        assert scratch.ctypes.data % 64 == 0 and scratch.shape == (rows, width) and scratch.dtype == np.float32
        assert scratch.flags.c_contiguous


def test_replayed_squeeze_excite_takes_each_run_s_input_and_mask(tmp_path):
    """A SqueezeExcite node replays the call bound on the recorded run (its checks and weights) with each run's
    X and padding mask: new values every run against numpy (masked mean over the valid frames, Relu, sigmoid
    gate, Relu after the scale), the padding moving from run to run, one mask for both utterances or one each."""
    channels, frames, hidden = 12, 40, 3
    w1, w2 = f32(channels, hidden), f32(hidden, channels)
    for mask_batch in (1, 2):
        nodes = [Node("se", "SqueezeExcite", ("x", "pad", "w1", "w2"), ("y",),
                      {"mask": "padded", "hidden_activation": "Relu", "activation": "Relu"})]
        inputs = [("x", "float32", [2, channels, frames]), ("pad", "bool", [mask_batch, 1, frames])]
        path = save(tmp_path, nodes, inputs, [("y", "float32", [2, channels, frames])], {"w1": w1, "w2": w2},
                    name=f"se{mask_batch}.tasr")
        model = load_model(path)
        for run, valid in enumerate((40, 40, 33, 21, 40, 7)):
            x = f32(2, channels, frames)
            pad = np.zeros((mask_batch, 1, frames), bool)
            pad[-1, :, valid:] = True
            kept = np.where(pad, 0.0, x.astype(np.float64))
            mean = kept.sum(axis=2) / (~pad).sum(axis=2)
            gate = 1.0 / (1.0 + np.exp(-(np.maximum(mean @ w1, 0.0) @ w2)))
            expected = np.maximum(kept * gate[:, :, None], 0.0)
            np.testing.assert_allclose(model.run({"x": x, "pad": pad})["y"], expected, rtol=1e-5, atol=1e-6,
                                       err_msg=f"run {run}")
        assert all(replay is not None for pool in model._local.plans.values() for *_, replay in pool.tape)
