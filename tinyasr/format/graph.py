"""The graph IR shared by the converter and the runtime.

A graph is a topologically ordered list of nodes.  Node inputs name either a
runtime value (a graph input or another node's output) or a stored tensor of the
.tasr file (weights, constants).  The empty string marks an omitted optional
input, as in ONNX.  Op names and attribute meanings follow ONNX where an ONNX op
exists (so each op has a written reference), with tinyasr's own fused ops added
(see docs/design.md).  A weight tensor may use any encoding (dense, float16,
sparse, ternary): the op implementation dispatches on it, so new encodings need
no new ops.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Tuple, Union

from tinyasr.errors import GraphError

Dim = Union[int, str]  # a fixed size, or a symbolic name such as "T" or "batch"
MAX_DIM = 2**31 - 1  # a declared input or output dim past this is no model's
MAX_DIM_NAME = 256  # characters of a symbolic dim's name
MAX_RANK = 16


@dataclass(frozen=True)
class ValueInfo:
    """A graph input or output: name, element dtype (numpy name) and shape."""

    name: str
    dtype: str
    shape: Tuple[Dim, ...]

    def to_dict(self) -> Dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}

    def describe(self) -> str:
        """``name: dtype [dims]``, as error messages show a model's input or output."""
        return f"{self.name}: {self.dtype} [{', '.join(map(str, self.shape))}]"

    @staticmethod
    def from_dict(d: Dict[str, Any]) -> "ValueInfo":
        try:
            if not isinstance(d["shape"], list) or len(d["shape"]) > MAX_RANK:  # a string would pass as its letters
                raise GraphError(f"value {str(d['name'])[:80]!r}: shape must be a list of at most {MAX_RANK} dims, "
                                 f"got {str(d['shape'])[:80]}")
            shape = tuple(d["shape"])
            if not all((isinstance(s, int) and not isinstance(s, bool) and 0 <= s <= MAX_DIM)
                       or (isinstance(s, str) and 0 < len(s) <= MAX_DIM_NAME) for s in shape):
                raise GraphError(f"value {str(d['name'])[:80]!r}: shape entries must be integers from 0 to {MAX_DIM} "
                                 f"or names, got {str(shape)[:80]}")
            return ValueInfo(str(d["name"]), str(d["dtype"]), shape)
        except (KeyError, TypeError) as exc:
            raise GraphError(f"malformed value description {str(d)[:200]}: {exc}") from None


@dataclass(frozen=True)
class Node:
    """One operation.  ``attrs`` holds JSON-compatible values only."""

    name: str
    op: str
    inputs: Tuple[str, ...]
    outputs: Tuple[str, ...]
    attrs: Dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> Dict[str, Any]:
        d = {"name": self.name, "op": self.op, "inputs": list(self.inputs), "outputs": list(self.outputs)}
        if self.attrs:
            d["attrs"] = self.attrs
        return d

    @staticmethod
    def from_dict(d: Dict[str, Any]) -> "Node":
        try:
            node = Node(
                name=str(d["name"]),
                op=str(d["op"]),
                inputs=tuple(str(x) for x in d["inputs"]),
                outputs=tuple(str(x) for x in d["outputs"]),
                attrs=dict(d.get("attrs", {})),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise GraphError(f"malformed node description {str(d)[:200]}: {exc}") from None
        return node


@dataclass
class Graph:
    """Inputs, outputs and nodes.  Stored tensors live in the model file, not here."""

    inputs: List[ValueInfo]
    outputs: List[ValueInfo]
    nodes: List[Node]

    def to_dict(self) -> Dict[str, Any]:
        return {
            "inputs": [v.to_dict() for v in self.inputs],
            "outputs": [v.to_dict() for v in self.outputs],
            "nodes": [n.to_dict() for n in self.nodes],
        }

    @staticmethod
    def from_dict(d: Dict[str, Any]) -> "Graph":
        if not isinstance(d, dict):
            raise GraphError("graph description must be an object")
        try:
            return Graph(
                inputs=[ValueInfo.from_dict(v) for v in d["inputs"]],
                outputs=[ValueInfo.from_dict(v) for v in d["outputs"]],
                nodes=[Node.from_dict(n) for n in d["nodes"]],
            )
        except (KeyError, TypeError) as exc:
            raise GraphError(f"malformed graph description: missing or bad {exc}") from None

    def validate(self, tensor_names) -> None:
        """Check that every node input is defined before use and every output is produced.

        ``tensor_names`` is the set of stored tensor names.  Raises GraphError naming the node.
        """
        defined = set(tensor_names)
        for v in self.inputs:
            if v.name in defined:
                raise GraphError(f"graph input {v.name!r} has the same name as a stored tensor or another input")
            defined.add(v.name)
        for node in self.nodes:
            for name in node.inputs:
                if name and name not in defined:
                    raise GraphError(
                        f"node {node.name!r} ({node.op}) reads {name!r}, which is neither a stored tensor, "
                        "a graph input nor the output of an earlier node"
                    )
            for name in node.outputs:
                if name in defined:
                    raise GraphError(f"node {node.name!r} ({node.op}) redefines value {name!r}")
                defined.add(name)
        for v in self.outputs:
            if v.name not in defined:
                raise GraphError(f"graph output {v.name!r} is never produced")
