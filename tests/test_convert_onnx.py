"""ONNX -> .tasr on small hand-built graphs: every import rule, fold and fusion checked against onnxruntime."""

from __future__ import annotations

import argparse
import collections
import json

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from tinyasr_convert import cli as convert_cli  # noqa: E402
from tinyasr_convert import convert  # noqa: E402
from tinyasr.errors import ConversionError  # noqa: E402
from tinyasr.format.container import read_model  # noqa: E402
from tinyasr.engine.offline import load_model  # noqa: E402
from _paths import SHARED_DIR  # noqa: E402

TOLERANCE = 1e-4
RNG = np.random.default_rng(7)
F32 = TensorProto.FLOAT


def tensor(name, shape, scale=0.5, dtype=np.float32):
    return numpy_helper.from_array((RNG.standard_normal(shape) * scale).astype(dtype), name)


def const(name, value, dtype=np.int64):
    return numpy_helper.from_array(np.asarray(value, dtype), name)


def model(nodes, inputs, outputs, inits=(), opset=17, domains=(), metadata=None):
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(inits))
    opsets = [helper.make_opsetid("", opset)] + [helper.make_opsetid(d, 1) for d in domains]
    m = helper.make_model(graph, opset_imports=opsets, ir_version=8)
    for k, v in (metadata or {}).items():
        m.metadata_props.add(key=k, value=v)
    return m


def features_input(name="x", channels=8, dtype=F32):
    return helper.make_tensor_value_info(name, dtype, ["B", channels, "T"])


def output(name="y", shape=None, dtype=F32):
    return helper.make_tensor_value_info(name, dtype, shape)


def check(m, tmp_path, frames=(1, 9, 40), channels=8, batch=(1, 2), extra_feeds=None, **options):
    """Convert, then compare every output with onnxruntime for several input lengths; returns the graph's op counts."""
    path = convert(m, tmp_path / "m.tasr", **options)
    tasr = load_model(path)
    session = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    for t in frames:
        for b in batch:
            feeds = {"x": RNG.standard_normal((b, channels, t)).astype(np.float32)}
            feeds.update(extra_feeds(b, t) if extra_feeds else {})
            expected = session.run(None, feeds)
            got = tasr.run(feeds)
            for o, want in zip(session.get_outputs(), expected):
                assert got[o.name].shape == want.shape and got[o.name].dtype == want.dtype, o.name
                np.testing.assert_allclose(got[o.name], want, rtol=0, atol=TOLERANCE, err_msg=f"{o.name} T={t} B={b}")
    return collections.Counter(n["op"] for n in read_model(path).manifest["graph"]["nodes"]), read_model(path).manifest


# ---------------------------------------------------------------------------------------------------------------------
# Conv import and fusions


