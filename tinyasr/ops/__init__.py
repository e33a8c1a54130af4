"""The op library: ONNX-named ops as plain functions, found by name in one registry.

Every op has the signature ``fn(ctx, inputs, attrs) -> list[np.ndarray]``:
``inputs`` are arrays (``None`` for an omitted optional input), ``attrs`` the node's
JSON attributes.  Ops never write into their inputs; they ask ``ctx`` for output
buffers, which lets the runtime hand out planned buffers (and, for elementwise
ops, the buffer of an input that dies at this node).  The converter folds
constants with ``run_op`` over the very same functions, so folding and running
cannot disagree.
"""

from __future__ import annotations

from typing import Callable, Dict, List, Optional, Sequence

import numpy as np

from tinyasr.errors import GraphError

OpFunction = Callable[["OpContext", List[Optional[np.ndarray]], dict], List[np.ndarray]]

_REGISTRY: Dict[str, OpFunction] = {}


class OpContext:
    """Where an op gets its output buffers.  This default hands out fresh arrays."""

    def __init__(self, num_outputs: int = 1):
        self.num_outputs = num_outputs  # how many outputs the node declares (Split, Dropout need it)

    def output(self, shape, dtype=np.float32, donors: Sequence[int] = ()) -> np.ndarray:
        """An uninitialised buffer for one output.

        ``donors`` lists input positions whose buffer the op could safely write
        into (elementwise ufuncs tolerate that aliasing); the runtime may return
        such an input's buffer when it is dead after this node.
        """
        return np.empty(shape, dtype)


def register(*names: str):
    """Decorator: ``@register("Relu")`` adds the function to the registry under each name."""

    def add(fn: OpFunction) -> OpFunction:
        for name in names:
            if name in _REGISTRY:
                raise RuntimeError(f"op {name!r} registered twice")
            _REGISTRY[name] = fn
        return fn

    return add


def lookup(op: str, node: str = "") -> OpFunction:
    """The function for ``op``; GraphError naming the node and listing the supported ops if unknown."""
    try:
        return _REGISTRY[op]
    except KeyError:
        where = f"node {node!r}: " if node else ""
        raise GraphError(
            f"{where}op {op!r} is not supported by tinyasr; supported ops: {', '.join(SUPPORTED_OPS)}"
        ) from None


def run_op(op: str, inputs: List[Optional[np.ndarray]], attrs: dict, num_outputs: int = 1) -> List[np.ndarray]:
    """Run one op on arrays (constant folding, tests); returns fresh arrays or views of the inputs."""
    return lookup(op)(OpContext(num_outputs), list(inputs), dict(attrs or {}))


# Where an op accepts a stored tensor in an encoding other than dense (CSR, BSR, int8, ternary):
# op -> input positions.  The runtime refuses an encoded tensor anywhere else at load, so no other op
# ever receives an object that is not an array.
ENCODED_WEIGHT_INPUTS: Dict[str, Sequence[int]] = {"Conv": (1,), "MatMul": (0, 1), "Gemm": (0, 1)}

# Importing the op modules fills the registry.
from tinyasr.ops import conv, elementwise, nn, reduce, shape  # noqa: E402,F401

SUPPORTED_OPS: List[str] = sorted(_REGISTRY)
