"""Regenerated sparse random ternary 1x1 convolutions: the generator, the decoded weight, the encodings.

A ternary layer's matrix is never stored: it is a pure function of (seed, layer_id, out, in, density),
specified bit for bit in docs/ternary.md, so the torch module that trained it, the converter and the
Numba runtime all use the same matrix.  This module holds the numpy reference of that generator, the
``TernaryWeight`` object ``ModelFile.tensor`` returns for the ``ternary_seed`` and ``ternary_index``
encodings, and those encodings' validators and decoders (listed in tinyasr.format.encodings).
The kernels are in ``tinyasr.kernels.ternary``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Dict, NamedTuple, Optional, Tuple

import numpy as np

from tinyasr.format.tensors import EncodedTensor, Encoding, TensorEntry
from tinyasr.format.values import is_real

GENERATOR = "splitmix64-stratified-v1"  # the only generator; a new one gets a new name, never a change

# splitmix64 (Steele, Lea, Flood 2014; Vigna's reference C code).  All arithmetic is modulo 2**64.
GOLDEN_GAMMA = 0x9E3779B97F4A7C15
MIX_MUL1 = 0xBF58476D1CE4E5B9
MIX_MUL2 = 0x94D049BB133111EB
MIX_SHIFTS = (30, 27, 31)

MAX_SEED = 2**64 - 1
MAX_LAYER_ID = 2**32 - 1
MAX_IN_CHANNELS = 65535  # column indices are uint16
MAX_OUT_CHANNELS = 65535  # rows; also bounds the scales a seed entry without a 'scales' part expands to at load


# --------------------------------------------------------------------------- the generator (numpy reference)


def mix64(z: np.ndarray) -> np.ndarray:
    """splitmix64's output function on a uint64 array (wraps modulo 2**64, as numpy uint64 arrays do)."""
    z = np.asarray(z, np.uint64)
    z = (z ^ (z >> np.uint64(MIX_SHIFTS[0]))) * np.uint64(MIX_MUL1)
    z = (z ^ (z >> np.uint64(MIX_SHIFTS[1]))) * np.uint64(MIX_MUL2)
    return z ^ (z >> np.uint64(MIX_SHIFTS[2]))


def block_width(density: float) -> int:
    """Columns per block, one non-zero each: round(1 / density), halves rounded up."""
    if not (isinstance(density, (int, float)) and 0.0 < density <= 1.0):
        raise ValueError(f"density must be a number in (0, 1], got {density!r}")
    inverse = 1.0 / float(density)
    if not inverse < 2.0**32:  # a subnormal density: 1 / density overflows, and no block can be that wide anyway
        raise ValueError(f"density {density!r} is too small: blocks would be wider than 2**32 columns")
    return int(math.floor(inverse + 0.5))


def layer_key(seed: int, layer_id: int) -> int:
    """mix64(seed + GOLDEN_GAMMA * (layer_id + 1)): one independent stream per layer of a model."""
    z = (int(seed) + GOLDEN_GAMMA * (int(layer_id) + 1)) & MAX_SEED
    return int(mix64(np.array([z], np.uint64))[0])


def row_hashes(seed: int, layer_id: int, out_channels: int, nblocks: int) -> np.ndarray:
    """h[r, b] = mix64(key + GOLDEN_GAMMA * (r * nblocks + b + 1)): the counter-th splitmix64 output of the layer."""
    counters = np.arange(1, out_channels * nblocks + 1, dtype=np.uint64)
    with np.errstate(over="ignore"):
        state = np.uint64(layer_key(seed, layer_id)) + counters * np.uint64(GOLDEN_GAMMA)
    return mix64(state).reshape(out_channels, nblocks)


