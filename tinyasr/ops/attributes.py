"""Node attributes checked once, at load: a model file is untrusted, so no op reads an attribute it has not vetted.

An op registers its attribute rules beside itself (``register("Conv", attrs=CONV_ATTRS)``); the runtime calls
:func:`check_attrs` on every node when a model loads (tinyasr/engine/offline.py), so a depthwise stride of
2**31 or a ``dilations`` that is an object is a GraphError naming the node before anything runs.  Attributes an
op declares no rule for must still be plain JSON: numbers finite as float32 and within int64, short strings,
flat lists of those.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Optional, Sequence

from tinyasr.errors import GraphError
from tinyasr.format.values import FLOAT32_MAX, is_int as _is_int, is_real

Rule = Callable[[Any, str], None]  # (value, "node 'x' (Conv) attribute 'strides'") -> None or GraphError

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
MAX_LIST = 4096  # entries of one list attribute
MAX_STRING = 1024  # characters of one string attribute
MAX_SPATIAL = 65536  # strides, dilations, pads and kernel sizes: far beyond any speech model, small enough to run


def _scalar_problem(value) -> Optional[str]:
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int):
        return None if INT64_MIN <= value <= INT64_MAX else "an integer outside int64"
    if isinstance(value, float):
        return None if abs(value) <= FLOAT32_MAX else "a number that is not finite as float32"
    if isinstance(value, str):
        return None if len(value) <= MAX_STRING else f"a string longer than {MAX_STRING} characters"
    return f"a {type(value).__name__}, not a number, string or flat list"


def plain(value, what: str) -> None:
    """The rule for attributes an op declares nothing about: a JSON scalar or a flat list of them."""
    items = value if isinstance(value, list) else [value]
    if len(items) > MAX_LIST:
        raise GraphError(f"{what} has {len(items)} entries (at most {MAX_LIST})")
    for item in items:
        problem = _scalar_problem(item)
        if problem:
            raise GraphError(f"{what} is {problem}: {str(value)[:80]}")


def integer(lo: int = INT64_MIN, hi: int = INT64_MAX) -> Rule:
    def rule(value, what):
        if not _is_int(value) or not lo <= value <= hi:
            raise GraphError(f"{what} must be an integer in [{lo}, {hi}], got {str(value)[:80]}")
    return rule


def integers(lo: int = INT64_MIN, hi: int = INT64_MAX, counts: Sequence[int] = ()) -> Rule:
    """A list of integers in [lo, hi]; ``counts``: the lengths allowed (empty: any up to MAX_LIST)."""
    def rule(value, what):
        if (not isinstance(value, list) or len(value) > MAX_LIST or (counts and len(value) not in counts)
                or not all(_is_int(v) and lo <= v <= hi for v in value)):
            size = f"{' or '.join(map(str, counts))} " if counts else ""
            raise GraphError(f"{what} must be a list of {size}integers in [{lo}, {hi}], got {str(value)[:80]}")
    return rule


def number(value, what: str) -> None:
    """A real number finite as float32 (a float attribute becomes float32 in the kernels)."""
    if not is_real(value):
        raise GraphError(f"{what} must be a number finite as float32, got {str(value)[:80]}")


def numbers(value, what: str) -> None:
    if not isinstance(value, list) or len(value) > MAX_LIST:
        raise GraphError(f"{what} must be a list of numbers, got {str(value)[:80]}")
    for v in value:
        number(v, what)


def one_of(*choices) -> Rule:
    def rule(value, what):
        if not isinstance(value, (str, int)) or isinstance(value, bool) or value not in choices:
            raise GraphError(f"{what} must be one of {', '.join(map(repr, choices))}, got {str(value)[:80]}")
    return rule


# Conv (1-D and 2-D, with the fused activation): shared by the op and its streaming step.
CONV_ATTRS: Dict[str, Rule] = {
    "strides": integers(1, MAX_SPATIAL, (1, 2)),
    "dilations": integers(1, MAX_SPATIAL, (1, 2)),
    "pads": integers(0, MAX_SPATIAL, (2, 4)),
    "kernel_shape": integers(1, MAX_SPATIAL, (1, 2)),
    "group": integer(1, MAX_SPATIAL),
    "auto_pad": one_of("NOTSET", "", "VALID", "SAME_UPPER", "SAME_LOWER"),
    "activation": one_of("", "Relu", "Sigmoid", "Tanh", "Clip"),
    "activation_params": numbers,
}


def check_attrs(node, rules: Dict[str, Rule]) -> None:
    """GraphError naming the node and attribute for the first attribute its op's ``rules`` (else ``plain``)
    refuse."""
    if not isinstance(node.attrs, dict):
        raise GraphError(f"node {node.name!r} ({node.op}): attributes must be an object")
    for key, value in node.attrs.items():
        rules.get(key, plain)(value, f"node {node.name!r} ({node.op}) attribute {key!r}")