@pytest.mark.parametrize(
    "attrs, kernel, bias",
    [
        (dict(group=8, pads=[2, 2]), 5, False),  # depthwise
        (dict(group=2, pads=[1, 3], dilations=[2]), 5, True),  # grouped, dilated, asymmetric pads
        (dict(strides=[2], pads=[2, 2]), 5, True),  # strided
        (dict(auto_pad="SAME_UPPER"), 4, True),  # even kernel: the extra pad goes right
        (dict(auto_pad="SAME_LOWER"), 4, False),  # ... or left
        (dict(auto_pad="VALID", strides=[3]), 5, True),
    ],
    ids=["depthwise", "grouped-dilated", "strided", "same-upper", "same-lower", "valid"],
)
def test_conv_variants_match_onnxruntime(attrs, kernel, bias, tmp_path):
    group = attrs.get("group", 1)
    inits = [tensor("w", (8, 8 // group, kernel))] + ([tensor("b", (8,))] if bias else [])
    node = helper.make_node("Conv", ["x", "w"] + (["b"] if bias else []), ["y"], **attrs)
    ops, manifest = check(model([node], [features_input()], [output()], inits), tmp_path, frames=(5, 9, 40))
    (conv,) = manifest["graph"]["nodes"]
    assert set(conv["attrs"]) >= {"group", "strides", "dilations", "pads"} and "auto_pad" not in conv["attrs"]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    kernel=st.integers(1, 9), stride=st.integers(1, 3), dilation=st.integers(1, 3), pads=st.tuples(st.integers(0, 4), st.integers(0, 4)),
    group=st.sampled_from([1, 2, 8]), activation=st.sampled_from(["", "Relu", "Sigmoid", "Tanh", "Clip"]),
    residual=st.booleans(), frames=st.integers(1, 50),
)
def test_random_conv_blocks_match_onnxruntime(tmp_path, kernel, stride, dilation, pads, group, activation, residual, frames):
    """Conv (+ residual Add) (+ activation) with random geometry; skipped where the output would be empty."""
    if (frames + sum(pads) - dilation * (kernel - 1) - 1) // stride + 1 < 1:
        return
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], strides=[stride], dilations=[dilation], pads=list(pads), group=group)]
    inits = [tensor("w", (8, 8 // group, kernel)), tensor("b", (8,)), const("lo", -0.3, np.float32), const("hi", 0.4, np.float32)]
    last = "c"
    if residual:
        nodes += [helper.make_node("Conv", ["x", "w1"], ["r"], strides=[stride], dilations=[dilation], pads=list(pads), group=group),
                  helper.make_node("Add", ["c", "r"], ["s"])]
        inits.append(tensor("w1", (8, 8 // group, kernel)))
        last = "s"
    if activation:
        nodes.append(helper.make_node(activation, [last] + (["lo", "hi"] if activation == "Clip" else []), ["a"]))
        last = "a"
    nodes.append(helper.make_node("Identity", [last], ["y"]))
    ops, _ = check(model(nodes, [features_input()], [output()], inits), tmp_path, frames=(frames,), batch=(2,))
    assert ops == {"Conv": 2 if residual else 1}


def test_same_padding_with_stride_on_a_static_length(tmp_path):
    node = helper.make_node("Conv", ["x", "w"], ["y"], auto_pad="SAME_UPPER", strides=[2])
    x = helper.make_tensor_value_info("x", F32, [1, 8, 21])
    check(model([node], [x], [output()], [tensor("w", (8, 8, 4))]), tmp_path, frames=(21,), batch=(1,))


def test_same_padding_with_stride_on_unknown_length_is_refused(tmp_path):
    node = helper.make_node("Conv", ["x", "w"], ["y"], auto_pad="SAME_UPPER", strides=[2])
    with pytest.raises(ConversionError, match=r"node 'c' \(Conv\): auto_pad SAME_UPPER with stride 2"):
        node.name = "c"
        convert(model([node], [features_input()], [output()], [tensor("w", (8, 8, 3))]), tmp_path / "m.tasr")


def test_batchnorm_folds_into_conv_and_alone_becomes_mul_add(tmp_path):
    bn_params = lambda p: [tensor(f"{p}s", (8,)), tensor(f"{p}b", (8,)), tensor(f"{p}m", (8,)),  # noqa: E731
                           numpy_helper.from_array(RNG.uniform(0.5, 2, 8).astype(np.float32), f"{p}v")]
    nodes = [
        helper.make_node("BatchNormalization", ["x", "1s", "1b", "1m", "1v"], ["n"], epsilon=1e-3),
        helper.make_node("Conv", ["n", "w"], ["c"], pads=[1, 1]),
        helper.make_node("BatchNormalization", ["c", "2s", "2b", "2m", "2v"], ["y"]),
    ]
    inits = bn_params("1") + bn_params("2") + [tensor("w", (8, 8, 3))]
    ops, _ = check(model(nodes, [features_input()], [output()], inits), tmp_path)
    assert ops == {"Mul": 1, "Add": 1, "Conv": 1}


@pytest.mark.parametrize("activation", ["Relu", "Sigmoid", "Tanh", "Clip"])
def test_conv_activation_is_fused(activation, tmp_path):
    act_inputs = ["c"] + (["lo", "hi"] if activation == "Clip" else [])
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1]), helper.make_node(activation, act_inputs, ["y"])]
    inits = [tensor("w", (8, 8, 3)), tensor("b", (8,)), const("lo", -0.2, np.float32), const("hi", 0.3, np.float32)]
    ops, manifest = check(model(nodes, [features_input()], [output()], inits[: 4 if activation == "Clip" else 2]), tmp_path)
    assert ops == {"Conv": 1}
    attrs = manifest["graph"]["nodes"][0]["attrs"]
    assert attrs["activation"] == activation
    if activation == "Clip":
        assert attrs["activation_params"] == pytest.approx([-0.2, 0.3])


def test_conv_with_two_readers_is_not_fused(tmp_path):
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"]), helper.make_node("Relu", ["c"], ["y"]),
             helper.make_node("Neg", ["c"], ["z"])]
    ops, _ = check(model(nodes, [features_input()], [output("y"), output("z")], [tensor("w", (8, 8, 1))]), tmp_path)
    assert ops == {"Conv": 1, "Relu": 1, "Neg": 1}


def test_residual_add_and_relu_fuse_even_when_the_residual_comes_later(tmp_path):
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["main"], group=8, pads=[2, 2]),
        helper.make_node("Conv", ["x", "w2", "b2"], ["res"]),  # computed after the main Conv, read first by the Add
        helper.make_node("Add", ["res", "main"], ["sum"]),
        helper.make_node("Relu", ["sum"], ["y"]),
    ]
    inits = [tensor("w1", (8, 1, 5)), tensor("w2", (8, 8, 1)), tensor("b2", (8,))]
    ops, manifest = check(model(nodes, [features_input()], [output()], inits), tmp_path)
    assert ops == {"Conv": 2}
    fused = manifest["graph"]["nodes"][-1]
    # the Conv computed later ("res") takes the other branch as its residual input Z
    assert fused["inputs"][:3] == ["x", "w2", "b2"] and fused["inputs"][3] == "main"
    assert fused["attrs"]["activation"] == "Relu"


