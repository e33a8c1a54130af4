"""The op library: ONNX-named ops as plain functions, found by name in one registry.

Every op has the signature ``fn(ctx, inputs, attrs) -> list[np.ndarray]``:
``inputs`` are arrays (``None`` for an omitted optional input), ``attrs`` the node's
JSON attributes.  Ops never write into their inputs; they ask ``ctx`` for output
buffers, which lets the runtime hand out planned buffers (and, for elementwise
ops, the buffer of an input that dies at this node).  The converter folds
constants with ``run_op`` over the very same functions, so folding and running
cannot disagree.  Each op also declares how it streams (tinyasr/ops/streaming_rules.py).
"""

from __future__ import annotations

from typing import Dict, List, Sequence

from tinyasr.ops.context import OpContext, OpFunction
from tinyasr.ops.registry import check_node_attrs, lookup, register, registered_ops, run_op, stream_rule

__all__ = ["ENCODED_WEIGHT_INPUTS", "MATRIX_WEIGHT_OPS", "SUPPORTED_OPS", "OpContext", "OpFunction", "check_node_attrs",
           "lookup", "register", "run_op", "stream_rule"]

# Where an op accepts a stored tensor in an encoding other than dense (CSR, BSR, int8, ternary):
# op -> input positions.  The runtime refuses an encoded tensor anywhere else at load, so no other op
# ever receives an object that is not an array.
ENCODED_WEIGHT_INPUTS: Dict[str, Sequence[int]] = {"Conv": (1,), "MatMul": (0, 1), "Linear": (1,), "Gemm": (0, 1),
                                                   "LSTM": (2,), "GRU": (2,)}
# The ops among them whose stored weight is a matrix product's, not a recurrent layer's: what a converter may store
# at reduced precision (float16), as an LSTM / GRU keeps R float32 like its W.
MATRIX_WEIGHT_OPS = ("Conv", "MatMul", "Linear", "Gemm")

# Importing the op modules fills the registry.
from tinyasr.ops import attention, conv, elementwise, indexing, nn, recurrent, reduce, shape  # noqa: E402,F401

SUPPORTED_OPS: List[str] = registered_ops()
