"""Every op against onnxruntime running the same op as a one-node ONNX model (the independent reference)."""

from __future__ import annotations

import numpy as np

import onnxruntime as ort
import pytest
from onnx import helper, numpy_helper

from tinyasr.errors import GraphError
from tinyasr.ops import SUPPORTED_OPS, OpContext, lookup, run_op
from tinyasr.format.encodings.sparse import BSRMatrix, CSRMatrix, bsr_arrays, csr_arrays

RNG = np.random.default_rng(1234)
INT64_MAX = np.iinfo(np.int64).max
INT64_MIN = np.iinfo(np.int64).min


def f32(*shape, low=-3.0, high=3.0):
    return RNG.uniform(low, high, shape).astype(np.float32)


def i64(*values):
    return np.array(values, dtype=np.int64)


def ort_outputs(nodes, inputs, output_dtypes, opset):
    """Run ONNX ``nodes`` over graph inputs in0, in1, ... (None = omitted) with onnxruntime."""
    graph_inputs = [
        helper.make_tensor_value_info(f"in{i}", helper.np_dtype_to_tensor_dtype(x.dtype), x.shape)
        for i, x in enumerate(inputs) if x is not None
    ]
    graph_outputs = [
        helper.make_tensor_value_info(f"out{i}", helper.np_dtype_to_tensor_dtype(dtype), None)
        for i, dtype in enumerate(output_dtypes)
    ]
    graph = helper.make_graph(nodes, "one_op", graph_inputs, graph_outputs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    feeds = {f"in{i}": x for i, x in enumerate(inputs) if x is not None}
    return session.run(None, feeds)


def check_against_ort(op, inputs, attrs=None, *, onnx_attrs=None, opset=17, num_outputs=1, rtol=1e-5, atol=1e-6):
    """Run ``op`` in tinyasr and in onnxruntime; compare dtypes, shapes and values."""
    attrs = attrs or {}
    ours = run_op(op, inputs, attrs, num_outputs=num_outputs)[:num_outputs]
    assert len(ours) == num_outputs
    names = [f"in{i}" if x is not None else "" for i, x in enumerate(inputs)]
    node = helper.make_node(op, names, [f"out{i}" for i in range(num_outputs)],
                            **(attrs if onnx_attrs is None else onnx_attrs))
    theirs = ort_outputs([node], inputs, [o.dtype for o in ours], opset)
    for mine, ref in zip(ours, theirs):
        assert isinstance(mine, np.ndarray), type(mine)
        assert mine.dtype == ref.dtype, (mine.dtype, ref.dtype)
        assert mine.shape == ref.shape, (mine.shape, ref.shape)
        if mine.dtype.kind == "f":
            np.testing.assert_allclose(mine, ref, rtol=rtol, atol=atol)
        else:
            np.testing.assert_array_equal(mine, ref)


# ----------------------------------------------------------------------------- elementwise

UNARY_CASES = [
    ("Relu", f32(2, 3, 5)),
    ("Sigmoid", np.array([-100.0, -20.0, -1.0, 0.0, 1.5, 30.0, 100.0], np.float32)),
    ("Tanh", f32(2, 3, 5)),
    ("Softplus", np.array([-50.0, -2.0, 0.0, 0.5, 3.0, 40.0], np.float32)),
    ("Erf", f32(3, 7)),
    ("Sqrt", f32(4, 5, low=0.0)),
    ("Exp", f32(4, 5)),
    ("Sin", f32(4, 5, low=-3000.0, high=3000.0)),
    ("Cos", f32(4, 5, low=-3000.0, high=3000.0)),
    ("Log", f32(4, 5, low=0.01)),
    ("Neg", f32(4, 5)),
    ("Neg", i64(-3, 0, 7)),
    ("Abs", f32(4, 5)),
    ("Abs", i64(-3, 0, 7)),
    ("Reciprocal", f32(4, 5, low=0.5)),
    ("Floor", f32(4, 5)),
    ("Ceil", f32(4, 5)),
    ("Round", np.array([-2.5, -1.5, -0.5, 0.5, 1.5, 2.5, 0.3], np.float32)),
    ("Not", np.array([[True, False], [False, False]])),
    ("Identity", f32(2, 3)),
    ("Identity", i64(4, -2)),
    ("Not", np.array(True)),
]
# Each float op again on a 0-d tensor and on a rank-4 one with an empty axis (the domain kept positive
# where the op needs it), and the rounding ops at their ties and signed zeros.
UNARY_CASES += [
    (op, f32(*shape, low=low, high=high))
    for op, low, high in [("Relu", -3, 3), ("Sigmoid", -30, 30), ("Tanh", -10, 10), ("Softplus", -30, 30),
                          ("Erf", -4, 4), ("Sqrt", 0, 9), ("Exp", -20, 20), ("Sin", -9, 9), ("Cos", -9, 9), ("Log", 1e-6, 50), ("Neg", -3, 3),
                          ("Abs", -3, 3), ("Reciprocal", 0.01, 4), ("Floor", -5, 5), ("Ceil", -5, 5),
                          ("Round", -5, 5), ("Identity", -3, 3)]
    for shape in [(), (2, 0, 3, 1), (1, 2, 3, 4)]
] + [(op, np.array([-1.5, -0.5, -0.0, 0.0, 0.5, 1.5, 2.5, -2.49], np.float32)) for op in ("Floor", "Ceil", "Round")]


@pytest.mark.parametrize("op,x", UNARY_CASES, ids=[c[0] for c in UNARY_CASES])
def test_unary(op, x):
    check_against_ort(op, [x])


def test_leaky_relu():
    check_against_ort("LeakyRelu", [f32(3, 4)], {"alpha": 0.2})
    check_against_ort("LeakyRelu", [f32(3, 4)])


def test_clip_bounds_as_inputs_attributes_and_one_sided():
    x = f32(2, 3, 4)
    check_against_ort("Clip", [x, np.array(-1.0, np.float32), np.array(0.5, np.float32)])
    check_against_ort("Clip", [x, np.array(-1.0, np.float32), None])
    check_against_ort("Clip", [x, None, np.array(0.5, np.float32)])
    check_against_ort("Clip", [x])
    check_against_ort("Clip", [i64(-5, 0, 3, 9), i64(-1).reshape(()), i64(4).reshape(())])
    check_against_ort("Clip", [x], {"min": -0.5, "max": 2.0}, opset=6)


def test_dropout_is_identity_with_a_true_mask():
    check_against_ort("Dropout", [f32(2, 5)], num_outputs=2)
    check_against_ort("Dropout", [f32(2, 5)])
    check_against_ort("Dropout", [f32(3, 1, 4), np.array(0.3, np.float32), np.array(False)], num_outputs=2)


BINARY_SHAPES = [((2, 3, 4), (2, 3, 4)), ((2, 3, 4), (4,)), ((2, 1, 4), (3, 1)), ((), (3, 2)), ((5,), ())]


@pytest.mark.parametrize("op", ["Add", "Sub", "Mul", "Div"])
@pytest.mark.parametrize("shapes", BINARY_SHAPES, ids=str)
def test_arithmetic_float_broadcasting(op, shapes):
    a, b = f32(*shapes[0]), f32(*shapes[1], low=0.5)
    check_against_ort(op, [a, b])


@pytest.mark.parametrize("op", ["Add", "Sub", "Mul", "Div"])
def test_arithmetic_int64_stays_int64(op):
    a = i64(-7, -6, -1, 0, 5, 7, 9, 100).reshape(2, 4)
    b = i64(2, -3, 4, -5)
    check_against_ort(op, [a, b])


def test_pow():
    check_against_ort("Pow", [f32(3, 4, low=0.1), f32(4)])
    check_against_ort("Pow", [f32(3, 4), np.array(2.0, np.float32)])
    check_against_ort("Pow", [f32(3, 4), np.array(3, np.int64)])
    check_against_ort("Pow", [i64(2, 3, -4), i64(3, 2, 1)])


@pytest.mark.parametrize("op", ["Less", "LessOrEqual", "Greater", "GreaterOrEqual", "Equal"])
def test_comparisons(op):
    a = np.round(f32(2, 3, 4)).astype(np.float32)
    check_against_ort(op, [a, np.round(f32(4))])
    check_against_ort(op, [i64(1, 2, 3, 4).reshape(4, 1), i64(2, 3)])


@pytest.mark.parametrize("op", ["And", "Or", "Xor"])
@pytest.mark.parametrize("shapes", [((3, 4), (4,)), ((2, 3), (2, 3)), ((), (2, 1, 3)), ((2, 1), (1, 5))], ids=str)
def test_logic(op, shapes):
    check_against_ort(op, [np.asarray(RNG.random(shape) > 0.5) for shape in shapes])


def test_where_broadcasts():
    check_against_ort("Where", [RNG.random((2, 1, 4)) > 0.5, f32(3, 4), f32(2, 3, 1)])
    check_against_ort("Where", [RNG.random((5,)) > 0.5, i64(1, 2, 3, 4, 5), i64(0).reshape(())])


@pytest.mark.parametrize("op", ["Max", "Min"])
def test_variadic_max_min(op):
    check_against_ort(op, [f32(2, 3), f32(3), f32(1, 1)])
    check_against_ort(op, [f32(4)])
    check_against_ort(op, [np.array(1.0, np.float32), np.array(2.0, np.float32)])


def test_binary_ops_refuse_mixed_dtypes():
    with pytest.raises(GraphError, match="Add: inputs must have one element type"):
        run_op("Add", [f32(3), i64(1, 2, 3)], {})


# ----------------------------------------------------------------------------- reductions

@pytest.mark.parametrize("op", ["ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd"])
@pytest.mark.parametrize("attrs", [{"axes": [1]}, {"axes": [-1, 0], "keepdims": 0}, {}, {"keepdims": 0}])
def test_reductions_axes_attribute(op, attrs):
    check_against_ort(op, [f32(2, 3, 4, low=0.5, high=1.5)], attrs)


@pytest.mark.parametrize("op", ["ReduceMean", "ReduceSum", "ReduceMax"])
def test_reductions_axes_input(op):
    x = f32(2, 3, 4)
    check_against_ort(op, [x, i64(-1)], opset=18)
    check_against_ort(op, [x, i64(0, 2)], {"keepdims": 0}, opset=18)
    check_against_ort(op, [x, None], {"noop_with_empty_axes": 1}, opset=18)
    check_against_ort(op, [x], opset=18)


def test_reduce_sum_opset13_and_int64():
    check_against_ort("ReduceSum", [f32(3, 5), i64(1)], opset=13)
    check_against_ort("ReduceSum", [i64(1, 2, 3, 4).reshape(2, 2), i64(0)], {"keepdims": 0}, opset=13)


@pytest.mark.parametrize("op", ["ArgMax", "ArgMin"])
def test_arg_reductions(op):
    ties = i64(1, 3, 3, 0, 0, 1).reshape(2, 3)
    for attrs in ({}, {"axis": -1, "keepdims": 0}, {"axis": 1, "select_last_index": 1}):
        check_against_ort(op, [ties], attrs)
        check_against_ort(op, [f32(3, 4, 5)], attrs)
    check_against_ort(op, [f32(6)], {"keepdims": 0})


# ----------------------------------------------------------------------------- nn

@pytest.mark.parametrize("op", ["Softmax", "LogSoftmax"])
@pytest.mark.parametrize("axis", [-1, 0, 1])
def test_softmax(op, axis):
    check_against_ort(op, [f32(2, 3, 5, low=-30, high=30)], {"axis": axis})


def test_log_softmax_of_classes_laid_out_frame_by_frame():
    """A streamed conv program hands LogSoftmax [B, classes, T] as a transposed view of its time-major rows: the
    compiled row kernel runs on the view's memory, and the result keeps the view's shape (also 4-D, the axis
    contiguous once swapped with the last)."""
    check_against_ort("LogSoftmax", [f32(1, 6, 11, low=-30, high=30).transpose(0, 2, 1)], {"axis": 1})
    check_against_ort("LogSoftmax", [f32(2, 3, 4, 5, low=-30, high=30).swapaxes(1, 3)], {"axis": 1})


def test_softmax_default_axis():
    check_against_ort("Softmax", [f32(2, 7)])
    check_against_ort("LogSoftmax", [f32(2, 7)])


@pytest.mark.parametrize("op", ["GlobalAveragePool", "GlobalMaxPool"])
def test_global_pool(op):
    check_against_ort(op, [f32(2, 3, 5)])
    check_against_ort(op, [f32(1, 4, 3, 2)])


@pytest.mark.parametrize("shapes", [((2, 3, 4), (4, 5)), ((3, 4), (2, 4, 5)), ((4,), (4, 5)),
                                    ((3, 4), (4,)), ((2, 1, 3, 4), (5, 4, 2)), ((4,), (4,))], ids=str)
def test_matmul(shapes):
    check_against_ort("MatMul", [f32(*shapes[0]), f32(*shapes[1])], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("attrs", [{}, {"transA": 1}, {"transB": 1, "alpha": 0.5},
                                   {"transA": 1, "transB": 1, "beta": 2.0}])
@pytest.mark.parametrize("c_shape", [None, (5,), (1,), (3, 5), (3, 1)])
def test_gemm(attrs, c_shape):
    a = f32(4, 3) if attrs.get("transA") else f32(3, 4)
    b = f32(5, 4) if attrs.get("transB") else f32(4, 5)
    inputs = [a, b] + ([] if c_shape is None else [f32(*c_shape)])
    check_against_ort("Gemm", inputs, attrs, atol=1e-5)


@pytest.mark.parametrize("axis", [-1, 1])
def test_layer_normalization(axis):
    x = f32(2, 3, 6)
    scale_shape = x.shape[axis:]
    check_against_ort("LayerNormalization", [x, f32(*scale_shape), f32(*scale_shape)], {"axis": axis}, atol=1e-5)
    check_against_ort("LayerNormalization", [x, f32(*scale_shape)], {"axis": axis, "epsilon": 1e-3},
                      num_outputs=3, atol=1e-5)


# wav2vec2's GroupNorm as exported ([1, 512, 1] groups of 16,000-sample rows), rows with an offset, other ranks
@pytest.mark.parametrize("x_shape", [(1, 4, 7), (2, 3, 100), (2, 5, 3, 4), (1, 32, 3199), (3, 2, 2)], ids=str)
@pytest.mark.parametrize("attrs", [{"epsilon": 1e-3}, {}], ids=str)
@pytest.mark.parametrize("offset", [0.0, 5.0])
def test_instance_normalization(x_shape, attrs, offset):
    x, scale, bias = f32(*x_shape) + np.float32(offset), f32(x_shape[1]), f32(x_shape[1])
    if not offset:
        check_against_ort("InstanceNormalization", [x, scale, bias], attrs, atol=1e-5)
        return
    # onnxruntime's statistics lose precision on rows with an offset (measured up to 2e-4 off the float64
    # formula on 2-element rows); the formula is the reference there, onnxruntime a coarse second one
    check_against_ort("InstanceNormalization", [x, scale, bias], attrs, atol=1e-3)
    rows = x.astype(np.float64).reshape(x.shape[0], x.shape[1], -1)
    centred = rows - rows.mean(axis=-1, keepdims=True)
    formula = centred / np.sqrt(np.mean(centred ** 2, axis=-1, keepdims=True) + attrs.get("epsilon", 1e-5))
    expected = formula * scale.reshape(1, -1, 1) + bias.reshape(1, -1, 1)
    got = run_op("InstanceNormalization", [x, scale, bias], attrs)[0]
    np.testing.assert_allclose(got.reshape(expected.shape), expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("attrs", [{}, {"reverse": 1}, {"exclusive": 1}, {"exclusive": 1, "reverse": 1}], ids=str)
@pytest.mark.parametrize("x,axis", [(i64(1, 1, 0, 1), 0), (np.arange(24).reshape(2, 3, 4), -1),
                                    (np.arange(24).reshape(2, 3, 4), 1)], ids=["mask", "last", "middle"])
def test_cumsum(attrs, x, axis):
    check_against_ort("CumSum", [x, i64(axis)], attrs)
    check_against_ort("CumSum", [f32(3, 5), i64(axis % 2)], attrs, atol=1e-5)


@pytest.mark.parametrize("data,indices,updates", [
    (np.zeros((2, 6), np.int64), i64(0, 5, 1, 2).reshape(2, 2), i64(1, 1)),  # wav2vec2: 1 at each last frame
    (f32(4, 3), i64(3, 0).reshape(2, 1), f32(2, 3)),  # whole rows
    (f32(2, 3, 4), i64(1, 2, 3, 0, -1, -1).reshape(2, 3), f32(2)),  # single elements, negative indices
], ids=["frames", "rows", "elements"])
def test_scatter_nd(data, indices, updates):
    check_against_ort("ScatterND", [data, indices, updates])


def test_scatter_nd_refuses_an_index_outside_the_data():
    with pytest.raises(GraphError, match="outside"):
        run_op("ScatterND", [np.zeros((2, 3), np.int64), i64(0, 3).reshape(1, 2), i64(1)], {})


@pytest.mark.parametrize("a,b,attrs", [
    (i64(-7, -1, 0, 5, 9), i64(3), {}), (i64(7, -7, 8), i64(-3, 3, -5), {}), (i64(-7, 7), i64(3), {"fmod": 1}),
    (f32(3, 4), f32(4, low=0.5), {"fmod": 1}), (f32(2, 3), f32(2, 3, low=-3.0, high=-0.5), {"fmod": 1}),
], ids=str)
def test_mod(a, b, attrs):
    check_against_ort("Mod", [a, b], attrs)


def test_mod_refuses_an_integer_division_by_zero():
    with pytest.raises(GraphError, match="division by zero"):
        run_op("Mod", [i64(4, 5), i64(2, 0)], {})


def test_is_nan():
    x = f32(3, 5)
    x[0, 1] = x[2, 4] = np.nan
    x[1, 2] = np.inf
    check_against_ort("IsNaN", [x])
    check_against_ort("IsNaN", [f32(2, 2, 2)])


@pytest.mark.parametrize("x_shape", [(2, 4, 6), (3, 4), (1, 4, 3, 5)], ids=str)
@pytest.mark.parametrize("attrs", [{"epsilon": 1e-3}, {}], ids=str)
def test_batch_normalization(x_shape, attrs):
    stats = [f32(4), f32(4), f32(4), f32(4, low=0.1)]
    check_against_ort("BatchNormalization", [f32(*x_shape)] + stats, attrs, atol=1e-5)


# ----------------------------------------------------------------------------- conv

CONV_CASES = [
    ((2, 4, 11), (6, 4, 3), {"pads": [1, 1]}),
    ((1, 4, 16), (4, 1, 5), {"group": 4, "pads": [2, 2]}),  # depthwise
    ((2, 6, 20), (4, 3, 3), {"group": 2, "strides": [2], "dilations": [2], "pads": [2, 1]}),
    ((1, 3, 9), (5, 3, 1), {}),  # pointwise
    ((1, 3, 10), (2, 3, 4), {"auto_pad": "SAME_UPPER", "strides": [3]}),
    ((1, 3, 10), (2, 3, 4), {"auto_pad": "SAME_LOWER"}),
    ((1, 3, 10), (2, 3, 4), {"auto_pad": "VALID", "kernel_shape": [4]}),
    # 2-D: NeMo's striding / dw_striding subsampling, pointwise, grouped with dilation, auto_pad, im2col in row chunks
    ((2, 1, 21, 16), (4, 1, 3, 3), {"strides": [2, 2], "pads": [1, 1, 1, 1]}),
    # one input channel, 3 x 3, stride 2 (a direct kernel over six phase planes): no pads, uneven and wide pads,
    # odd sizes, several row chunks
    ((1, 1, 9, 7), (3, 1, 3, 3), {"strides": [2, 2]}),
    ((2, 1, 10, 11), (5, 1, 3, 3), {"strides": [2, 2], "pads": [0, 2, 1, 0]}),
    ((1, 1, 8, 6), (2, 1, 3, 3), {"strides": [2, 2], "pads": [3, 1, 2, 4]}),
    ((1, 1, 701, 9), (3, 1, 3, 3), {"strides": [2, 2], "pads": [1, 1, 1, 1]}),
    # dense at stride 2 (im2col from the four stride phases): uneven kernels and pads, none, grouped, and an input
    # long enough for several row chunks
    ((1, 3, 12, 11), (5, 3, 4, 4), {"strides": [2, 2], "pads": [1, 2, 2, 1]}),
    ((2, 2, 17, 9), (3, 2, 5, 3), {"strides": [2, 2], "pads": [2, 1, 2, 1]}),
    ((1, 2, 7, 6), (4, 2, 3, 3), {"strides": [2, 2]}),
    ((1, 2, 6, 5), (3, 2, 2, 2), {"strides": [2, 2], "pads": [3, 0, 0, 3]}),
    ((1, 4, 9, 8), (6, 2, 3, 3), {"group": 2, "strides": [2, 2], "pads": [1, 1, 1, 1]}),
    ((1, 8, 4000, 40), (2, 8, 3, 3), {"strides": [2, 2], "pads": [1, 1, 1, 1]}),
    ((2, 4, 9, 10), (4, 1, 3, 3), {"group": 4, "strides": [2, 2], "pads": [1, 1, 1, 1]}),
    # depthwise (eight channels at a time, channels-last, a partial last block scalar): even and uneven kernels
    # and pads, none, pads wider than a tap reaches; whole blocks of 8 with and without a partial one, widths
    # that are and are not multiples of 8, strides 1, 2 and mixed, dilation
    ((1, 8, 20, 16), (8, 1, 3, 3), {"group": 8, "strides": [2, 2], "pads": [1, 1, 1, 1]}),
    ((2, 19, 13, 21), (19, 1, 3, 3), {"group": 19, "strides": [2, 2], "pads": [1, 1, 1, 1]}),
    ((1, 16, 11, 19), (16, 1, 3, 5), {"group": 16, "strides": [1, 2], "dilations": [2, 1], "pads": [2, 2, 1, 3]}),
    ((1, 24, 9, 10), (24, 1, 3, 3), {"group": 24, "pads": [1, 1, 1, 1]}),
    ((1, 3, 11, 12), (3, 1, 4, 4), {"group": 3, "strides": [2, 2], "pads": [1, 2, 2, 1]}),
    ((2, 5, 17, 9), (5, 1, 5, 3), {"group": 5, "strides": [2, 2], "pads": [2, 1, 2, 1]}),
    ((1, 2, 7, 6), (2, 1, 3, 3), {"group": 2, "strides": [2, 2]}),
    ((1, 2, 6, 5), (2, 1, 2, 2), {"group": 2, "strides": [2, 2], "pads": [3, 0, 0, 3]}),
    ((1, 4, 5, 6), (3, 4, 1, 1), {}),
    ((1, 6, 12, 11), (4, 3, 3, 2), {"group": 2, "dilations": [2, 1], "strides": [1, 2], "pads": [2, 0, 1, 1]}),
    ((1, 3, 10, 7), (2, 3, 3, 4), {"auto_pad": "SAME_UPPER", "strides": [2, 3]}),
    ((1, 3, 10, 7), (2, 3, 2, 3), {"auto_pad": "SAME_LOWER"}),
    ((1, 2, 3000, 40), (2, 2, 3, 3), {"pads": [1, 1, 1, 1]}),
    # padding wider than a tap reaches (whole rows / columns of zeros), read without a padded copy
    ((1, 2, 6, 5), (3, 2, 2, 2), {"pads": [3, 0, 0, 3], "strides": [1, 2]}),
    ((1, 3, 8, 9), (3, 1, 3, 3), {"group": 3, "dilations": [2, 2], "pads": [2, 3, 1, 0], "strides": [1, 3]}),
    ((2, 6, 4, 5), (4, 3, 1, 1), {"group": 2}),  # grouped 1x1: BLAS on the input itself
]


@pytest.mark.parametrize("x_shape,w_shape,attrs", CONV_CASES, ids=[str(c[2]) for c in CONV_CASES])
@pytest.mark.parametrize("with_bias", [True, False])
def test_conv(x_shape, w_shape, attrs, with_bias):
    inputs = [f32(*x_shape), f32(*w_shape)] + ([f32(w_shape[0])] if with_bias else [])
    check_against_ort("Conv", inputs, attrs, atol=1e-5)


FUSED_GEOMETRIES = [((2, 4, 12), (6, 2, 3), {"group": 2, "pads": [1, 1]}),
                    ((1, 3, 11), (5, 3, 3), {"strides": [2], "dilations": [2], "pads": [2, 0]})]


@pytest.mark.parametrize("activation", ["Relu", "Sigmoid"])
@pytest.mark.parametrize("w_shape,conv_attrs", [((3, 2, 3, 3), {"pads": [1, 1, 1, 1]}),
                                                ((2, 1, 3, 3), {"group": 2, "strides": [2, 2]}),
                                                ((3, 2, 3, 3), {"strides": [2, 2], "pads": [1, 1, 1, 1]}),
                                                ((4, 1, 3, 3), {"strides": [2, 2], "pads": [1, 1, 1, 1]})], ids=str)
def test_conv2d_fused_activation(w_shape, conv_attrs, activation):
    """A 2-D Conv with a fused activation (the converter fuses the subsampling's ReLU) equals Conv -> activation."""
    x, w, b = f32(2, w_shape[1] * conv_attrs.get("group", 1), 9, 8), f32(*w_shape), f32(w_shape[0])
    ours = run_op("Conv", [x, w, b], {**conv_attrs, "activation": activation})[0]
    nodes = [helper.make_node("Conv", ["in0", "in1", "in2"], ["conv"], **conv_attrs),
             helper.make_node(activation, ["conv"], ["out0"])]
    ref = ort_outputs(nodes, [x, w, b], [np.dtype(np.float32)], 17)[0]
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("activation,params", [("", ()), ("Relu", ()), ("Sigmoid", ()), ("Tanh", ()),
                                               ("Clip", (-0.5, 1.0))])
@pytest.mark.parametrize("bias,residual", [(True, True), (True, False), (False, True)])
@pytest.mark.parametrize("x_shape,w_shape,conv_attrs", FUSED_GEOMETRIES, ids=[str(g[2]) for g in FUSED_GEOMETRIES])
def test_conv_fused_residual_and_activation(x_shape, w_shape, conv_attrs, bias, residual, activation, params):
    """tinyasr's extended Conv equals the unfused ONNX subgraph Conv -> Add(Z) -> activation."""
    x, w = f32(*x_shape), f32(*w_shape)
    b = f32(w_shape[0]) if bias else None
    z = f32(*run_op("Conv", [x, w], conv_attrs)[0].shape) if residual else None
    attrs = {**conv_attrs, "activation": activation, "activation_params": list(params)}
    ours = run_op("Conv", [x, w, b, z], attrs)[0]
    nodes = [helper.make_node("Conv", ["in0", "in1"] + ["in2"] * bias, ["conv"], **conv_attrs)]
    last = "conv"
    if residual:
        nodes.append(helper.make_node("Add", [last, "in3"], ["sum"]))
        last = "sum"
    if activation == "Clip":
        nodes += [helper.make_node("Constant", [], [name], value=numpy_helper.from_array(np.float32(v)))
                  for name, v in zip(("lo", "hi"), params)]
        nodes.append(helper.make_node("Clip", [last, "lo", "hi"], ["act"]))
        last = "act"
    elif activation:
        nodes.append(helper.make_node(activation, [last], ["act"]))
        last = "act"
    nodes.append(helper.make_node("Identity", [last], ["out0"]))
    ref = ort_outputs(nodes, [x, w, b, z], [np.dtype(np.float32)], 17)[0]
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-5)


def sparse_weight(shape, kind):
    """A weight with about 70 % zeros: dense (for onnxruntime) and encoded as CSR or BSR 4x1."""
    weight = f32(*shape)
    weight[RNG.random(shape) < 0.7] = 0
    matrix = weight.reshape(shape[0], -1)
    if kind == "csr":
        return weight, CSRMatrix(*csr_arrays(matrix), shape)
    return weight, BSRMatrix(*bsr_arrays(matrix, (4, 1)), shape, (4, 1))


@pytest.mark.parametrize("kind", ["csr", "bsr"])
@pytest.mark.parametrize("w_shape,attrs", [((8, 6, 1), {}), ((8, 6, 1), {"strides": [2]}),
                                           ((8, 6, 3), {"pads": [1, 1]})], ids=str)
def test_conv_with_encoded_weights(kind, w_shape, attrs):
    """Pointwise convs run the sparse kernels, other geometries the decoded weight; both equal dense ONNX."""
    dense_weight, encoded = sparse_weight(w_shape, kind)
    x, bias = f32(2, 6, 20), f32(8)
    ours = run_op("Conv", [x, encoded, bias], attrs)[0]
    node = helper.make_node("Conv", ["in0", "in1", "in2"], ["out0"], **attrs)
    ref = ort_outputs([node], [x, dense_weight, bias], [np.dtype(np.float32)], 17)[0]
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", ["csr", "bsr"])
@pytest.mark.parametrize("op,attrs,a_shape,w_shape", [
    ("MatMul", {}, (5, 8), (8, 12)), ("MatMul", {}, (2, 3, 8), (8, 4)),
    ("Gemm", {"transB": 1}, (5, 8), (12, 8)), ("Gemm", {"alpha": 0.5}, (5, 8), (8, 12)),
], ids=str)
def test_matmul_and_gemm_with_encoded_weights(kind, op, attrs, a_shape, w_shape):
    """Gemm with transB runs the sparse kernel, the other cases the decoded weight; both equal dense ONNX."""
    dense_weight, encoded = sparse_weight(w_shape, kind)
    a = f32(*a_shape)
    ours = run_op(op, [a, encoded], attrs)[0]
    node = helper.make_node(op, ["in0", "in1"], ["out0"], **attrs)
    ref = ort_outputs([node], [a, dense_weight], [np.dtype(np.float32)], 17)[0]
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-5)


def test_conv_errors_name_the_problem():
    with pytest.raises(GraphError, match="only 1-D convolution"):
        run_op("Conv", [f32(1, 2, 4, 4, 4), f32(3, 2, 3, 3, 3)], {})
    with pytest.raises(GraphError, match="2-D convolution needs input"):
        run_op("Conv", [f32(1, 2, 4), f32(3, 2, 3, 3)], {})
    with pytest.raises(GraphError, match="fused residual input Z is supported for 1-D"):
        run_op("Conv", [f32(1, 2, 4, 4), f32(3, 2, 3, 3), None, f32(1, 3, 2, 2)], {})
    with pytest.raises(GraphError, match="pads .* must be \\[top, left, bottom, right\\]"):
        run_op("Conv", [f32(1, 2, 4, 4), f32(3, 2, 3, 3)], {"pads": [1, 1]})
    with pytest.raises(GraphError, match="does not fit input X with 2 channels"):
        run_op("Conv", [f32(1, 2, 4, 4), f32(4, 2, 3, 3)], {"group": 2})
    with pytest.raises(GraphError, match="does not fit input X with 4 channels"):
        run_op("Conv", [f32(1, 4, 8), f32(3, 2, 3)], {})
    with pytest.raises(GraphError, match="too short"):
        run_op("Conv", [f32(1, 2, 2), f32(3, 2, 5)], {})
    with pytest.raises(GraphError, match="unknown activation 'Gelu'"):
        run_op("Conv", [f32(1, 2, 8), f32(3, 2, 3)], {"activation": "Gelu"})
    with pytest.raises(GraphError, match="residual has shape"):
        run_op("Conv", [f32(1, 2, 8), f32(3, 2, 3), f32(3), f32(1, 3, 8)], {})


# ----------------------------------------------------------------------------- recurrent (more cases vs torch:
# tests/test_recurrent.py)

RECURRENT_CASES = [  # (direction, layout, batch, with_lengths, with_states, extra attrs); onnxruntime has no layout 1
    ("forward", 0, 1, False, False, {}), ("reverse", 0, 3, True, True, {}),
    ("bidirectional", 0, 2, True, True, {}), ("forward", 0, 2, False, True, {}),
    ("bidirectional", 0, 3, False, False, {"clip": 0.5}),
]


def _recurrent_inputs(op, direction, layout, batch, with_lengths, with_states, steps=6, features=5, hidden=4):
    gates = {"LSTM": 4, "GRU": 3}[op]
    nd = 2 if direction == "bidirectional" else 1
    x = f32(batch, steps, features) if layout else f32(steps, batch, features)
    state_shape = (batch, nd, hidden) if layout else (nd, batch, hidden)
    lengths = RNG.integers(0, steps + 1, batch).astype(np.int32) if with_lengths else None
    inputs = [x, f32(nd, gates * hidden, features, low=-0.7, high=0.7),
              f32(nd, gates * hidden, hidden, low=-0.7, high=0.7), f32(nd, 2 * gates * hidden, low=-0.5, high=0.5),
              lengths, f32(*state_shape) if with_states else None]
    if op == "LSTM":
        inputs.append(f32(*state_shape) if with_states else None)
    return inputs, {"hidden_size": hidden, "direction": direction, "layout": layout}


@pytest.mark.parametrize("direction,layout,batch,with_lengths,with_states,extra", RECURRENT_CASES)
def test_lstm(direction, layout, batch, with_lengths, with_states, extra):
    inputs, attrs = _recurrent_inputs("LSTM", direction, layout, batch, with_lengths, with_states)
    check_against_ort("LSTM", inputs, {**attrs, **extra}, num_outputs=3, rtol=1e-5, atol=2e-6)


def test_lstm_with_peepholes():
    inputs, attrs = _recurrent_inputs("LSTM", "bidirectional", 0, 2, True, True)
    check_against_ort("LSTM", inputs + [f32(2, 12, low=-0.5, high=0.5)], attrs, num_outputs=3, atol=2e-6)


@pytest.mark.parametrize("linear_before_reset", [0, 1])
@pytest.mark.parametrize("direction,layout,batch,with_lengths,with_states,extra", RECURRENT_CASES)
def test_gru(direction, layout, batch, with_lengths, with_states, extra, linear_before_reset):
    inputs, attrs = _recurrent_inputs("GRU", direction, layout, batch, with_lengths, with_states)
    attrs = {**attrs, **extra, "linear_before_reset": linear_before_reset}
    check_against_ort("GRU", inputs, attrs, num_outputs=2, rtol=1e-5, atol=2e-6)


def _rel_shift_softmax_nodes(batch, heads, frames, scale, masked):
    """NeMo's export of the attention weights: rel_shift by Pad / Reshape / Slice, then Add, Div, Where, Softmax,
    Where (in0 content, in1 position, in2 keep)."""
    def const(name, value):
        return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(np.asarray(value)))

    return [
        const("pads", i64(0, 0, 0, 1, 0, 0, 0, 0)), const("tall", i64(batch, heads, 2 * frames, frames)),
        const("wide", i64(batch, heads, frames, 2 * frames - 1)), const("one", i64(1)), const("big", i64(INT64_MAX)),
        const("zero", i64(0)), const("t", i64(frames)), const("ax2", i64(2)), const("ax3", i64(3)),
        const("scale", np.float32(scale)), const("masked", np.float32(masked)), const("nil", np.float32(0)),
        helper.make_node("Pad", ["in1", "pads"], ["p"]), helper.make_node("Reshape", ["p", "tall"], ["r"]),
        helper.make_node("Slice", ["r", "one", "big", "ax2"], ["s"]), helper.make_node("Reshape", ["s", "wide"], ["w"]),
        helper.make_node("Slice", ["w", "zero", "t", "ax3"], ["bd"]), helper.make_node("Add", ["in0", "bd"], ["sum"]),
        helper.make_node("Div", ["sum", "scale"], ["scores"]),
        helper.make_node("Where", ["in2", "scores", "masked"], ["kept"]),
        helper.make_node("Softmax", ["kept"], ["soft"], axis=-1),
        helper.make_node("Where", ["in2", "soft", "nil"], ["out0"]),
    ]