def test_broadcast_add_is_not_taken_for_a_residual(tmp_path):
    nodes = [helper.make_node("ReduceMean", ["x"], ["m"], axes=[2], keepdims=1),
             helper.make_node("Conv", ["x", "w"], ["c"]), helper.make_node("Add", ["c", "m"], ["y"])]
    ops, _ = check(model(nodes, [features_input()], [output()], [tensor("w", (8, 8, 1))]), tmp_path)
    assert ops == {"Conv": 1, "Add": 1, "ReduceMean": 1}


def test_com_microsoft_fused_conv_with_residual_and_clip(tmp_path):
    nodes = [
        helper.make_node("Conv", ["x", "w0"], ["z"]),
        helper.make_node("FusedConv", ["x", "w", "b", "z"], ["y"], domain="com.microsoft", pads=[1, 1],
                         activation="Clip", activation_params=[-0.5, 0.5]),
    ]
    inits = [tensor("w0", (8, 8, 1)), tensor("w", (8, 8, 3)), tensor("b", (8,))]
    ops, manifest = check(model(nodes, [features_input()], [output()], inits, domains=["com.microsoft"]), tmp_path)
    assert ops == {"Conv": 2}
    fused = manifest["graph"]["nodes"][-1]
    assert fused["attrs"]["activation"] == "Clip" and fused["attrs"]["activation_params"] == [-0.5, 0.5]


# ---------------------------------------------------------------------------------------------------------------------
# folding, shapes, misc ops


