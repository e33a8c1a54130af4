"""Structured compaction (converters/compaction.py): fewer channels, the same outputs.

The reference is the uncompacted model run by onnxruntime on the exported ONNX and by tinyasr; channels are
zeroed in torch so the expected removals follow from the model, not from the code under test.
"""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")

import tinyasr_convert  # noqa: E402
from tinyasr_convert.compaction import compact  # noqa: E402
from tinyasr.format.container import read_model, write_model  # noqa: E402
from tinyasr.format.graph import Graph, Node, ValueInfo  # noqa: E402
from tinyasr.engine.offline import Model, load_model  # noqa: E402

from torch_models import QuartzNetLike, build  # noqa: E402

FEATURES, CHANNELS = 16, 24


def zero_channels(separable, channels, bn_shift):
    """Zero output rows of a SeparableConv's pointwise conv and set its BatchNorm shift for them."""
    with torch.no_grad():
        separable.pointwise.weight[channels] = 0.0
        separable.bn.bias[channels] = torch.tensor(bn_shift, dtype=torch.float32)
        separable.bn.running_mean[channels] = 0.0


def convert(model, tmp_path, x):
    """Convert without the converter's own compaction and sparse encoding, so the tests can apply compact() alone."""
    onnx_path, tasr_path = tmp_path / "m.onnx", tmp_path / "m.tasr"
    tinyasr_convert.from_torch(model, torch.from_numpy(x), tasr_path, input_names=["x"], output_names=["y"],
                          onnx_path=onnx_path, compact=False, sparse="dense")
    return onnx_path, tasr_path


def compacted_copy(tasr_path, out_path):
    with read_model(tasr_path) as model_file:
        tensors = {name: np.array(model_file.tensor(name)) for name in model_file.tensor_names()}
        manifest = {k: model_file.manifest[k] for k in ("graph", "frontend", "decoder", "provenance")}
        graph, tensors, removed = compact(model_file.graph, tensors)
    write_model(out_path, {**manifest, "graph": graph.to_dict()}, tensors)
    return removed, tensors


def run_all(onnx_path, tasr_path, compact_path, x):
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    reference = session.run(None, {"x": x})[0]
    before = load_model(tasr_path).run({"x": x})["y"]
    after = load_model(compact_path).run({"x": x})["y"]
    return reference, before, after


