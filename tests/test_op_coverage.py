"""Every registered op is compared against onnxruntime: a new op without a case fails here.

ORT_CASES is the explicit map op -> the tests in tests/test_ops.py that compare it.  The map is not
taken on trust: the tests of test_ops.py run again here with recorders around tinyasr's ``run_op`` and
the onnxruntime runner, and each op must have been run by tinyasr and then by onnxruntime (in a
one-node model, or for tinyasr's extensions in the equivalent unfused subgraph) at least MIN_CASES
times within the tests listed for it.
"""

from __future__ import annotations

import collections
import inspect
import itertools

import numpy as np
import pytest

import test_ops
from tinyasr.ops import SUPPORTED_OPS

MIN_CASES = 2  # several shapes or attributes per op, not one lucky example

_ARITHMETIC = ("test_arithmetic_float_broadcasting", "test_arithmetic_int64_stays_int64")
_REDUCTIONS = ("test_reductions_axes_attribute", "test_reductions_axes_input")
_SOFTMAX = ("test_softmax", "test_softmax_default_axis")

ORT_CASES = {
    **{op: ("test_unary",) for op in ("Abs", "Ceil", "Cos", "Erf", "Exp", "Floor", "Identity", "Log", "Neg", "Not",
                                      "Reciprocal", "Relu", "Round", "Sigmoid", "Sin", "Softplus", "Sqrt", "Tanh")},
    "LeakyRelu": ("test_leaky_relu",),
    "Clip": ("test_clip_bounds_as_inputs_attributes_and_one_sided",),
    "Dropout": ("test_dropout_is_identity_with_a_true_mask",),
    **{op: _ARITHMETIC for op in ("Add", "Sub", "Mul", "Div")},
    "Pow": ("test_pow",),
    **{op: ("test_comparisons",) for op in ("Less", "LessOrEqual", "Greater", "GreaterOrEqual", "Equal")},
    **{op: ("test_logic",) for op in ("And", "Or", "Xor")},
    "Where": ("test_where_broadcasts",),
    **{op: ("test_variadic_max_min",) for op in ("Max", "Min")},
    "ReduceMean": _REDUCTIONS,
    "ReduceMax": _REDUCTIONS,
    "ReduceMin": ("test_reductions_axes_attribute",),
    "ReduceProd": ("test_reductions_axes_attribute",),
    "ReduceSum": ("test_reductions_axes_input", "test_reduce_sum_opset13_and_int64"),
    **{op: ("test_arg_reductions",) for op in ("ArgMax", "ArgMin")},
    "Softmax": _SOFTMAX,
    "LogSoftmax": _SOFTMAX,
    **{op: ("test_global_pool",) for op in ("GlobalAveragePool", "GlobalMaxPool")},
    "MatMul": ("test_matmul", "test_matmul_and_gemm_with_encoded_weights"),
    "Gemm": ("test_gemm", "test_matmul_and_gemm_with_encoded_weights"),
    "LayerNormalization": ("test_layer_normalization",),
    "BatchNormalization": ("test_batch_normalization",),
    "InstanceNormalization": ("test_instance_normalization",),
    "CumSum": ("test_cumsum",),
    "ScatterND": ("test_scatter_nd",),
    "Mod": ("test_mod",),
    "IsNaN": ("test_is_nan",),
    # Conv is extended (fused residual and activation): compared with ONNX Conv -> Add -> activation.
    "Conv": ("test_conv", "test_conv_fused_residual_and_activation", "test_conv_with_encoded_weights",
             "test_conv2d_fused_activation"),
    **{op: ("test_shape_and_size",) for op in ("Shape", "Size")},
    "Reshape": ("test_reshape", "test_reshape_allowzero_and_errors"),
    "Flatten": ("test_flatten",),
    "Transpose": ("test_transpose",),
    **{op: ("test_squeeze_unsqueeze",) for op in ("Squeeze", "Unsqueeze")},
    "Concat": ("test_concat",),
    "Split": ("test_split",),
    "Slice": ("test_slice",),
    "Gather": ("test_gather",),
    **{op: ("test_expand_tile",) for op in ("Expand", "Tile")},
    "Range": ("test_range",),
    "ConstantOfShape": ("test_constant_of_shape",),
    "Cast": ("test_cast",),
    "Pad": ("test_pad",),
    "LSTM": ("test_lstm", "test_lstm_with_peepholes"),
    "GRU": ("test_gru",),
    # tinyasr's fused Conformer attention weights: compared with NeMo's exported subgraph, which ends in Softmax.
    "RelPositionSoftmax": ("test_rel_position_softmax", "test_rel_position_softmax_from_the_position_product"),
    # tinyasr's Swish: compared with the Sigmoid -> Mul pair it replaces; Glu with Split -> Sigmoid -> Mul; Linear
    # with MatMul -> Add -> activation; SqueezeExcite with the masked mean, MatMuls, Sigmoid and Mul.
    "Swish": ("test_swish",),
    "Glu": ("test_glu",),
    "Linear": ("test_linear",),
    "SqueezeExcite": ("test_squeeze_excite",),
}
# tinyasr ops with no ONNX op of their name -> the ONNX op their unfused reference subgraph runs
UNFUSED_REFERENCE = {"RelPositionSoftmax": "Softmax", "Swish": "Sigmoid", "Glu": "Split", "Linear": "MatMul",
                     "SqueezeExcite": "ReduceSum"}