def test_static_shape_arithmetic_folds_and_time_stays_dynamic(tmp_path):
    nodes = [
        helper.make_node("Shape", ["x"], ["s"]),
        helper.make_node("Gather", ["s", "one"], ["channels"], axis=0),
        helper.make_node("Gather", ["s", "two"], ["frames"], axis=0),
        helper.make_node("Cast", ["channels"], ["cf"], to=F32),
        helper.make_node("Cast", ["frames"], ["tf"], to=F32),
        helper.make_node("Div", ["x", "cf"], ["d"]),
        helper.make_node("Mul", ["d", "tf"], ["y"]),
        helper.make_node("Transpose", ["unused"], ["dead"], perm=[1, 0]),
    ]
    inits = [const("one", 1), const("two", 2), tensor("unused", (3, 4))]
    ops, manifest = check(model(nodes, [features_input()], [output()], inits), tmp_path)
    assert ops == {"Shape": 1, "Gather": 1, "Cast": 1, "Div": 1, "Mul": 1}
    assert {t["name"] for t in manifest["tensors"]} == {"two", "cf"}
    assert manifest["tensors"][[t["name"] for t in manifest["tensors"]].index("cf")]["shape"] == []


def test_flatten_by_shape_arithmetic_becomes_one_reshape(tmp_path):
    """NeMo's classifier: Reshape(pool(x), [batch of x, -1]) -> Reshape(pool(x), [0, -1]) (batch read at run time)."""
    nodes = [
        helper.make_node("Shape", ["x"], ["s"]),
        helper.make_node("Gather", ["s", "zero"], ["b"], axis=0),
        helper.make_node("Unsqueeze", ["b", "axis0"], ["b1"]),
        helper.make_node("Gather", ["s", "one"], ["c"], axis=0),
        helper.make_node("Unsqueeze", ["c", "axis0"], ["c1"]),
        helper.make_node("Concat", ["b1", "c1", "minus_one"], ["target"], axis=0),
        helper.make_node("GlobalAveragePool", ["x"], ["pooled"]),
        helper.make_node("Reshape", ["pooled", "target"], ["y"]),
        helper.make_node("Concat", ["minus_one", "c1"], ["target2"], axis=0),  # a constant first, then the channels
        helper.make_node("Reshape", ["x", "target2"], ["z"]),
    ]
    inits = [const("zero", 0), const("one", 1), const("axis0", [0]), const("minus_one", [-1])]
    ops, manifest = check(model(nodes, [features_input()], [output(), output("z")], inits), tmp_path)
    assert ops == {"GlobalAveragePool": 1, "Reshape": 2}
    shapes = [read_model(tmp_path / "m.tasr").tensor(n["inputs"][1]).tolist() for n in manifest["graph"]["nodes"][1:]]
    assert shapes == [[0, 8, -1], [-1, 8]]


def test_constants_fold_and_identity_dropout_go(tmp_path):
    nodes = [
        helper.make_node("Constant", [], ["k"], value=numpy_helper.from_array(RNG.standard_normal((8, 8)).astype(np.float32))),
        helper.make_node("Transpose", ["k"], ["kt"], perm=[1, 0]),
        helper.make_node("Identity", ["x"], ["xi"]),
        helper.make_node("Transpose", ["xi"], ["xt"], perm=[0, 2, 1]),
        helper.make_node("MatMul", ["xt", "kt"], ["m"]),
        helper.make_node("Dropout", ["m"], ["dr"]),
        helper.make_node("Identity", ["dr"], ["y"]),
    ]
    ops, _ = check(model(nodes, [features_input()], [output()]), tmp_path)
    assert ops == {"Transpose": 1, "MatMul": 1}