def ternary_columns(seed: int, layer_id: int, out_channels: int, in_channels: int, density: float):
    """(columns int64 [out, nblocks], signs int8 [out, nblocks]): the one non-zero of every row and block.

    Block b covers columns [b*w, min((b+1)*w, in)); the non-zero sits at b*w + (((h >> 32) * span) >> 32),
    with sign +1 where bit 0 of h is 0 and -1 where it is 1.
    """
    check_layer(seed, layer_id, out_channels, in_channels, density)
    width = block_width(density)
    nblocks = -(-in_channels // width)
    h = row_hashes(seed, layer_id, out_channels, nblocks)
    starts = np.arange(nblocks, dtype=np.uint64) * np.uint64(width)
    widths = np.minimum(np.uint64(width), np.uint64(in_channels) - starts)
    columns = (starts + (((h >> np.uint64(32)) * widths) >> np.uint64(32))).astype(np.int64)
    signs = np.where((h & np.uint64(1)) == 0, 1, -1).astype(np.int8)
    return columns, signs


def ternary_matrix(seed: int, layer_id: int, out_channels: int, in_channels: int, density: float) -> np.ndarray:
    """The int8 [out, in] matrix of {-1, 0, +1} (the numpy reference every other implementation must equal)."""
    columns, signs = ternary_columns(seed, layer_id, out_channels, in_channels, density)
    matrix = np.zeros((out_channels, in_channels), np.int8)
    np.put_along_axis(matrix, columns, signs, axis=1)
    return matrix


def check_layer(seed, layer_id, out_channels, in_channels, density) -> None:
    """ValueError naming the first generator parameter out of range."""
    for name, value, top in (("seed", seed, MAX_SEED), ("layer_id", layer_id, MAX_LAYER_ID),
                             ("out_channels", out_channels, MAX_OUT_CHANNELS),
                             ("in_channels", in_channels, MAX_IN_CHANNELS)):
        if not (isinstance(value, (int, np.integer)) and not isinstance(value, bool) and 0 <= value <= top):
            raise ValueError(f"{name} must be an integer in [0, {top}], got {value!r}")
    if in_channels < 1:
        raise ValueError("in_channels must be at least 1")
    if block_width(density) > in_channels:
        raise ValueError(f"density {density} gives blocks of {block_width(density)} columns, "
                         f"more than the {in_channels} input channels")


def is_plain_pointwise(attrs: Dict[str, Any]) -> bool:
    """Whether Conv attributes describe a plain 1x1 conv (group 1, stride 1, dilation 1, no padding)."""
    return (int(attrs.get("group", 1)) == 1 and list(attrs.get("strides", [1])) == [1]
            and list(attrs.get("dilations", [1])) == [1] and list(attrs.get("pads", [0, 0])) == [0, 0]
            and list(attrs.get("kernel_shape", [1])) == [1] and attrs.get("auto_pad", "NOTSET") in ("NOTSET", "VALID"))


# --------------------------------------------------------------------------- index lists


class IndexLists(NamedTuple):
    """Per output row, the columns holding +1 and those holding -1 (CSR-style, ascending within a row)."""

    plus: np.ndarray  # uint16 [n+]
    plus_ptr: np.ndarray  # int32 [rows + 1]
    minus: np.ndarray  # uint16 [n-]
    minus_ptr: np.ndarray  # int32 [rows + 1]

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self)


def index_lists(matrix: np.ndarray) -> IndexLists:
    """IndexLists of an int8 [rows, cols] ternary matrix (numpy reference of the Numba expansion)."""
    lists = []
    for sign in (1, -1):
        rows, cols = np.nonzero(matrix == sign)
        ptr = np.zeros(matrix.shape[0] + 1, np.int32)
        np.cumsum(np.bincount(rows, minlength=matrix.shape[0]), out=ptr[1:])
        lists += [cols.astype(np.uint16), ptr]
    return IndexLists(*lists)


def matrix_from_lists(lists: IndexLists, in_channels: int) -> np.ndarray:
    """The int8 [rows, in] matrix the lists describe."""
    rows = lists.plus_ptr.shape[0] - 1
    matrix = np.zeros((rows, in_channels), np.int8)
    for idx, ptr, sign in ((lists.plus, lists.plus_ptr, 1), (lists.minus, lists.minus_ptr, -1)):
        matrix[np.repeat(np.arange(rows), np.diff(ptr)), idx.astype(np.int64)] = sign
    return matrix


# --------------------------------------------------------------------------- the decoded weight