@pytest.mark.parametrize("batch, heads, frames, position_batch, lengths", [
    (1, 4, 7, 1, None), (2, 3, 9, 1, (9, 4)), (2, 2, 5, 2, (1, 5)), (1, 1, 1, 1, (1,))])
def test_rel_position_softmax(batch, heads, frames, position_batch, lengths):
    """tinyasr's fused attention weights equal NeMo's exported subgraph (position batch 1 broadcasts)."""
    content = f32(batch, heads, frames, frames)
    position = f32(position_batch, heads, frames, 2 * frames - 1)
    valid = np.arange(frames)[None, :] < np.array(lengths or (frames,) * batch)[:, None]
    keep = (valid[:, None, :] & valid[:, :, None])[:, None]
    attrs = {"scale": 4.690416, "masked_value": -10000.0}
    ours = run_op("RelPositionSoftmax", [content, position] + ([keep] if lengths else []), attrs)[0]
    full = np.broadcast_to(position, (batch,) + position.shape[1:]).copy()
    nodes = _rel_shift_softmax_nodes(batch, heads, frames, attrs["scale"], attrs["masked_value"])
    ref = ort_outputs(nodes, [content, full, keep], [np.dtype(np.float32)], 17)[0]
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("x", [f32(3, 5, 176, low=-30, high=30), f32(7), f32(2, 3, 4)[:, ::2],
                               np.array([-100, -88.5, -20, 0, 30, 88.5, 100, np.inf], np.float32),
                               f32(2, 6).astype(np.float64)], ids=["ffn", "short", "strided", "extremes", "float64"])