def test_length_mask_ops_run_at_run_time(tmp_path):
    """NeMo's masked mean over time (Citrinet squeeze-excite) with a `length` input."""
    nodes = [
        helper.make_node("Shape", ["x"], ["s"]),
        helper.make_node("Gather", ["s", "two"], ["t"], axis=0),
        helper.make_node("Range", ["zero", "t", "one"], ["r"]),
        helper.make_node("Unsqueeze", ["length", "axis1"], ["len2"]),
        helper.make_node("Less", ["r", "len2"], ["valid"]),
        helper.make_node("Not", ["valid"], ["pad"]),
        helper.make_node("Unsqueeze", ["pad", "axis1"], ["pad3"]),
        helper.make_node("Where", ["pad3", "zerof", "x"], ["masked"]),
        helper.make_node("ReduceSum", ["masked", "axis_last"], ["total"], keepdims=1),
        helper.make_node("Cast", ["length"], ["lf"], to=F32),
        helper.make_node("Reshape", ["lf", "shape_b11"], ["lf3"]),
        helper.make_node("Div", ["total", "lf3"], ["mean"]),
        helper.make_node("Sigmoid", ["mean"], ["gate"]),
        helper.make_node("Mul", ["x", "gate"], ["y"]),
    ]
    inits = [const("two", 2), const("zero", 0), const("one", 1), const("axis1", [1]), const("axis_last", [-1]),
             const("zerof", 0.0, np.float32), const("shape_b11", [-1, 1, 1])]
    inputs = [features_input(), helper.make_tensor_value_info("length", TensorProto.INT64, ["B"])]
    lengths = lambda b, t: {"length": np.maximum(1, t - 3 * np.arange(b)).astype(np.int64)}  # noqa: E731
    ops, _ = check(model(nodes, inputs, [output()], inits), tmp_path, extra_feeds=lengths)
    assert {"Less", "Not", "Where", "ReduceSum", "Range"} <= set(ops)


def test_repeated_computations_run_once(tmp_path):
    """converters/passes.merge_duplicates: two blocks that each build the same frame mask from `length` (their own
    constants of equal values) share one; a node making a graph output stays; the outputs still match onnxruntime."""
    nodes, outputs = [], []
    for block in (0, 1):
        nodes += [helper.make_node("Unsqueeze", ["length", f"axis1_{block}"], [f"len2_{block}"]),
                  helper.make_node("Cast", [f"len2_{block}"], [f"lenf_{block}"], to=F32),
                  helper.make_node("Unsqueeze", [f"lenf_{block}", f"axis2_{block}"], [f"lenf3_{block}"]),
                  helper.make_node("Sigmoid", ["x"], [f"gate_{block}"]),
                  helper.make_node("Mul", [f"gate_{block}", f"lenf3_{block}"], [f"y{block}"])]
        outputs.append(output(f"y{block}"))
    nodes.append(helper.make_node("Sigmoid", ["x"], ["z"]))  # a graph output: stays, though block 0 has it
    outputs.append(output("z"))
    inits = [const(f"axis{a}_{block}", [a]) for block in (0, 1) for a in (1, 2)]
    inputs = [features_input(), helper.make_tensor_value_info("length", TensorProto.INT64, ["B"])]
    lengths = lambda b, t: {"length": np.arange(b, dtype=np.int64) + t}  # noqa: E731
    ops, _ = check(model(nodes, inputs, outputs, inits), tmp_path, extra_feeds=lengths)
    assert ops == {"Unsqueeze": 2, "Cast": 1, "Sigmoid": 2, "Mul": 2}, ops


def test_many_ops_and_old_opset_match_onnxruntime(tmp_path):
    """Opset 11 (axes as attributes) is brought to 17; a mix of the supported elementwise/reduce/shape ops."""
    nodes = [
        helper.make_node("Unsqueeze", ["x"], ["u"], axes=[1]),
        helper.make_node("Squeeze", ["u"], ["sq"], axes=[1]),
        helper.make_node("Split", ["sq"], ["a", "b"], axis=1, split=[3, 5]),
        helper.make_node("Exp", ["a"], ["ea"]),
        helper.make_node("Sqrt", ["ea"], ["sa"]),
        helper.make_node("Pow", ["sa", "two"], ["pa"]),
        helper.make_node("Log", ["pa"], ["la"]),
        helper.make_node("Softmax", ["b"], ["sb"], axis=1),
        helper.make_node("Concat", ["la", "sb"], ["cat"], axis=1),
        helper.make_node("Sub", ["cat", "x"], ["diff"]),
        helper.make_node("Slice", ["diff", "starts", "ends", "axes"], ["sl"]),
        helper.make_node("ReduceMean", ["sl"], ["rm"], axes=[2], keepdims=0),
        helper.make_node("Gemm", ["rm", "gw", "gb"], ["g"], transB=1),
        helper.make_node("LogSoftmax", ["g"], ["y"], axis=1),
        helper.make_node("GlobalAveragePool", ["x"], ["gap"]),
        helper.make_node("Tanh", ["gap"], ["z"]),
    ]
    inits = [const("two", 2.0, np.float32), const("starts", [1]), const("ends", [7]), const("axes", [1]),
             tensor("gw", (4, 6)), tensor("gb", (4,))]
    m = model(nodes, [features_input()], [output("y"), output("z")], inits, opset=11)
    ops, _ = check(m, tmp_path, frames=(1, 9))
    assert ops["Gemm"] == 1 and ops["Split"] == 1