@dataclass(eq=False)
class TernaryWeight:
    """A 1x1 Conv weight ``pattern[o, i] * scales[o]`` (logical shape [out, in, 1], float32).

    ``seed`` is None for a pattern known only by its index lists (``ternary_index``); otherwise
    the pattern is regenerated from (seed, layer_id, density).  ``lists`` caches the expanded
    index lists: set at decode for ``ternary_index``, filled on first use by the kernels' "speed"
    mode for ``ternary_seed``.
    """

    out_channels: int
    in_channels: int
    scales: np.ndarray  # float32 [out]
    seed: Optional[int] = None
    layer_id: int = 0
    density: Optional[float] = None
    lists: Optional[IndexLists] = None

    @property
    def shape(self) -> Tuple[int, int, int]:
        return (self.out_channels, self.in_channels, 1)

    def pattern(self) -> np.ndarray:
        """The int8 [out, in] matrix of {-1, 0, +1}."""
        if self.seed is None:
            return matrix_from_lists(self.lists, self.in_channels)
        return ternary_matrix(self.seed, self.layer_id, self.out_channels, self.in_channels, self.density)

    def dense(self) -> np.ndarray:
        """The float32 [out, in, 1] weight a dense Conv would use (for references and fallbacks)."""
        return (self.pattern().astype(np.float32) * self.scales[:, None])[:, :, None]


# --------------------------------------------------------------------------- encodings


def seed_tensor(seed: int, layer_id: int, out_channels: int, in_channels: int, density: float,
                scales=None) -> EncodedTensor:
    """A ``ternary_seed`` entry: generator parameters only, plus per-channel scales if they are not all equal."""
    check_layer(seed, layer_id, out_channels, in_channels, density)
    params: Dict[str, Any] = {"generator": GENERATOR, "seed": int(seed), "layer_id": int(layer_id),
                              "density": float(density)}
    parts = {}
    scales = np.ones(out_channels, np.float32) if scales is None else np.asarray(scales, np.float32).reshape(-1)
    if scales.size and np.all(scales == scales[0]):
        params["scale"] = float(scales[0])
    else:
        parts["scales"] = scales
    return EncodedTensor("ternary_seed", "float32", (out_channels, in_channels, 1), parts, params)


def index_tensor(matrix: np.ndarray, scales) -> EncodedTensor:
    """A ``ternary_index`` entry for an int8 [out, in] ternary matrix and float32 [out] scales."""
    out_channels, in_channels = matrix.shape
    if in_channels > MAX_IN_CHANNELS:
        raise ValueError(f"ternary_index needs in_channels <= {MAX_IN_CHANNELS}, got {in_channels}")
    parts = dict(index_lists(matrix)._asdict())
    parts["scales"] = np.asarray(scales, np.float32).reshape(out_channels)
    return EncodedTensor("ternary_index", "float32", (out_channels, in_channels, 1), parts, {})


def _check_logical(entry: TensorEntry) -> Tuple[int, int]:
    if entry.dtype != "float32" or len(entry.shape) != 3 or entry.shape[2] != 1:
        raise ValueError(f"a ternary weight is float32 [out, in, 1] (a 1x1 Conv), got {entry.dtype}{list(entry.shape)}")
    out_channels, in_channels, _ = entry.shape
    if not 1 <= in_channels <= MAX_IN_CHANNELS:
        raise ValueError(f"in_channels {in_channels} is outside 1..{MAX_IN_CHANNELS}")
    if out_channels > MAX_OUT_CHANNELS:
        raise ValueError(f"out_channels {out_channels} is outside 0..{MAX_OUT_CHANNELS}")
    return out_channels, in_channels


def _check_scales(scales: np.ndarray, out_channels: int) -> None:
    if scales.dtype != np.float32 or scales.shape != (out_channels,):
        raise ValueError(f"part 'scales' must be float32 [{out_channels}], got {scales.dtype}{list(scales.shape)}")
    if not np.all(np.isfinite(scales)):
        raise ValueError("part 'scales' holds non-finite values")