def _calls(test):
    """One keyword dict per parametrized case of a test_ops test (the product of its parametrize marks)."""
    grids = []
    for mark in getattr(test, "pytestmark", []):
        if mark.name != "parametrize":
            continue
        names = mark.args[0]
        names = [n.strip() for n in names.split(",")] if isinstance(names, str) else list(names)
        grids.append([dict(zip(names, values if len(names) > 1 else (values,))) for values in mark.args[1]])
    for combination in itertools.product(*grids):
        kwargs = {key: value for part in combination for key, value in part.items()}
        missing = set(inspect.signature(test).parameters) - set(kwargs)
        assert not missing, f"{test.__name__} needs fixtures {missing}; this harness only fills parametrize arguments"
        yield kwargs


@pytest.fixture(scope="module")
def compared():
    """({op: {test name: onnxruntime comparisons of that op}}, {test name: its error}) from running every
    test_ops test; a failing test is reported by the ops that list it, not by all of them."""
    counts = collections.defaultdict(collections.Counter)
    failures = {}
    run_by_tinyasr = set()
    current = ""
    run_op, ort_outputs = test_ops.run_op, test_ops.ort_outputs

    def recording_run_op(op, *args, **kwargs):
        run_by_tinyasr.add(op)
        return run_op(op, *args, **kwargs)

    def recording_ort_outputs(nodes, *args, **kwargs):
        ran = {node.op_type for node in nodes}
        ran |= {op for op, reference in UNFUSED_REFERENCE.items() if reference in ran}
        for op in run_by_tinyasr & ran:
            counts[op][current] += 1
        run_by_tinyasr.clear()
        return ort_outputs(nodes, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(test_ops, "run_op", recording_run_op)
        patch.setattr(test_ops, "ort_outputs", recording_ort_outputs)
        patch.setattr(test_ops, "RNG", np.random.default_rng(0))  # leave test_ops' own random stream alone
        for name, test in vars(test_ops).items():
            if name.startswith("test_") and inspect.isfunction(test):
                for kwargs in _calls(test):
                    current = name
                    run_by_tinyasr.clear()
                    try:
                        test(**kwargs)
                    except (Exception, pytest.fail.Exception, pytest.skip.Exception) as error:  # test_ops tells more
                        failures.setdefault(name, f"{type(error).__name__}: {error}".splitlines()[0])
    return counts, failures


def test_the_case_table_names_exactly_the_registered_ops():
    missing = sorted(set(SUPPORTED_OPS) - set(ORT_CASES))
    stale = sorted(set(ORT_CASES) - set(SUPPORTED_OPS))
    assert not missing and not stale, (
        f"registered ops without an onnxruntime comparison: {missing} (add cases to tests/test_ops.py and list "
        f"their tests in ORT_CASES in tests/test_op_coverage.py); ORT_CASES entries for no registered op: {stale}")


@pytest.mark.parametrize("op", SUPPORTED_OPS)
def test_each_op_is_compared_against_onnxruntime_by_its_listed_tests(op, compared):
    counts, failures = compared
    listed = ORT_CASES.get(op, ())
    assert listed, f"{op} is registered but ORT_CASES in tests/test_op_coverage.py lists no test for it"
    for name in listed:
        assert name not in failures, f"{name}, which compares {op}, fails: {failures[name]}"
        assert counts[op][name], f"ORT_CASES says {name} compares {op}, but it never ran {op} against onnxruntime"
    total = sum(counts[op][name] for name in listed)
    assert total >= MIN_CASES, f"{op} has {total} onnxruntime comparison(s) in {listed}; need {MIN_CASES}"