def test_opset_18_axes_inputs_are_brought_to_17(tmp_path):
    nodes = [helper.make_node("ReduceMean", ["x", "axis"], ["m"], keepdims=1), helper.make_node("Sub", ["x", "m"], ["y"])]
    check(model(nodes, [features_input()], [output()], [const("axis", [2])], opset=18), tmp_path)


def test_int16_input_keeps_its_dtype(tmp_path):
    nodes = [helper.make_node("Cast", ["x"], ["f"], to=F32), helper.make_node("Mul", ["f", "scale"], ["y"])]
    m = model(nodes, [features_input(dtype=TensorProto.INT16)], [output()], [const("scale", 1 / 32768, np.float32)])
    path = convert(m, tmp_path / "m.tasr")
    tasr = load_model(path)
    assert [(v.name, v.dtype, tuple(v.shape)) for v in tasr.inputs] == [("x", "int16", ("B", 8, "T"))]
    x = RNG.integers(-32768, 32767, (1, 8, 30)).astype(np.int16)
    (want,) = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    np.testing.assert_allclose(tasr.run({"x": x})["y"], want, rtol=0, atol=1e-7)


# ---------------------------------------------------------------------------------------------------------------------
# refusals


def _conv_model(**extra):
    return model([helper.make_node("Conv", ["x", "w"], ["y"])], [features_input()], [output()], [tensor("w", (8, 8, 1))], **extra)


def test_unsupported_op_names_node_op_domain_and_supported_set(tmp_path):
    m = model([helper.make_node("Hardmax", ["x"], ["y"], name="hm")], [features_input()], [output()])
    with pytest.raises(ConversionError, match=r"node 'hm': op 'Hardmax' of domain 'ai.onnx' \(opset 17\) is not supported\. "
                       r"Supported: .*Conv.*com.microsoft:FusedConv"):
        convert(m, tmp_path / "m.tasr")


def test_custom_domain_op_is_refused(tmp_path):
    m = model([helper.make_node("Gelu", ["x"], ["y"], name="g", domain="com.example")], [features_input()], [output()],
              domains=["com.example"])
    with pytest.raises(ConversionError, match=r"node 'g': op 'Gelu' of domain 'com.example' \(opset 1\)"):
        convert(m, tmp_path / "m.tasr")


def test_subgraphs_are_refused_naming_the_node(tmp_path):
    branch = helper.make_graph([helper.make_node("Identity", ["x"], ["o"])], "b", [], [output("o")])
    cond = helper.make_tensor_value_info("cond", TensorProto.BOOL, [])
    m = model([helper.make_node("If", ["cond"], ["y"], name="branch", then_branch=branch, else_branch=branch)],
              [features_input(), cond], [output()])
    with pytest.raises(ConversionError, match=r"node 'branch' \(ai.onnx:If\) has subgraphs"):
        convert(m, tmp_path / "m.tasr")


def test_conv3d_is_refused(tmp_path):
    """2-D convs convert (the Conformer subsampling: tests/test_conformer.py); 3-D ones are refused."""
    node = helper.make_node("Conv", ["x", "w"], ["y"], name="c3")
    x = helper.make_tensor_value_info("x", F32, [1, 1, 8, 8, 8])
    m = model([node], [x], [output()], [tensor("w", (4, 1, 3, 3, 3))])
    with pytest.raises(ConversionError, match=r"node 'c3' \(Conv\) is a 3-D convolution; only 1-D .* and 2-D"):
        convert(m, tmp_path / "m.tasr")


