"""Converter fusions for transformer / Conformer blocks (converters/passes.py): a Pad folded into the Conv that
reads it, Sigmoid -> Mul(x, .) as one Swish node, a ReLU moved ahead of a 0 / 1 length mask into its Conv, a linear
layer's MatMul, bias Add and activation as one Linear, Split -> Sigmoid -> Mul as one Glu.  Each fused graph is
compared with onnxruntime on the unfused ONNX model, and the patterns that must not fuse are shown to stay as they
are."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import onnx
from onnx import TensorProto, helper, numpy_helper

from _paths import SHARED_DIR
from tinyasr.engine.offline import load_model
from tinyasr_convert import convert

RNG = np.random.default_rng(14)
CHANNELS, FRAMES, TAPS = 6, 23, 5


def _conv_module(tmp_path, pads, pad_value=0.0, sigmoid_also_read=False):
    """x [1, C, T] -> Pad(pads) -> depthwise Conv -> Sigmoid / Mul (Swish) -> out: NeMo's conv module tail."""
    weight = RNG.standard_normal((CHANNELS, 1, TAPS)).astype(np.float32)
    bias = RNG.standard_normal(CHANNELS).astype(np.float32)
    nodes = [
        helper.make_node("Pad", ["x", "pads", "value"], ["padded"], mode="constant"),
        helper.make_node("Conv", ["padded", "w", "b"], ["y"], group=CHANNELS, kernel_shape=[TAPS], pads=[1, 0]),
        helper.make_node("Sigmoid", ["y"], ["gate"]),
        helper.make_node("Mul", ["gate", "y"], ["out"]),
    ]
    outputs = [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)]
    if sigmoid_also_read:
        outputs.append(helper.make_tensor_value_info("gate", TensorProto.FLOAT, None))
    return _saved(tmp_path, "conv_module", nodes,
                  [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, CHANNELS, "T"])], outputs,
                  [numpy_helper.from_array(np.array(pads, np.int64), "pads"),
                   numpy_helper.from_array(np.float32(pad_value), "value"),
                   numpy_helper.from_array(weight, "w"), numpy_helper.from_array(bias, "b")])