def test_swish(x):
    """tinyasr's Swish (converters/passes.fuse_swish) against the Sigmoid -> Mul pair onnxruntime runs (whose
    sigmoid is an approximation a few 1e-7 off in the tails), and to an ulp or two against float64."""
    ours = run_op("Swish", [x], {})[0]
    nodes = [helper.make_node("Sigmoid", ["in0"], ["gate"]), helper.make_node("Mul", ["in0", "gate"], ["out0"])]
    ref = ort_outputs(nodes, [x], [x.dtype], 17)[0]
    assert ours.dtype == x.dtype and ours.shape == x.shape
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-5)
    with np.errstate(over="ignore", invalid="ignore"):
        wide = x.astype(np.float64)
        exact = wide / (1 + np.exp(-wide))
    np.testing.assert_allclose(ours, exact.astype(x.dtype), rtol=3e-7, atol=1e-35)  # exp32 is inf past 88.37


@pytest.mark.parametrize("in_kernel", [True, False], ids=["kernel", "blas"])
@pytest.mark.parametrize("batch, heads, frames, depth, query_batch, keys_batch, lengths", [
    (1, 4, 7, 22, 1, 1, None), (2, 3, 9, 5, 2, 1, (9, 4)), (2, 2, 5, 8, 1, 2, (1, 5)), (1, 1, 1, 3, 1, 1, (1,)),
    (1, 2, 37, 6, 1, 1, None)])