def test_fused_conv_with_unsupported_activation_is_refused(tmp_path):
    node = helper.make_node("FusedConv", ["x", "w"], ["y"], name="fc", domain="com.microsoft", activation="HardSigmoid")
    m = model([node], [features_input()], [output()], [tensor("w", (8, 8, 1))], domains=["com.microsoft"])
    with pytest.raises(ConversionError, match=r"node 'fc' \(com.microsoft:FusedConv\): activation 'HardSigmoid'"):
        convert(m, tmp_path / "m.tasr")


def test_dropout_mask_and_computed_batchnorm_parameters_are_refused(tmp_path):
    m = model([helper.make_node("Dropout", ["x"], ["y", "mask"], name="dr")], [features_input()],
              [output(), output("mask", dtype=TensorProto.BOOL)])
    with pytest.raises(ConversionError, match=r"node 'dr' \(Dropout\): the dropout mask output is not supported"):
        convert(m, tmp_path / "m.tasr")
    scale = helper.make_tensor_value_info("scale", F32, [8])
    nodes = [helper.make_node("BatchNormalization", ["x", "scale", "b", "m", "v"], ["y"], name="bn")]
    inits = [tensor("b", (8,)), tensor("m", (8,)), const("v", np.ones(8), np.float32)]
    with pytest.raises(ConversionError, match=r"node 'bn' \(BatchNormalization\): parameter 'scale' is not constant"):
        convert(model(nodes, [features_input(), scale], [output()], inits), tmp_path / "m.tasr")


def test_unreadable_source_is_refused(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"this is not protobuf at all")
    with pytest.raises(ConversionError, match="bad.onnx: not a readable ONNX model"):
        convert(bad, tmp_path / "m.tasr")
    with pytest.raises(ConversionError, match="missing.onnx: cannot read"):
        convert(tmp_path / "missing.onnx", tmp_path / "m.tasr")


# ---------------------------------------------------------------------------------------------------------------------
# manifest: decoder, labels, frontend, provenance


def _ctc_model(classes=5, metadata=None):
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"]), helper.make_node("Transpose", ["c"], ["t"], perm=[0, 2, 1]),
             helper.make_node("LogSoftmax", ["t"], ["logprobs"], axis=-1)]
    return model(nodes, [features_input()], [output("logprobs", ["B", "T", classes])], [tensor("w", (classes, 8, 1))],
                 metadata=metadata)


def test_ctc_decoder_from_arguments(tmp_path):
    import hashlib

    m = _ctc_model()
    path = convert(m, tmp_path / "m.tasr", labels=list("abcd"), frontend={"type": "logmel", "features": 8})
    manifest = read_model(path).manifest
    assert manifest["decoder"] == {"type": "ctc", "output": "logprobs", "blank": 4, "vocabulary": list("abcd"),
                                   "vocabulary_type": "chars", "logits": "log_probs"}
    assert manifest["frontend"] == {"type": "logmel", "features": 8}
    provenance = manifest["provenance"]
    assert provenance["source_sha256"] == hashlib.sha256(m.SerializeToString()).hexdigest()
    assert provenance["source_format"] == "onnx" and provenance["converter"].startswith("tinyasr ")


def test_labels_from_model_metadata_and_argument_precedence(tmp_path):
    m = _ctc_model(metadata={"labels": json.dumps(["\u2581a", "b", "c", "d"]), "frontend": json.dumps({"n": 1})})
    manifest = read_model(convert(m, tmp_path / "a.tasr")).manifest
    assert manifest["decoder"]["vocabulary_type"] == "subword" and manifest["frontend"] == {"n": 1}
    manifest = read_model(convert(m, tmp_path / "b.tasr", labels=["aa", "bb", "cc", "dd", "ee"], blank=0)).manifest
    assert manifest["decoder"]["vocabulary"][0] == "aa" and manifest["decoder"]["blank"] == 0