def test_zero_channels_are_removed_and_outputs_stay_the_same(tmp_path):
    model = build(QuartzNetLike, features=FEATURES, channels=CHANNELS, blocks=2, repeat=2, vocab=10)
    blocks = model.encoder
    # block 1, first sub-block: ReLU(negative shift) = 0 -> through the padded depthwise to the next pointwise
    zero_channels(blocks[2].main[0], [1, 5, 7], -1.0)
    # block 2: the last sub-block and the residual branch agree on channels 3, 4 with a negative sum
    zero_channels(blocks[3].main[3], [3, 4], -0.5)
    with torch.no_grad():
        blocks[3].residual[0].weight[[3, 4]] = 0.0
        blocks[3].residual[1].bias[[3, 4]] = -0.25
        blocks[3].residual[1].running_mean[[3, 4]] = 0.0
    # the 1x1 epilogue conv: channel 0 gives ReLU(+0.75) > 0, a constant folded into the decoder's bias
    epilogue = blocks[-2]
    with torch.no_grad():
        epilogue.weight[[0, 9]] = 0.0
        epilogue.bias[0], epilogue.bias[9] = 0.75, -3.0
    x = np.random.default_rng(0).standard_normal((1, FEATURES, 57)).astype(np.float32)
    onnx_path, tasr_path = convert(model, tmp_path, x)
    removed, tensors = compacted_copy(tasr_path, tmp_path / "c.tasr")
    reference, before, after = run_all(onnx_path, tasr_path, tmp_path / "c.tasr", x)
    np.testing.assert_allclose(before, reference, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(after, before, rtol=1e-5, atol=1e-5)
    # block 1: pointwise 3 + the next depthwise 3; block 2: pointwise 2 + residual 2 + the epilogue's
    # (dilated, padded) depthwise 2, fed zeros; the 1x1 epilogue conv 2
    assert sorted(removed.values()) == [2, 2, 2, 2, 3, 3]
    assert (tmp_path / "c.tasr").stat().st_size < tasr_path.stat().st_size


def test_channels_whose_constant_cannot_be_absorbed_stay(tmp_path):
    """ReLU(positive shift) feeding a padded depthwise conv is not a constant at the padded edges: kept."""
    model = build(QuartzNetLike, features=FEATURES, channels=CHANNELS, blocks=1, repeat=2, vocab=10)
    zero_channels(model.encoder[2].main[0], [2, 6], 0.5)
    with torch.no_grad():  # residual branch rows not zero: the two branches disagree, so nothing goes there
        zero_channels(model.encoder[2].main[3], [1], -1.0)
    x = np.random.default_rng(1).standard_normal((1, FEATURES, 40)).astype(np.float32)
    onnx_path, tasr_path = convert(model, tmp_path, x)
    removed, _ = compacted_copy(tasr_path, tmp_path / "c.tasr")
    assert removed == {}
    _, before, after = run_all(onnx_path, tasr_path, tmp_path / "c.tasr", x)
    np.testing.assert_array_equal(after, before)


def _pointwise_graph(output_of_first=False):
    """x -> Conv a (2->4, Relu) -> Conv b (4->3): b reads a; optionally a's output is also a graph output."""
    outputs = [ValueInfo("y", "float32", (1, 3, "T"))] + ([ValueInfo("h", "float32", (1, 4, "T"))] if output_of_first else [])
    nodes = [Node("a", "Conv", ("x", "wa", "ba"), ("h",), {"activation": "Relu"}),
             Node("b", "Conv", ("h", "wb", "bb"), ("y",))]
    tensors = {"wa": np.array([[[1.0], [2.0]], [[0.0], [0.0]], [[3.0], [-1.0]], [[0.0], [0.0]]], np.float32),
               "ba": np.array([0.1, 2.0, -0.3, -1.0], np.float32),
               "wb": np.arange(12, dtype=np.float32).reshape(3, 4, 1) - 5, "bb": np.array([1.0, 0.0, -1.0], np.float32)}
    return Graph([ValueInfo("x", "float32", (1, 2, "T"))], outputs, nodes), tensors


def test_constants_fold_into_the_next_bias_exactly():
    graph, tensors = _pointwise_graph()
    new_graph, new_tensors, removed = compact(graph, tensors)
    assert removed == {"a": 2}
    a, b = new_graph.nodes
    np.testing.assert_array_equal(new_tensors[a.inputs[1]], tensors["wa"][[0, 2]])
    # channel 1 was Relu(2.0) = 2 everywhere, channel 3 Relu(-1) = 0: b's bias gains 2 * wb[:, 1]
    np.testing.assert_allclose(new_tensors[b.inputs[2]], tensors["bb"] + 2.0 * tensors["wb"][:, 1, 0])
    np.testing.assert_array_equal(new_tensors[b.inputs[1]], tensors["wb"][:, [0, 2]])
    assert set(new_tensors) == {a.inputs[1], a.inputs[2], b.inputs[1], b.inputs[2]}


def test_a_graph_output_keeps_its_channels():
    graph, tensors = _pointwise_graph(output_of_first=True)
    assert compact(graph, tensors)[2] == {}


def test_convert_compacts_by_default_and_keeps_outputs(tmp_path):
    """`convert` runs compaction itself: the file shrinks and onnxruntime's outputs are still matched."""
    import onnxruntime as ort

    from tinyasr.engine.offline import load_model

    model = build(QuartzNetLike, features=FEATURES, channels=CHANNELS, blocks=2, repeat=2, vocab=10)
    zero_channels(model.encoder[2].main[0], [1, 5, 7], -1.0)
    x = np.random.default_rng(1).standard_normal((1, FEATURES, 57)).astype(np.float32)
    onnx_path, kept_path = convert(model, tmp_path, x)
    compacted = tinyasr_convert.convert_model(onnx_path, tmp_path / "auto.tasr")
    assert sum(compacted.removed_channels.values()) >= 3
    assert compacted.path.stat().st_size < kept_path.stat().st_size
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    (reference,) = session.run(None, {"x": x})
    np.testing.assert_allclose(load_model(compacted.path).run({"x": x})["y"], reference, rtol=1e-4, atol=1e-4)


def _feed_forward_graph(output_bias: bool):
    """x [1, T, 2] @ W1 [2, 4] + b1 -> Relu -> @ W2 [4, 3] (+ b2): unit 0 silent (W2 row 0 zero), unit 1 the
    constant Relu(2) = 2, unit 3 the constant Relu(-1) = 0 (their W1 columns zero); unit 2 varies."""
    tensors = {"w1": np.array([[1.0, 0.0, 3.0, 0.0], [2.0, 0.0, -1.0, 0.0]], np.float32),
               "b1": np.array([0.1, 2.0, -0.3, -1.0], np.float32),
               "w2": np.array([[0, 0, 0], [1, 2, 3], [4, 5, 6], [7, 8, 9]], np.float32),
               "b2": np.array([1.0, 0.0, -1.0], np.float32)}
    nodes = [Node("first", "MatMul", ("x", "w1"), ("h",)), Node("bias", "Add", ("b1", "h"), ("hb",)),
             Node("act", "Relu", ("hb",), ("a",)),
             Node("second", "MatMul", ("a", "w2"), ("z" if output_bias else "y",))]
    if output_bias:
        nodes.append(Node("out_bias", "Add", ("z", "b2"), ("y",)))
    else:
        del tensors["b2"]
    return Graph([ValueInfo("x", "float32", (1, "T", 2))], [ValueInfo("y", "float32", (1, "T", 3))], nodes), tensors


@pytest.mark.parametrize("output_bias", [True, False])
def test_feed_forward_hidden_units_go_and_their_constants_fold(output_bias):
    """Units 0 and 3 always go; unit 1's constant 2 needs an output bias to fold into (b2 + 2 * W2[1])."""
    graph, tensors = _feed_forward_graph(output_bias)
    new_graph, new_tensors, removed = compact(graph, tensors)
    kept = [2] if output_bias else [1, 2]
    assert removed == {"first": 4 - len(kept)}
    nodes = {node.name: node for node in new_graph.nodes}
    np.testing.assert_array_equal(new_tensors[nodes["first"].inputs[1]], tensors["w1"][:, kept])
    np.testing.assert_array_equal(new_tensors[nodes["bias"].inputs[0]], tensors["b1"][kept])
    np.testing.assert_array_equal(new_tensors[nodes["second"].inputs[1]], tensors["w2"][kept])
    if output_bias:
        np.testing.assert_allclose(new_tensors[nodes["out_bias"].inputs[1]], tensors["b2"] + 2.0 * tensors["w2"][1])
    x = np.random.default_rng(2).standard_normal((1, 5, 2)).astype(np.float32)
    expected = np.maximum(x @ tensors["w1"] + tensors["b1"], 0) @ tensors["w2"] + tensors.get("b2", 0)
    got = Model(new_graph, new_tensors).run({"x": x})["y"]
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)