def test_rel_position_softmax_from_the_position_product(in_kernel, batch, heads, frames, depth, query_batch,
                                                        keys_batch, lengths):
    """With position_product the op takes (q + v) and p^T and computes only the rel-shifted scores (or BLAS's whole
    product, where that measured faster): equal to the MatMul onnxruntime runs followed by NeMo's exported subgraph
    (query and keys given as non-contiguous views, as the graph's Transposes hand them over)."""
    import tinyasr.ops.attention as op_module

    content = f32(batch, heads, frames, frames)
    query = f32(query_batch, frames, heads, depth).transpose(0, 2, 1, 3)
    keys = f32(keys_batch, 2 * frames - 1, heads, depth).transpose(0, 2, 3, 1)
    valid = np.arange(frames)[None, :] < np.array(lengths or (frames,) * batch)[:, None]
    keep = (valid[:, None, :] & valid[:, :, None])[:, None]
    attrs = {"scale": 4.690416, "masked_value": -10000.0}
    chosen = op_module.product_in_kernel  # the CPU's choice, set aside (not a fixture: test_op_coverage calls this)
    op_module.product_in_kernel = lambda frames: in_kernel
    try:
        ours = run_op("RelPositionSoftmax", [content, query, keys] + ([keep] if lengths else []),
                      {**attrs, "position_product": 1})[0]
    finally:
        op_module.product_in_kernel = chosen
    nodes = [helper.make_node("MatMul", ["in1", "in3"], ["position"])]  # in1 (q + v), in3 p^T
    for node in _rel_shift_softmax_nodes(batch, heads, frames, attrs["scale"], attrs["masked_value"]):
        node.input[:] = ["position" if name == "in1" else name for name in node.input]
        nodes.append(node)
    full_query = np.ascontiguousarray(np.broadcast_to(query, (batch,) + query.shape[1:]))
    ref = ort_outputs(nodes, [content, full_query, keep, np.ascontiguousarray(keys)], [np.dtype(np.float32)], 17)[0]
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("shape, axis", [((2, 12, 7), 1), ((1, 4, 176), 1), ((3, 10), -1), ((2, 6, 5), 0)], ids=str)
def test_glu(shape, axis):
    """tinyasr's Glu (converters/passes.fuse_glu) against the Split -> Sigmoid -> Mul subgraph it replaces."""
    x = f32(*shape, low=-12, high=12)
    ours = run_op("Glu", [x], {"axis": axis})[0]
    nodes = [helper.make_node("Split", ["in0"], ["value", "gate"], axis=axis, num_outputs=2),
             helper.make_node("Sigmoid", ["gate"], ["sigmoid"]),
             helper.make_node("Mul", ["value", "sigmoid"], ["out0"])]
    ref = ort_outputs(nodes, [x], [np.dtype(np.float32)], 18)[0]
    assert ours.shape == ref.shape
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("activation", ["", "Relu"])
@pytest.mark.parametrize("hidden", ["Relu", "Swish", ""])
@pytest.mark.parametrize("kind, mask_batch", [("padded", 2), ("padded", 1), ("valid", 2), ("valid", 1)])
def test_squeeze_excite(kind, mask_batch, hidden, activation):
    """tinyasr's SqueezeExcite (converters/passes.fuse_squeeze_excite) against the subgraph NeMo's ONNX export
    writes (Where on the padding, the count through Not and Casts) or tinyasr's .nemo builder (Mul by a 0 / 1
    mask), on two utterances, the second padded, with the mask per utterance or one for both."""
    batch, channels, frames, squeezed = 2, 20, 37, 5
    x, w1, w2 = f32(batch, channels, frames), f32(channels, squeezed), f32(squeezed, channels)
    valid = np.ones((mask_batch, 1, frames), bool)
    valid[-1, :, 29:] = False
    mask = ~valid if kind == "padded" else valid.astype(np.float32)
    attrs = {"mask": kind, "hidden_activation": hidden, "activation": activation}
    ours = run_op("SqueezeExcite", [x, mask, w1, w2], attrs)[0]

    def const(name, value):
        return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(np.asarray(value)))

    nodes = [const("axes", np.array([2], np.int64))]
    if kind == "padded":
        nodes += [const("zero", np.float32(0)), helper.make_node("Where", ["in1", "zero", "in0"], ["masked"]),
                  helper.make_node("Not", ["in1"], ["kept"]), helper.make_node("Cast", ["kept"], ["ones"], to=7),
                  helper.make_node("ReduceSum", ["ones", "axes"], ["frames"], keepdims=1),
                  helper.make_node("Cast", ["frames"], ["count"], to=1)]
    else:
        nodes += [helper.make_node("Mul", ["in0", "in1"], ["masked"]),
                  helper.make_node("ReduceSum", ["in1", "axes"], ["count"], keepdims=1)]
    nodes += [helper.make_node("ReduceSum", ["masked", "axes"], ["total"], keepdims=1),
              helper.make_node("Div", ["total", "count"], ["mean"]),
              helper.make_node("Transpose", ["mean"], ["across"], perm=[0, 2, 1]),
              helper.make_node("MatMul", ["across", "in2"], ["product" if hidden else "hidden"])]
    if hidden == "Relu":
        nodes.append(helper.make_node("Relu", ["product"], ["hidden"]))
    elif hidden == "Swish":
        nodes += [helper.make_node("Sigmoid", ["product"], ["half"]),
                  helper.make_node("Mul", ["product", "half"], ["hidden"])]
    nodes += [helper.make_node("MatMul", ["hidden", "in3"], ["excited"]),
              helper.make_node("Transpose", ["excited"], ["back"], perm=[0, 2, 1]),
              helper.make_node("Sigmoid", ["back"], ["gate"]),
              helper.make_node("Mul", ["masked", "gate"], ["scaled" if activation else "out0"])]
    if activation:
        nodes.append(helper.make_node("Relu", ["scaled"], ["out0"]))
    ref = ort_outputs(nodes, [x, mask, w1, w2], [np.dtype(np.float32)], 17)[0]
    assert ours.shape == ref.shape
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-6)