def _saved(tmp_path, name, nodes, inputs, outputs, tensors):
    """An opset-17 ONNX model of these nodes written to tmp_path / name.onnx; its path."""
    model = helper.make_model(helper.make_graph(nodes, name, inputs, outputs, tensors),
                              opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path / f"{name}.onnx"
    path.write_bytes(model.SerializeToString())
    return path


def _converted_and_checked(tmp_path, onnx_path):
    """The converted model's op list, after checking every output against onnxruntime."""
    tasr = convert(onnx_path, tmp_path / (onnx_path.stem + ".tasr"))
    model = load_model(tasr)
    x = RNG.standard_normal((1, CHANNELS, FRAMES)).astype(np.float32) * 4
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    expected = dict(zip([o.name for o in session.get_outputs()], session.run(None, {"x": x})))
    got = model.run({"x": x})
    for name, value in expected.items():
        np.testing.assert_allclose(got[name], value, rtol=1e-5, atol=1e-5)
    return [node.op for node in model.graph.nodes]


@pytest.mark.parametrize("pads", [[0, 0, 3, 0, 0, 1], [0, 0, 0, 0, 0, 4], [0, 0, 2, 0, 0, 2]], ids=str)
def test_time_padding_folds_into_the_conv_and_swish_fuses(tmp_path, pads):
    ops = _converted_and_checked(tmp_path, _conv_module(tmp_path, pads))
    assert ops == ["Conv", "Swish"]


def test_a_non_zero_pad_value_stays_a_pad(tmp_path):
    ops = _converted_and_checked(tmp_path, _conv_module(tmp_path, [0, 0, 2, 0, 0, 2], pad_value=0.5))
    assert ops == ["Pad", "Conv", "Swish"]


def test_channel_padding_is_not_folded():
    """A Pad touching batch or channel axes is no Conv padding (checked on the pass's own reader)."""
    from tinyasr_convert.passes import _spatial_zero_pads
    from tinyasr.format.graph import Node

    pad = Node("p", "Pad", ("x", "pads"), ("y",), {"mode": "constant"})
    assert _spatial_zero_pads(pad, {"pads": np.array([0, 0, 2, 0, 0, 1])}) == [2, 1]
    assert _spatial_zero_pads(pad, {"pads": np.array([0, 1, 2, 0, 0, 1])}) is None
    assert _spatial_zero_pads(pad, {"pads": np.array([0, 0, -1, 0, 0, 1])}) is None
    assert _spatial_zero_pads(pad, {"pads": np.array([0, 3])}) is None  # rank 1: no spatial axis
    assert _spatial_zero_pads(pad, {}) is None  # pads computed at run time
    reflect = Node("p", "Pad", ("x", "pads"), ("y",), {"mode": "reflect"})
    assert _spatial_zero_pads(reflect, {"pads": np.array([0, 0, 2, 0, 0, 1])}) is None


def test_a_sigmoid_read_elsewhere_is_not_fused(tmp_path):
    ops = _converted_and_checked(tmp_path, _conv_module(tmp_path, [0, 0, 2, 0, 0, 2], sigmoid_also_read=True))
    assert "Swish" not in ops and ops.count("Sigmoid") == 1 and "Pad" not in ops


def _masked_conv(tmp_path, mask_kind):
    """x [1, C, T] -> Conv -> Mul(mask) -> Relu, the mask [1, 1, T] read by a Shape as well (NeMo's masked
    subsampling): ``bool`` a cast of (frame index < 17), ``stored`` a stored non-negative mask, ``signed`` a
    stored mask with a negative entry, ``input`` a graph input (unknown sign)."""
    weight = RNG.standard_normal((CHANNELS, CHANNELS, 3)).astype(np.float32)
    tensors = [numpy_helper.from_array(weight, "w")]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, CHANNELS, FRAMES])]
    nodes = [helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1]),
             helper.make_node("Shape", ["y"], ["y_shape"]),
             helper.make_node("Mul", ["y", "mask"], ["masked"]),
             helper.make_node("Relu", ["masked"], ["out"])]
    if mask_kind == "bool":
        tensors += [numpy_helper.from_array(np.arange(FRAMES, dtype=np.int64).reshape(1, 1, FRAMES), "frames"),
                    numpy_helper.from_array(np.int64(17), "length")]
        inputs.append(helper.make_tensor_value_info("frame_count", TensorProto.INT64, []))
        nodes[:0] = [helper.make_node("Less", ["frames", "frame_count"], ["keep"]),
                     helper.make_node("Cast", ["keep"], ["mask"], to=TensorProto.FLOAT)]
    elif mask_kind == "input":
        inputs.append(helper.make_tensor_value_info("mask", TensorProto.FLOAT, [1, 1, FRAMES]))
    else:
        mask = RNG.uniform(0.0, 1.0, (1, 1, FRAMES)).astype(np.float32)
        mask[0, 0, 3] = -0.5 if mask_kind == "signed" else 0.0
        tensors.append(numpy_helper.from_array(mask, "mask"))
    return _saved(tmp_path, f"masked_{mask_kind}", nodes, inputs,
                  [helper.make_tensor_value_info(n, TensorProto.FLOAT if n == "out" else TensorProto.INT64, None)
                   for n in ("out", "y_shape")], tensors)


@pytest.mark.parametrize("mask_kind, fused", [("bool", True), ("stored", True), ("signed", False), ("input", False)])
def test_relu_moves_ahead_of_a_non_negative_mask_into_the_conv(tmp_path, mask_kind, fused):
    """relu(conv * mask) == relu(conv) * mask for a mask >= 0, so the ReLU fuses into the Conv; a mask that may
    be negative keeps the order.  Outputs (and the Shape read of the Conv's output) equal onnxruntime's."""
    path = _masked_conv(tmp_path, mask_kind)
    model = load_model(convert(path, tmp_path / "m.tasr"))
    feeds = {"x": RNG.standard_normal((1, CHANNELS, FRAMES)).astype(np.float32)}
    if mask_kind == "bool":
        feeds["frame_count"] = np.array(17, np.int64)
    elif mask_kind == "input":
        feeds["mask"] = RNG.uniform(-1.0, 1.0, (1, 1, FRAMES)).astype(np.float32)
    expected = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feeds)
    got = model.run(feeds)
    np.testing.assert_allclose(got["out"], expected[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(got["y_shape"], expected[1])
    ops = [node.op for node in model.graph.nodes]
    convs = [node for node in model.graph.nodes if node.op == "Conv"]
    assert ("Relu" not in ops and convs[0].attrs.get("activation") == "Relu") == fused, ops


def _linear(tmp_path, activation, bias_shape=(8,), product_read_twice=False):
    """x [T, C] -> MatMul(W [C, 8]) -> Add(bias) -> activation ("Swish": Sigmoid and Mul, "Relu", "" none)."""
    tensors = [numpy_helper.from_array(RNG.standard_normal((CHANNELS, 8)).astype(np.float32), "w"),
               numpy_helper.from_array(RNG.standard_normal(bias_shape).astype(np.float32), "bias")]
    nodes = [helper.make_node("MatMul", ["x", "w"], ["product"]),
             helper.make_node("Add", ["product", "bias"], ["linear"])]
    if activation == "Swish":
        nodes += [helper.make_node("Sigmoid", ["linear"], ["gate"]),
                  helper.make_node("Mul", ["linear", "gate"], ["out"])]
    elif activation == "Relu":
        nodes.append(helper.make_node("Relu", ["linear"], ["out"]))
    else:
        nodes.append(helper.make_node("Identity", ["linear"], ["out"]))
    outputs = ["out"] + (["product"] if product_read_twice else [])
    return _saved(tmp_path, "linear", nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["T", CHANNELS])],
                  [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in outputs], tensors)


