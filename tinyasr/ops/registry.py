"""The op registry: op name -> function, and how the op streams (tinyasr/ops/streaming_rules.py).

Op modules register with ``@register("Relu", streaming=TIME_LOCAL)``; the
package (tinyasr/ops/__init__.py) imports them all, so importing ``tinyasr.ops``
fills the registry.  This module imports no op module, so theirs import no cycle.
"""

from __future__ import annotations

from typing import Dict, List, Optional

import numpy as np

from tinyasr.errors import GraphError
from tinyasr.ops.attributes import Rule, check_attrs
from tinyasr.ops.context import OpContext, OpFunction
from tinyasr.ops.streaming_rules import UNDECLARED, StreamRule

_REGISTRY: Dict[str, OpFunction] = {}
_STREAMING: Dict[str, StreamRule] = {}
_ATTRS: Dict[str, Dict[str, Rule]] = {}


def register(*names: str, streaming: Optional[StreamRule] = None, attrs: Optional[Dict[str, Rule]] = None):
    """Decorator: ``@register("Relu", streaming=TIME_LOCAL)`` adds the function under each name, with the rule the
    streaming schedule asks (none declared: the op refuses to stream) and ``attrs``, the rules its attributes
    are checked by at load (tinyasr/ops/attributes.py; none declared: plain JSON values only)."""

    def add(fn: OpFunction) -> OpFunction:
        for name in names:
            if name in _REGISTRY:
                raise RuntimeError(f"op {name!r} registered twice")
            _REGISTRY[name] = fn
            if streaming is not None:
                _STREAMING[name] = streaming
            _ATTRS[name] = dict(attrs or {})
        return fn

    return add


def registered_ops() -> List[str]:
    return sorted(_REGISTRY)


def lookup(op: str, node: str = "") -> OpFunction:
    """The function for ``op``; GraphError naming the node and listing the supported ops if unknown."""
    try:
        return _REGISTRY[op]
    except KeyError:
        where = f"node {node!r}: " if node else ""
        raise GraphError(
            f"{where}op {op!r} is not supported by tinyasr; supported ops: {', '.join(registered_ops())}"
        ) from None


def check_node_attrs(node) -> None:
    """GraphError naming the node for an attribute its op would refuse or could not read (called at load)."""
    check_attrs(node, _ATTRS.get(node.op, {}))


def stream_rule(op: str) -> StreamRule:
    """How ``op`` streams: the rule it registered with, or UNDECLARED (a refusal)."""
    return _STREAMING.get(op, UNDECLARED)


def run_op(op: str, inputs: List[Optional[np.ndarray]], attrs: dict, num_outputs: int = 1) -> List[np.ndarray]:
    """Run one op on arrays (constant folding, tests); returns fresh arrays or views of the inputs."""
    return lookup(op)(OpContext(num_outputs), list(inputs), dict(attrs or {}))