def test_squeeze_excite_names_what_does_not_fit():
    x, w1, w2 = f32(1, 6, 9), f32(6, 2), f32(2, 6)
    padded = np.zeros((1, 1, 9), bool)
    with pytest.raises(GraphError, match=r"mask M must be bool \[1 or 1, 1, 9\].*float32 \(1, 1, 9\)"):
        run_op("SqueezeExcite", [x, padded.astype(np.float32), w1, w2], {"mask": "padded"})
    with pytest.raises(GraphError, match=r"W1 \[C, H\] and W2 \[H, C\] float32 with C = 6"):
        run_op("SqueezeExcite", [x, padded, w2, w1], {"mask": "padded"})
    with pytest.raises(GraphError, match="unknown mask 'both'"):
        run_op("SqueezeExcite", [x, padded, w1, w2], {"mask": "both"})


@pytest.mark.parametrize("activation", ["", "Relu", "Swish"])
@pytest.mark.parametrize("a_shape", [(7, 5), (2, 9, 5), (5,)], ids=str)
def test_linear(a_shape, activation):
    """tinyasr's Linear (converters/passes.fuse_matmul_epilogues) against MatMul -> Add -> activation."""
    a, w, c = f32(*a_shape, low=-3, high=3), f32(5, 6), f32(6)
    ours = run_op("Linear", [a, w, c], {"activation": activation} if activation else {})[0]
    nodes = [helper.make_node("MatMul", ["in0", "in1"], ["product"]),
             helper.make_node("Add", ["product", "in2"], ["linear" if activation else "out0"])]
    if activation == "Relu":
        nodes.append(helper.make_node("Relu", ["linear"], ["out0"]))
    elif activation == "Swish":
        nodes += [helper.make_node("Sigmoid", ["linear"], ["gate"]), helper.make_node("Mul", ["linear", "gate"],
                                                                                         ["out0"])]
    ref = ort_outputs(nodes, [a, w, c], [np.dtype(np.float32)], 17)[0]
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("activation", ["", "Swish"])
@pytest.mark.parametrize("z_shape", [(2, 9, 6), (9, 6), (6,), (3, 2, 9, 6)], ids=str)
def test_linear_with_a_residual(z_shape, activation):
    """Linear's optional Z (converters/passes.fuse_linear_residuals) against MatMul -> Add -> activation -> Add(Z):
    of the product's shape (the fused pass), broadcast up to it, and broadcasting the product up."""
    a, w, c, z = f32(2, 9, 5, low=-3, high=3), f32(5, 6), f32(6), f32(*z_shape)
    ours = run_op("Linear", [a, w, c, z], {"activation": activation} if activation else {})[0]
    nodes = [helper.make_node("MatMul", ["in0", "in1"], ["product"]),
             helper.make_node("Add", ["product", "in2"], ["linear"])]
    if activation == "Swish":
        nodes += [helper.make_node("Sigmoid", ["linear"], ["gate"]), helper.make_node("Mul", ["linear", "gate"],
                                                                                         ["activated"])]
    nodes.append(helper.make_node("Add", ["activated" if activation else "linear", "in3"], ["out0"]))
    ref = ort_outputs(nodes, [a, w, c, z], [np.dtype(np.float32)], 17)[0]
    assert ours.shape == ref.shape
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-6)