@pytest.mark.parametrize("activation", ["Swish", "Relu", ""])
@pytest.mark.parametrize("bias_shape", [(8,), (1, 8)], ids=str)
def test_bias_and_activation_fold_into_the_matmul(tmp_path, activation, bias_shape):
    path = _linear(tmp_path, activation, bias_shape)
    model = load_model(convert(path, tmp_path / "m.tasr"))
    x = RNG.standard_normal((FRAMES, CHANNELS)).astype(np.float32) * 3
    expected = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(model.run({"x": x})["out"], expected, rtol=1e-5, atol=1e-6)
    (node,) = model.graph.nodes
    assert node.op == "Linear" and len(node.inputs) == 3 and node.attrs.get("activation", "") == activation


def test_a_product_read_elsewhere_keeps_its_add(tmp_path):
    path = _linear(tmp_path, "Relu", product_read_twice=True)
    model = load_model(convert(path, tmp_path / "m.tasr"))
    x = RNG.standard_normal((FRAMES, CHANNELS)).astype(np.float32)
    expected = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    got = model.run({"x": x})
    np.testing.assert_allclose(got["out"], expected[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got["product"], expected[1], rtol=1e-5, atol=1e-6)
    assert [node.op for node in model.graph.nodes] == ["MatMul", "Add", "Relu"]


def _half_step_block(tmp_path, scale, product_read_twice=False):
    """x [T, C] -> MatMul(W [C, C]) -> Add(bias) -> Mul(scale) -> Add(x): a Conformer's half-step feed-forward
    residual (NeMo's fc_factor 0.5)."""
    tensors = [numpy_helper.from_array(RNG.standard_normal((CHANNELS, CHANNELS)).astype(np.float32), "w"),
               numpy_helper.from_array(RNG.standard_normal(CHANNELS).astype(np.float32), "bias"),
               numpy_helper.from_array(np.float32(scale), "scale")]
    nodes = [helper.make_node("MatMul", ["x", "w"], ["product"]),
             helper.make_node("Add", ["product", "bias"], ["linear"]),
             helper.make_node("Mul", ["linear", "scale"], ["scaled"]),
             helper.make_node("Add", ["x", "scaled"], ["out"])]
    outputs = ["out"] + (["linear"] if product_read_twice else [])
    return _saved(tmp_path, "half_step", nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                               ["T", CHANNELS])],
                  [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in outputs], tensors)


@pytest.mark.parametrize("scale, product_read_twice, ops", [
    (0.5, False, ["Linear"]), (0.25, False, ["Linear"]), (0.3, False, ["Linear", "Mul", "Add"]),
    (0.5, True, ["Linear", "Mul", "Add"])], ids=str)
def test_a_power_of_two_scale_and_the_residual_fold_into_the_linear(tmp_path, scale, product_read_twice, ops):
    """A power-of-two scale folds into the stored weight and bias exactly (bit-identical to the unfused nodes),
    then the residual Add becomes the Linear's Z; another scale, or a product read elsewhere, stays."""
    path = _half_step_block(tmp_path, scale, product_read_twice)
    model = load_model(convert(path, tmp_path / "m.tasr"))
    x = RNG.standard_normal((FRAMES, CHANNELS)).astype(np.float32) * 3
    expected = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    got = model.run({"x": x})
    np.testing.assert_allclose(got["out"], expected[0], rtol=1e-5, atol=1e-5)
    assert [node.op for node in model.graph.nodes] == ops
    if ops == ["Linear"]:
        assert len(model.graph.nodes[0].inputs) == 4
        w, bias = (numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer[:2])
        unfused = ((x @ w + bias) * np.float32(scale) + x).astype(np.float32)  # numpy's BLAS for both products
        np.testing.assert_array_equal(got["out"], (x @ (w * np.float32(scale)) + bias * np.float32(scale) + x))
        np.testing.assert_allclose(got["out"], unfused, rtol=1e-6, atol=1e-6)