def _validate_seed(entry: TensorEntry, parts: Dict[str, np.ndarray]) -> None:
    out_channels, in_channels = _check_logical(entry)
    params = entry.params
    missing = {"generator", "seed", "layer_id", "density"} - set(params)
    unknown = set(params) - {"generator", "seed", "layer_id", "density", "scale"}
    if missing or unknown:
        raise ValueError(f"params missing {sorted(missing)}, unknown {sorted(unknown)}")
    if params["generator"] != GENERATOR:
        raise ValueError(f"unknown generator {str(params['generator'])[:60]!r} (this reader knows {GENERATOR!r})")
    if isinstance(params["density"], bool):
        raise ValueError("density must be a number")
    check_layer(params["seed"], params["layer_id"], out_channels, in_channels, params["density"])
    if set(parts) - {"scales"}:
        raise ValueError(f"ternary_seed stores at most one part 'scales', found {sorted(parts)}")
    if "scales" in parts:
        if "scale" in params:
            raise ValueError("give either params 'scale' or part 'scales', not both")
        _check_scales(parts["scales"], out_channels)
    else:
        scale = params.get("scale", 1.0)
        if not is_real(scale):  # 3.5e38 is a finite double but inf as the float32 weights hold it
            raise ValueError(f"params 'scale' must be a number finite as float32, got {str(scale)[:40]}")


def _decode_seed(entry: TensorEntry, parts: Dict[str, np.ndarray]) -> TernaryWeight:
    out_channels, in_channels = entry.shape[0], entry.shape[1]
    p = entry.params
    scales = parts["scales"] if "scales" in parts else np.full(out_channels, p.get("scale", 1.0), np.float32)
    return TernaryWeight(out_channels, in_channels, scales, p["seed"], p["layer_id"], p["density"])


def _count_seed(entry: TensorEntry, parts) -> int:
    return entry.shape[0] * -(-entry.shape[1] // block_width(entry.params["density"]))


def _validate_index(entry: TensorEntry, parts: Dict[str, np.ndarray]) -> None:
    out_channels, in_channels = _check_logical(entry)
    expected = {"plus", "plus_ptr", "minus", "minus_ptr", "scales"}
    if set(parts) != expected:
        raise ValueError(f"ternary_index stores parts {sorted(expected)}, found {sorted(parts)}")
    if entry.params:
        raise ValueError(f"ternary_index takes no params, found {sorted(entry.params)}")
    _check_scales(parts["scales"], out_channels)
    keys = []
    for role in ("plus", "minus"):
        idx, ptr = parts[role], parts[f"{role}_ptr"]
        if idx.dtype != np.uint16 or idx.ndim != 1:
            raise ValueError(f"part {role!r} must be uint16 [n], got {idx.dtype}{list(idx.shape)}")
        if ptr.dtype != np.int32 or ptr.shape != (out_channels + 1,):
            raise ValueError(f"part '{role}_ptr' must be int32 [{out_channels + 1}], got {ptr.dtype}{list(ptr.shape)}")
        if ptr[0] != 0 or ptr[-1] != idx.size or np.any(np.diff(ptr) < 0):
            raise ValueError(f"part '{role}_ptr' must start at 0, never decrease and end at {idx.size}")
        if idx.size and int(idx.max()) >= in_channels:
            raise ValueError(f"part {role!r} holds column {int(idx.max())}, outside 0..{in_channels - 1}")
        rows = np.repeat(np.arange(out_channels, dtype=np.int64), np.diff(ptr))
        key = rows * in_channels + idx
        if np.any(np.diff(key) <= 0):
            raise ValueError(f"part {role!r}: columns must increase strictly within each row")
        keys.append(key)
    if np.intersect1d(*keys).size:
        raise ValueError("a column appears under both +1 and -1 in the same row")


def _decode_index(entry: TensorEntry, parts: Dict[str, np.ndarray]) -> TernaryWeight:
    lists = IndexLists(parts["plus"], parts["plus_ptr"], parts["minus"], parts["minus_ptr"])
    return TernaryWeight(entry.shape[0], entry.shape[1], parts["scales"], lists=lists)


# Introduced in format 1.2; tinyasr before 1.2 wrote them in files declaring 1.0 / 1.1, which stay readable.
FILE_ENCODINGS = (
    Encoding("ternary_seed", _validate_seed, _decode_seed, _count_seed, minor=2, legacy_minor=0),
    Encoding("ternary_index", _validate_index, _decode_index,
             lambda entry, parts: int(parts["plus"].size + parts["minus"].size), minor=2, legacy_minor=0),
)