def test_linear_names_a_bad_bias_and_activation():
    with pytest.raises(GraphError, match="bias C must be float32 with 6 values"):
        run_op("Linear", [f32(3, 5), f32(5, 6), f32(5)], {})
    with pytest.raises(GraphError, match="unknown activation 'Tanh'"):
        run_op("Linear", [f32(3, 5), f32(5, 6), f32(6)], {"activation": "Tanh"})
    with pytest.raises(GraphError, match="does not broadcast"):
        run_op("Linear", [f32(3, 5), f32(5, 6), f32(6), f32(4, 6)], {})
    with pytest.raises(GraphError, match="residual Z must be float32"):
        run_op("Linear", [f32(3, 5), f32(5, 6), f32(6), np.zeros((3, 6), np.int64)], {})


def test_glu_names_an_odd_axis():
    with pytest.raises(GraphError, match="even length along axis 1"):
        run_op("Glu", [f32(1, 5, 3)], {"axis": 1})


def test_rel_position_softmax_names_bad_shapes():
    with pytest.raises(GraphError, match=r"position must be \[1 or 1, 2, 3, 5\]"):
        run_op("RelPositionSoftmax", [f32(1, 2, 3, 3), f32(1, 2, 3, 4)], {"scale": 1.0})
    with pytest.raises(GraphError, match="keep must be bool"):
        run_op("RelPositionSoftmax", [f32(1, 2, 3, 3), f32(1, 2, 3, 5), f32(1, 1, 3, 3)], {"scale": 1.0})
    with pytest.raises(GraphError, match="scale must be > 0"):
        run_op("RelPositionSoftmax", [f32(1, 2, 3, 3), f32(1, 2, 3, 5)], {"scale": 0.0})
    with pytest.raises(GraphError, match=r"keys must be \[1 or 1, 2, 4, 5\]"):
        run_op("RelPositionSoftmax", [f32(1, 2, 3, 3), f32(1, 2, 3, 4), f32(1, 2, 4, 4)],
               {"scale": 1.0, "position_product": 1})
    with pytest.raises(GraphError, match="query must be"):
        run_op("RelPositionSoftmax", [f32(1, 2, 3, 3), f32(1, 3, 3, 4), f32(1, 2, 4, 5)],
               {"scale": 1.0, "position_product": 1})