def _gated(tmp_path, sizes=None, gate_read_twice=False, gate_first=False):
    """x [1, 2C, T] -> Split on channels -> Sigmoid(second half) -> Mul(first half, .): a conv module's GLU
    (``gate_first``: the sigmoid of the first half times the second, which is not a GLU)."""
    inputs = ["x"] + (["sizes"] if sizes is not None else [])
    tensors = [numpy_helper.from_array(np.array(sizes, np.int64), "sizes")] if sizes is not None else []
    halves = ["gate", "value"] if gate_first else ["value", "gate"]
    nodes = [helper.make_node("Split", inputs, halves, axis=1),
             helper.make_node("Sigmoid", ["gate"], ["sigmoid"]), helper.make_node("Mul", ["value", "sigmoid"], ["out"])]
    outputs = ["out"] + (["sigmoid"] if gate_read_twice else [])
    return _saved(tmp_path, "glu", nodes,
                  [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2 * CHANNELS, "T"])],
                  [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in outputs], tensors)


@pytest.mark.parametrize("sizes, gate_read_twice, gate_first, fused", [
    (None, False, False, True), ([CHANNELS, CHANNELS], False, False, True), (None, True, False, False),
    (None, False, True, False)], ids=str)
def test_split_sigmoid_mul_becomes_one_glu(tmp_path, sizes, gate_read_twice, gate_first, fused):
    """Halves whose gate (the second) only the Mul reads fuse; a sigmoid read elsewhere or the first half as the
    gate do not.  Outputs equal onnxruntime's either way."""
    path = _gated(tmp_path, sizes, gate_read_twice, gate_first)
    model = load_model(convert(path, tmp_path / "m.tasr"))
    x = RNG.standard_normal((1, 2 * CHANNELS, FRAMES)).astype(np.float32) * 3
    expected = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    got = model.run({"x": x})
    for name, value in zip(["out", "sigmoid"], expected):
        np.testing.assert_allclose(got[name], value, rtol=1e-5, atol=1e-6)
    ops = [node.op for node in model.graph.nodes]
    assert (ops == ["Glu"]) == fused, ops


@pytest.mark.skipif(not (SHARED_DIR / "models" / "nemo-random").exists(),
                    reason=f"shared NeMo models not available ({SHARED_DIR})")
@pytest.mark.parametrize("name, layers", [("conformer_ctc_small", 16), ("fastconformer_ctc_small", 4)])
def test_nemo_conformer_exports_fuse_every_swish_and_pad(tmp_path, name, layers):
    """Two feed-forward Swishes and the conv module's Swish per layer; the conv module's Pad folds away.  Parity
    of these graphs with onnxruntime: tests/test_conformer.py."""
    from tinyasr_convert.nemo import load_config, manifest_from_nemo_config

    folder = SHARED_DIR / "models" / "nemo-random" / name
    settings = manifest_from_nemo_config(load_config(folder / "model_config.yaml"))
    ops = [node.op for node in load_model(convert(folder / "model.onnx", tmp_path / "m.tasr", **settings)).graph.nodes]
    assert "Pad" not in ops
    assert "Relu" not in ops  # the masked subsampling's ReLUs moved ahead of their masks, into the convs
    assert ops.count("Glu") == layers and "Sigmoid" not in ops and "Split" not in ops  # the conv module's gate
    nodes = load_model(tmp_path / "m.tasr").graph.nodes
    # the feed-forward Swishes go into their MatMuls with the biases; the conv module's stays a Swish node
    assert ops.count("Swish") == layers
    assert sum(n.op == "Linear" and n.attrs.get("activation") == "Swish" for n in nodes) == 2 * layers
    # every linear layer with a bias (q, k, v, out, two per feed-forward block) is one Linear node, the half-step
    # scales folded into the feed-forward blocks' second weights, the residual Adds after them and after the
    # attention's output projection into those Linears
    assert ops.count("Linear") >= 8 * layers
    assert sum(n.op == "Linear" and len(n.inputs) == 4 for n in nodes) == 3 * layers
