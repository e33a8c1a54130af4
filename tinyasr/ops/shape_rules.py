"""How each op's output shape comes about, for the offline schedule's signature values (engine/planner.py):
from its input shapes and attributes alone, or also from the values of some inputs (a Reshape's target, a
Range's limits).  An op in neither table counts as depending on every input value, so a new op is never
wrongly kept between runs; tests/test_signature_values.py asks that every registered op is classified."""

from __future__ import annotations

from typing import Optional

SHAPES_FROM_SHAPES = frozenset({
    "Abs", "Add", "And", "ArgMax", "ArgMin", "BatchNormalization", "Cast", "Ceil", "Clip", "Concat", "Conv", "Cos",
    "CumSum", "Div", "Dropout", "Equal", "Erf", "Exp", "Flatten", "Floor", "GRU", "Gather", "Gemm",
    "GlobalAveragePool", "GlobalMaxPool", "Glu", "Greater", "GreaterOrEqual", "Identity", "InstanceNormalization",
    "IsNaN", "LSTM", "LayerNormalization", "LeakyRelu", "Less", "LessOrEqual", "Linear", "Log", "LogSoftmax", "MatMul",
    "Max",
    "Min", "Mod", "Mul", "Neg", "Not", "Or", "Pow", "Reciprocal", "RelPositionSoftmax", "Relu", "Round",
    "ScatterND", "Shape", "Sigmoid", "Sin", "Size", "Softmax", "Softplus", "Sqrt", "SqueezeExcite", "Sub", "Swish",
    "Tanh",
    "Transpose", "Where", "Xor",
})
# op -> the first input whose value (not only its shape) gives the output shape (0: every input)
SHAPES_FROM_VALUES = {"Reshape": 1, "Expand": 1, "Tile": 1, "Slice": 1, "Pad": 1, "Split": 1, "Squeeze": 1,
                      "Unsqueeze": 1, "ReduceMax": 1, "ReduceMean": 1, "ReduceMin": 1, "ReduceProd": 1,
                      "ReduceSum": 1, "Range": 0, "ConstantOfShape": 0}
SHAPE_READERS = frozenset({"Shape", "Size"})  # outputs that depend on the input's shape only, not its values
ALL_INPUTS = 1 << 16  # more inputs than any node has: no input gives the shape by its value


def shape_giving_inputs(op: str) -> Optional[int]:
    """The first input whose value gives ``op``'s output shape (ALL_INPUTS: none), or None if unknown."""
    if op in SHAPES_FROM_SHAPES:
        return ALL_INPUTS
    return SHAPES_FROM_VALUES.get(op)


def reads_shape_only(op: str) -> bool:
    return op in SHAPE_READERS