# ----------------------------------------------------------------------------- shape and data movement

def test_shape_and_size():
    x = f32(2, 3, 4, 5)
    check_against_ort("Shape", [x])
    for attrs in ({"start": 1}, {"start": 1, "end": -1}, {"start": -2}, {"end": 10}, {"start": -10, "end": 2}):
        check_against_ort("Shape", [x], attrs, opset=15)
    check_against_ort("Size", [x])
    check_against_ort("Size", [np.array(1.5, np.float32)])
    check_against_ort("Size", [i64(1, 2, 3)[:0].reshape(3, 0)])


@pytest.mark.parametrize("shape", [(0, -1), (4, 0, 2), (-1,), (2, 3, 2, 2), (0, 0, 4)], ids=str)
def test_reshape(shape):
    check_against_ort("Reshape", [f32(2, 3, 4), i64(*shape)])


def test_reshape_allowzero_and_errors():
    check_against_ort("Reshape", [f32(0, 4), i64(4, 0)], {"allowzero": 1}, opset=14)
    with pytest.raises(GraphError, match=r"cannot reshape a tensor of shape \(2, 3\) to \[4, -1\]"):
        run_op("Reshape", [f32(2, 3), i64(4, -1)], {})


def test_flatten():
    for axis in (0, 1, 2, -1, 3):
        check_against_ort("Flatten", [f32(2, 3, 4)], {"axis": axis})


def test_transpose():
    check_against_ort("Transpose", [f32(2, 3, 4)], {"perm": [0, 2, 1]})
    check_against_ort("Transpose", [f32(2, 3, 4)])


def test_squeeze_unsqueeze():
    x = f32(1, 3, 1, 4)
    check_against_ort("Squeeze", [x, i64(-2)])
    check_against_ort("Squeeze", [x, i64(0, 2)])
    check_against_ort("Squeeze", [x])
    check_against_ort("Squeeze", [x], {"axes": [0]}, opset=11)
    check_against_ort("Unsqueeze", [f32(3, 4), i64(0, -1)])
    check_against_ort("Unsqueeze", [f32(3, 4), i64(1, 3)])
    check_against_ort("Unsqueeze", [np.array(2.0, np.float32), i64(0)])
    check_against_ort("Unsqueeze", [f32(3, 4)], {"axes": [-1]}, opset=11)
    with pytest.raises(GraphError, match="Squeeze: axis 1"):
        run_op("Squeeze", [x, i64(1)], {})


def test_concat():
    check_against_ort("Concat", [f32(2, 3, 4), f32(2, 1, 4), f32(2, 0, 4)], {"axis": 1})
    check_against_ort("Concat", [i64(1, 2), i64(3)], {"axis": -1})
    with pytest.raises(GraphError, match="do not match"):
        run_op("Concat", [f32(2, 3), f32(3, 3)], {"axis": 1})