def test_inputs_and_outputs_can_be_renamed(tmp_path):
    path = convert(_ctc_model(), tmp_path / "m.tasr", input_names=["features"], output_names=["log_probs"])
    graph = read_model(path).manifest["graph"]
    assert [v["name"] for v in graph["inputs"]] == ["features"] and [v["name"] for v in graph["outputs"]] == ["log_probs"]
    x = RNG.standard_normal((1, 8, 6)).astype(np.float32)
    assert load_model(path).run({"features": x})["log_probs"].shape == (1, 6, 5)
    with pytest.raises(ConversionError, match=r"2 input names given for the model's 1 inputs: \['x'\]"):
        convert(_ctc_model(), tmp_path / "n.tasr", input_names=["a", "b"])


def test_label_count_must_fit_the_output(tmp_path):
    with pytest.raises(ConversionError, match=r"7 labels given but CTC output 'logprobs' has 5 classes"):
        convert(_ctc_model(), tmp_path / "m.tasr", labels=list("abcdefg"))
    with pytest.raises(ConversionError, match=r"decoder 'ctc' needs labels"):
        convert(_ctc_model(), tmp_path / "m.tasr", decoder="ctc")


def test_cli_convert(tmp_path, capsys):
    source = tmp_path / "src.onnx"
    onnx.save(_ctc_model(), source)
    (tmp_path / "labels.txt").write_text("a\n \nc\nd\n")
    (tmp_path / "fe.json").write_text(json.dumps({"sample_rate": 16000}))
    parser = argparse.ArgumentParser()
    convert_cli.add_arguments(parser)
    args = parser.parse_args([str(source), "-o", str(tmp_path / "o.tasr"), "--labels", str(tmp_path / "labels.txt"),
                              "--decoder", "ctc", "--frontend-json", str(tmp_path / "fe.json"), "--float16"])
    assert convert_cli.run(args) == 0
    summary = capsys.readouterr().out
    assert "3 -> 3 nodes" in summary and "float16" in summary and "bytes" in summary
    manifest = read_model(tmp_path / "o.tasr").manifest
    assert manifest["decoder"]["vocabulary"] == ["a", " ", "c", "d"]
    assert manifest["frontend"] == {"sample_rate": 16000}
    assert {t["name"]: t["dtype"] for t in manifest["tensors"]}["w"] == "float16"


def test_cli_hands_nemo_archives_to_the_nemo_converter(tmp_path, capsys):
    import os

    nemo = str(SHARED_DIR / "models/nemo-random/quartznet_5x5/model.nemo")
    parser = argparse.ArgumentParser()
    convert_cli.add_arguments(parser)
    with pytest.raises(ConversionError, match="--labels, --decoder cannot be used with a .nemo source"):
        convert_cli.run(parser.parse_args([nemo, "-o", str(tmp_path / "n.tasr"), "--labels", "x", "--decoder", "ctc"]))
    if not os.path.exists(nemo):
        pytest.skip(f"{nemo} not available")
    assert convert_cli.run(parser.parse_args([nemo, "-o", str(tmp_path / "n.tasr")])) == 0
    assert "n.tasr" in capsys.readouterr().out
    assert read_model(tmp_path / "n.tasr").manifest["provenance"]["source_format"] == "nemo"


@pytest.mark.parametrize("location, message", [
    ("absent.bin", "is not regular file"),
    ("../../outside.bin", "points outside the directory"),
    ("/etc/passwd", "should be a relative path"),
])
def test_external_tensor_data_outside_the_model_folder_or_missing_is_refused(tmp_path, location, message):
    weight = numpy_helper.from_array(np.ones((2, 3, 1), np.float32), "w")
    weight.ClearField("raw_data")
    weight.data_location = TensorProto.EXTERNAL
    weight.external_data.add(key="location", value=location)
    graph = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, "T"])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, "T"])], [weight])
    path = tmp_path / "folder" / "m.onnx"
    path.parent.mkdir()
    path.write_bytes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString())
    with pytest.raises(ConversionError, match=f"{path}: cannot load the model's external tensor data: .*{message}"):
        convert(path, tmp_path / "m.tasr")