def test_split():
    x = f32(2, 6, 3)
    check_against_ort("Split", [x, i64(1, 2, 3)], {"axis": 1}, num_outputs=3)
    check_against_ort("Split", [x], {"axis": -2}, num_outputs=2)
    check_against_ort("Split", [f32(7, 2)], {"num_outputs": 3}, opset=18, num_outputs=3)
    check_against_ort("Split", [x], {"axis": 1, "split": [4, 2]}, opset=11, num_outputs=2)


SLICE_CASES = [
    (i64(1), i64(3), None, None),
    (i64(0, 1), i64(INT64_MAX, -1), i64(0, 2), None),
    (i64(-1), i64(INT64_MIN), i64(1), i64(-1)),  # full reverse
    (i64(10), i64(-100), i64(-1), i64(-2)),  # clamped start, negative step
    (i64(-3, 0), i64(-1, 100), i64(-1, 0), i64(1, 2)),
    (i64(2), i64(1), i64(1), None),  # empty
    (i64(-100), i64(100), i64(2), i64(3)),
]


@pytest.mark.parametrize("starts,ends,axes,steps", SLICE_CASES)
def test_slice(starts, ends, axes, steps):
    check_against_ort("Slice", [f32(4, 5, 6), starts, ends, axes, steps])


def test_gather():
    data = f32(3, 4, 5)
    check_against_ort("Gather", [data, i64(0, -1, 2)], {"axis": 1})
    check_against_ort("Gather", [data, i64(2, 0, -3, 1).reshape(2, 2)], {"axis": -1})
    check_against_ort("Gather", [i64(7, 8, 9), np.array(-1, np.int64)])
    check_against_ort("Gather", [data, np.array([1, 0], np.int32)])
    with pytest.raises(GraphError, match="Gather: indices outside"):
        run_op("Gather", [data, i64(3)], {})


def test_expand_tile():
    check_against_ort("Expand", [f32(3, 1), i64(2, 1, 6)])
    check_against_ort("Expand", [f32(2, 3), i64(3)])
    check_against_ort("Tile", [f32(2, 3), i64(2, 1)])
    check_against_ort("Tile", [f32(2, 1, 3), i64(1, 4, 2)])
    check_against_ort("Tile", [i64(5, -1), i64(3)])


def test_range():
    check_against_ort("Range", [np.array(1, np.int64), np.array(10, np.int64), np.array(3, np.int64)])
    check_against_ort("Range", [np.array(5, np.int64), np.array(-2, np.int64), np.array(-2, np.int64)])
    check_against_ort("Range", [np.array(0.5, np.float32), np.array(2.0, np.float32), np.array(0.25, np.float32)])
    check_against_ort("Range", [np.array(3, np.int64), np.array(1, np.int64), np.array(1, np.int64)])


def test_constant_of_shape():
    shape = i64(2, 3)
    check_against_ort("ConstantOfShape", [shape])
    for value, tensor in ((1.5, np.array([1.5], np.float32)), (7, np.array([7], np.int64)),
                          ({"dtype": "int32", "value": -2}, np.array([-2], np.int32)),
                          (True, np.array([True]))):
        check_against_ort("ConstantOfShape", [shape], {"value": value},
                          onnx_attrs={"value": numpy_helper.from_array(tensor)})


@pytest.mark.parametrize("to,x", [(7, f32(3, 4)), (6, np.array([-2.7, -0.5, 0.5, 2.7], np.float32)),
                                  (1, i64(-3, 5)), (9, np.array([0.0, -1.5, 2.0], np.float32)),
                                  (1, np.array([True, False])), (11, f32(3)), (10, f32(3)), (1, f32(2))])
def test_cast(to, x):
    check_against_ort("Cast", [x], {"to": to})


def test_pad():
    x = f32(2, 3, 5)
    check_against_ort("Pad", [x, i64(0, 1, 2, 0, 0, 3)])
    check_against_ort("Pad", [x, i64(0, 0, 2, 0, 0, 1), np.array(-7.0, np.float32)])
    check_against_ort("Pad", [x, i64(0, 0, -1, 0, 1, 2)])
    for mode in ("reflect", "edge", "wrap"):
        check_against_ort("Pad", [x, i64(0, 0, 2, 0, 1, 3)], {"mode": mode}, opset=19)
    check_against_ort("Pad", [x, i64(1, 2), None, i64(-1)], opset=18)
    check_against_ort("Pad", [i64(1, 2, 3).reshape(1, 3), i64(0, 1, 0, 0)])


# ----------------------------------------------------------------------------- registry

def test_unknown_op_lists_the_supported_ones():
    with pytest.raises(GraphError) as info:
        run_op("FancyAttention", [f32(2)], {})
    assert "'FancyAttention' is not supported" in str(info.value)
    assert "Conv" in str(info.value) and "LogSoftmax" in str(info.value)


def test_supported_ops_is_sorted_and_covers_the_speech_models():
    assert SUPPORTED_OPS == sorted(SUPPORTED_OPS)
    assert {"Conv", "Relu", "Add", "LogSoftmax", "Transpose", "Where", "LayerNormalization"} <= set(SUPPORTED_OPS)


def test_ops_do_not_write_into_their_inputs():
    x = f32(2, 3)
    x.setflags(write=False)
    for op in ("Relu", "Sigmoid", "Softmax", "LogSoftmax", "Tanh"):
        run_op(op, [x], {})
    run_op("Add", [x, x], {})


class DonatingContext(OpContext):
    """Hands an op the first listed donor input of the right shape and dtype, as the runtime may."""

    def __init__(self, inputs):
        super().__init__()
        self.inputs = inputs

    def output(self, shape, dtype=np.float32, donors=()):
        for i in donors:
            x = self.inputs[i]
            if x is not None and x.shape == tuple(shape) and x.dtype == np.dtype(dtype):
                return x
        return np.empty(shape, dtype)


DONATION_CASES = [
    ("Relu", [f32(3, 4)], {}), ("LeakyRelu", [f32(3, 4)], {}), ("Sigmoid", [f32(3, 4)], {}),
    ("Tanh", [f32(3, 4)], {}), ("Softplus", [f32(3, 4)], {}), ("Erf", [f32(3, 4)], {}),
    ("Clip", [f32(3, 4), np.array(-1, np.float32), None], {}), ("Sub", [f32(3, 4), f32(4)], {}),
    ("Sub", [f32(4), f32(3, 4)], {}), ("Div", [f32(3, 4), f32(3, 4)], {}), ("Pow", [f32(3, 4, low=0.1), f32(3, 4)], {}),
    ("Where", [RNG.random((3, 4)) > 0.5, f32(3, 4), f32(3, 4)], {}), ("Softmax", [f32(3, 4)], {"axis": 0}),
    ("LogSoftmax", [f32(3, 4)], {}), ("LayerNormalization", [f32(3, 4), f32(4), f32(4)], {}),
    ("BatchNormalization", [f32(2, 3, 4), f32(3), f32(3), f32(3), f32(3, low=0.1)], {}),
]


@pytest.mark.parametrize("op,inputs,attrs", DONATION_CASES, ids=[c[0] for c in DONATION_CASES])
def test_ops_give_the_same_result_when_writing_over_a_donated_input(op, inputs, attrs):
    expected = run_op(op, inputs, attrs)[0]
    donated = [None if x is None else x.copy() for x in inputs]
    got = lookup(op)(DonatingContext(donated), donated, attrs)[0]
    assert any(got is x for x in donated)  # the op did accept the donation
    np.testing.assert_array_equal(got, expected)
