"""Which encoding a weight is stored in (dense / csr / bsr), from a cost model calibrated by measurement.

    choose_encoding(weight_2d, frames=64, time_major=False) -> "dense" | "csr" | "bsr"
    encode(weight, kind, value_dtype="float32") -> np.ndarray | EncodedTensor
    encode_weights(graph, tensors, mode="auto") -> (tensors, {name: kind})    # the converter's --sparse hook
    choose_recurrent_encoding(r_matrix) / encode_recurrent(tensors, names, mode)  # LSTM / GRU R, one frame a step

Cost model (seconds for one [B=1, Cin, T] input; ``tiles = ceil(T / 64)``):

    dense: DENSE_PER_MAC * rows * columns * T + DENSE_CALL
    csr:   CSR_PER_NONZERO * nnz * T + CSR_PER_ROW_TILE * rows * tiles + CSR_CALL
    bsr:   BSR_PER_VALUE * stored values * T + BSR_PER_STRIP_TILE * (rows / 4) * tiles + BSR_CALL
    time-major (a MatMul weight on [T, C] activations): dense is numpy's BLAS matmul, csr
    kernels.sparse.matmul_time_major:
           DENSE_TM_PER_MAC * rows * columns * T + DENSE_TM_CALL
           CSR_TM_PER_NONZERO * nnz * T + CSR_TM_PER_MOVE * (rows + columns) * T + CSR_TM_CALL

Recurrent weights (an LSTM / GRU R, a transducer prediction network's LSTM R) run one frame a step, a matrix x
vector product (tinyasr/kernels/recurrent.py), with the gates computed in the same pass; per direction, for R
[G*H, P] (``choose_recurrent_encoding``):

    dense: REC_DENSE_PER_MAC * G*H * P + REC_PER_GATE * G*H
    csr:   REC_CSR_PER_NONZERO * nnz + REC_PER_GATE * G*H
    bsr:   REC_BLOCK_PER_VALUE * stored values + REC_PER_GATE * G*H     (8 x 1 blocks, run as column blocks)

``rows`` are output units throughout: a MatMul weight W [K, N] is judged as W^T [N, K].  Time-major weights are
stored CSR only (their kernel reads W by output column; the converter stores the logical W, by input row, and the
runtime transposes it once at load); the move term is the kernel's transposes of x and y, one value per input
and per output a frame.

"dense" is tinyasr's own dense path (tinyasr.kernels.conv1d.conv1d: the register-tiled pointwise kernel from
24 frames), the alternative at run time.  A sparse encoding is chosen when the model predicts it at least
MARGIN times faster.  The constants are least squares fits (of relative error, so a 64-frame call counts
as much as a 1000-frame one) of measurements of the kernels on 64x64 to 512x512 layers at T = 64 and
1000, the regime of the converter's choice (``frames`` = 64); below 24 frames dense runs BLAS or the narrow
kernel and every kernel pays for a partial tile, which this linear model does not describe.  Re-measure on
a new machine with ``python3 -m tinyasr_convert.sparse_choice --calibrate`` (seconds) and paste the printed values.
"""

from __future__ import annotations

import argparse
import math
import time
from typing import Any, Dict, Mapping, Optional, Tuple

import numpy as np

from tinyasr.errors import ConversionError
from tinyasr.format.container import EncodedTensor, to_float16
from tinyasr.format.encodings.sparse import bsr_arrays, csr_arrays, index_dtype
from tinyasr.format.graph import Graph

# Calibrated 2026-11-25 on the development machine (2-core AMD EPYC, AVX-512), 1 thread, by
# ``python3 -m tinyasr_convert.sparse_choice --calibrate``, three runs averaged (per-value terms agreed within 4 %,
# tile and call terms 20 %), on 64-byte-aligned activations as the runtime now allocates them (csr ran 1.4x
# faster than on numpy's 16-byte-aligned buffers of the previous constants).  dense = conv1d's register-tiled
# pointwise kernel.  A non-zero costs ~3.2 dense multiply-adds in csr, a stored value ~1.1 in 4x1 bsr, so
# "auto" picks, at T = 64 for 256-1024 channels: csr from about 72 % unstructured sparsity (was ~80 %), bsr
# 4x1 from about 25-30 % block sparsity.  Smaller layers go sparse sooner: the dense kernel's call costs
# 5 us, a sparse one's 2 us.
COSTS = {
    "DENSE_PER_MAC": 8.7e-12,
    "DENSE_CALL": 4.9e-06,
    "CSR_PER_NONZERO": 2.7e-11,
    "CSR_PER_ROW_TILE": 1.4e-08,
    "CSR_CALL": 1.8e-06,
    "BSR_PER_VALUE": 9.2e-12,
    "BSR_PER_STRIP_TILE": 9.3e-08,
    "BSR_CALL": 2.1e-06,
    # Time-major (dense = numpy's BLAS matmul, csr = matmul_time_major): fitted by --calibrate on 2026-12-06 on a
    # 2-core AMD EPYC (Zen 3, AVX2) under load (average 10-12), which printed DENSE_PER_MAC 3.2e-11, CSR_CALL 4.3e-06
    # and DENSE_TM 2.7e-11, 3.5e-06, CSR_TM 6.7e-11, 1.9e-10, 4.8e-06; scaled here onto the terms above (per value
    # by 8.7e-12 / 3.2e-11, calls by 1.8e-06 / 4.3e-06), so one model compares them.  Rerun --calibrate on one
    # quiet machine for a consistent set.  Measured there at T = 64, 88x88 / 88x352 / 512x512: time-major csr as
    # fast as BLAS from ~60 % sparsity, 1.2-1.9x at 80 %.
    "DENSE_TM_PER_MAC": 7.3e-12,
    "DENSE_TM_CALL": 1.5e-06,
    "CSR_TM_PER_NONZERO": 1.8e-11,
    "CSR_TM_PER_MOVE": 5.2e-11,
    "CSR_TM_CALL": 2.0e-06,
    # The recurrent step: least squares fits of benchmarks/results/recurrent.md (2026-12-06, 2-core AMD EPYC,
    # loaded) at H = 256 and 512 (at 1024 dense R [4096, 1024] spills the caches and runs 2x slower a
    # multiply-add; leaving it out errs towards dense).  A CSR non-zero costs ~6.6 dense multiply-adds (a scalar
    # gather each), a column-block value ~2, so csr pays from ~85 % sparsity, 8 x 1 blocks from ~55 %.
    "REC_DENSE_PER_MAC": 7.6e-11,
    "REC_CSR_PER_NONZERO": 5.0e-10,
    "REC_BLOCK_PER_VALUE": 1.5e-10,
    "REC_PER_GATE": 1.0e-09,
}
COST_TERMS = {"dense": ("DENSE_PER_MAC", "DENSE_CALL"),  # each kind's terms, in the order calibrate fits them
              "csr": ("CSR_PER_NONZERO", "CSR_PER_ROW_TILE", "CSR_CALL"),
              "bsr": ("BSR_PER_VALUE", "BSR_PER_STRIP_TILE", "BSR_CALL"),
              "dense_time_major": ("DENSE_TM_PER_MAC", "DENSE_TM_CALL"),
              "csr_time_major": ("CSR_TM_PER_NONZERO", "CSR_TM_PER_MOVE", "CSR_TM_CALL")}
MARGIN = 1.1  # a sparse encoding must be predicted this much faster than dense
BLOCK_FILL = 0.8  # a bsr block shape is used when at least this fraction of its stored values are non-zero
SPARSE_MODES = ("dense", "auto", "csr", "bsr")
TILE = 64
STORAGE_GAIN = 0.8  # a weight only stored sparse for its size must shrink at least this much


def predicted_seconds(kind: str, rows: int, columns: int, stored: int, frames: int,
                      costs: Mapping[str, float] = COSTS) -> float:
    """The cost model: time of one layer call over ``frames`` frames; ``stored`` = non-zeros (csr) or block values (bsr)."""
    tiles = math.ceil(frames / TILE)
    if kind == "dense":
        return costs["DENSE_PER_MAC"] * rows * columns * frames + costs["DENSE_CALL"]
    if kind == "csr":
        return (costs["CSR_PER_NONZERO"] * stored * frames + costs["CSR_PER_ROW_TILE"] * rows * tiles
                + costs["CSR_CALL"])
    if kind == "bsr":
        return (costs["BSR_PER_VALUE"] * stored * frames + costs["BSR_PER_STRIP_TILE"] * rows / 4 * tiles
                + costs["BSR_CALL"])
    if kind == "dense_time_major":
        return costs["DENSE_TM_PER_MAC"] * rows * columns * frames + costs["DENSE_TM_CALL"]
    if kind == "csr_time_major":
        return (costs["CSR_TM_PER_NONZERO"] * stored * frames + costs["CSR_TM_PER_MOVE"] * (rows + columns) * frames
                + costs["CSR_TM_CALL"])
    raise ConversionError(f"unknown encoding kind {kind!r}; expected dense, csr, bsr, dense_time_major or "
                          "csr_time_major")


def choose_recurrent_encoding(matrix: np.ndarray, costs: Mapping[str, float] = COSTS) -> str:
    """"dense", "csr" or "bsr" (8 x 1 blocks: the only block shape the recurrent kernel runs) for a recurrent
    R seen as [directions * G*H, P] (gate rows x h): the cost of one frame's step (module docstring)."""
    matrix = np.asarray(matrix)
    if matrix.ndim != 2:
        raise ConversionError(f"choose_recurrent_encoding needs a 2-D matrix, got shape {matrix.shape}")
    rows, columns = matrix.shape
    nonzero = int(np.count_nonzero(matrix))
    if columns > 65535 or nonzero == matrix.size:
        return "dense"
    gates = costs["REC_PER_GATE"] * rows
    options = {"dense": costs["REC_DENSE_PER_MAC"] * rows * columns + gates,
               "csr": costs["REC_CSR_PER_NONZERO"] * nonzero + gates}
    if best_block(matrix) == 8:
        stored = int(np.count_nonzero(matrix.reshape(rows // 8, 8, -1).any(axis=1))) * 8
        options["bsr"] = costs["REC_BLOCK_PER_VALUE"] * stored + gates
    best = min(options, key=options.get)
    return best if best == "dense" or options[best] * MARGIN <= options["dense"] else "dense"


def recurrent_matrix(r: np.ndarray) -> np.ndarray:
    """The [gate rows, P] matrix view of an ONNX R [directions, G*H, P] or a prediction network's [G*H, P]: the
    view its csr / bsr encoding stores (row_axes = rank - 1)."""
    return r.reshape(-1, r.shape[-1])


def encode_recurrent(tensors: Mapping[str, Any], names, mode: str = "auto", value_dtype: str = "float32"
                     ) -> Tuple[Dict[str, Any], Dict[str, str]]:
    """(tensors with the recurrent R weights ``names`` encoded, {name: kind}): ``mode`` as for encode_weights
    ("bsr" stores 8 x 1 blocks where R's zeros form them, else csr); an unpruned R stays dense."""
    if mode not in SPARSE_MODES:
        raise ConversionError(f"--sparse {mode!r} is not one of {', '.join(SPARSE_MODES)}")
    out, kinds = dict(tensors), {}
    if mode == "dense":
        return out, kinds
    for name in names:
        weight = tensors[name]
        matrix = recurrent_matrix(weight)
        if mode == "auto":
            kind = choose_recurrent_encoding(matrix)
        else:
            kind = mode if np.count_nonzero(matrix) < matrix.size else "dense"
        if kind == "bsr" and best_block(matrix) != 8:
            kind = "csr"
        if kind != "dense":
            out[name] = encode(weight, kind, value_dtype, block=8 if kind == "bsr" else None,
                               row_axes=weight.ndim - 1)
            kinds[name] = kind
    return out, kinds


def best_block(matrix: np.ndarray) -> Optional[int]:
    """The largest block height (8, then 4) whose non-zero blocks are at least BLOCK_FILL full, else None."""
    rows, nonzero = matrix.shape[0], int(np.count_nonzero(matrix))
    for block in (8, 4):
        if rows % block == 0 and nonzero:
            blocks = np.count_nonzero(matrix.reshape(rows // block, block, -1).any(axis=1))
            if nonzero >= BLOCK_FILL * blocks * block:
                return block
    return None


def choose_encoding(matrix: np.ndarray, frames: int = TILE, costs: Mapping[str, float] = COSTS,
                    time_major: bool = False) -> str:
    """"dense", "csr" or "bsr" for a [rows, columns] weight matrix run over ``frames`` frames per call;
    ``time_major``: a MatMul weight (as W^T) on [T, C] activations, "dense" or "csr"."""
    matrix = np.asarray(matrix)
    if matrix.ndim != 2:
        raise ConversionError(f"choose_encoding needs a 2-D weight matrix, got shape {matrix.shape}")
    rows, columns = matrix.shape
    if columns > 65535 or np.count_nonzero(matrix) == matrix.size:  # int32 indices (no kernel), or unpruned
        return "dense"
    nonzero = int(np.count_nonzero(matrix))
    options = {"dense": predicted_seconds("dense_time_major" if time_major else "dense", rows, columns, 0, frames,
                                          costs),
               "csr": predicted_seconds("csr_time_major" if time_major else "csr", rows, columns, nonzero, frames,
                                        costs)}
    block = None if time_major else best_block(matrix)
    if block:
        stored = int(np.count_nonzero(matrix.reshape(rows // block, block, -1).any(axis=1))) * block
        options["bsr"] = predicted_seconds("bsr", rows, columns, stored, frames, costs)
    best = min(options, key=options.get)
    return best if best == "dense" or options[best] * MARGIN <= options["dense"] else "dense"


def encode(weight: np.ndarray, kind: str, value_dtype: str = "float32", block: Optional[int] = None,
           row_axes: int = 1):
    """A weight in the given encoding, as write_model takes it.

    dense: the array (float16 storage with upcast_to if value_dtype is float16); csr; bsr with blocks of
    ``block`` x 1 output channels (default: best_block, else 4).  The matrix view is [prod(shape[:row_axes]),
    rest] (row_axes 2 for an ONNX R [directions, gates * H, P]; stored as a param when not 1).
    """
    weight = np.asarray(weight, np.float32)
    if value_dtype not in ("float32", "float16"):
        raise ConversionError(f"value dtype must be float32 or float16, got {value_dtype!r}")
    if kind == "dense":
        return to_float16(weight) if value_dtype == "float16" else weight
    matrix = weight.reshape(int(np.prod(weight.shape[:row_axes], dtype=np.int64)), -1)
    extra = {} if row_axes == 1 else {"row_axes": row_axes}
    if value_dtype == "float16" and np.abs(matrix).max(initial=0) > 65504:
        raise ConversionError(f"weight values up to {np.abs(matrix).max():g} exceed the float16 range")
    if kind == "csr":
        values, indices, indptr = csr_arrays(matrix, value_dtype)
        return EncodedTensor("csr", "float32", weight.shape, {"values": values, "indices": indices, "indptr": indptr},
                             extra)
    if kind == "bsr":
        block = block or best_block(matrix) or 4
        if matrix.shape[0] % block:
            raise ConversionError(f"bsr blocks of {block} rows do not tile {matrix.shape[0]} output channels")
        values, indices, indptr = bsr_arrays(matrix, (block, 1), value_dtype)
        return EncodedTensor("bsr", "float32", weight.shape, {"values": values, "indices": indices, "indptr": indptr},
                             {"block": [block, 1], **extra})
    raise ConversionError(f"unknown encoding kind {kind!r}; expected one of dense, csr, bsr")


def sparse_candidates(graph: Graph, tensors: Mapping[str, Any]) -> Dict[str, np.ndarray]:
    """{weight name: [output units, inputs] matrix} of the weights a sparse kernel can run: float32 weights of
    pointwise group-1 Conv nodes without padding, of Gemm nodes with transB=1 and (as W^T, time_major_weights)
    the 2-D B of MatMul nodes whose A is computed, used by no other kind of input."""
    candidates, others = {}, set()
    time_major = time_major_weights(graph, tensors)
    for node in graph.nodes:
        for i, name in enumerate(node.inputs):
            weight = tensors.get(name)
            runnable = i == 1 and isinstance(weight, np.ndarray) and weight.dtype == np.float32 and (
                (node.op == "Conv" and weight.ndim == 3 and weight.shape[2] == 1 and node.attrs.get("group", 1) == 1
                 and not any(node.attrs.get("pads", [0, 0])))
                or (node.op == "Gemm" and weight.ndim == 2 and node.attrs.get("transB", 0) == 1
                    and not node.attrs.get("transA", 0))
                or (node.op in ("MatMul", "Linear") and name in time_major))
            if runnable:
                candidates[name] = weight.T if node.op in ("MatMul", "Linear") else weight.reshape(weight.shape[0], -1)
            elif name in tensors:
                others.add(name)
    return {name: m for name, m in candidates.items() if name not in others}


def recurrent_weights(graph: Graph, tensors: Mapping[str, Any]) -> list:
    """Names of the stored float32 R inputs [directions, G*H, P] of LSTM / GRU nodes that nothing else reads."""
    found, others = [], set()
    for node in graph.nodes:
        for i, name in enumerate(node.inputs):
            weight = tensors.get(name)
            if (node.op in ("LSTM", "GRU") and i == 2 and isinstance(weight, np.ndarray)
                    and weight.dtype == np.float32 and weight.ndim == 3):
                found.append(name)
            elif name in tensors:
                others.add(name)
    return [name for name in dict.fromkeys(found) if name not in others]


def time_major_weights(graph: Graph, tensors: Mapping[str, Any]) -> set:
    """Names of stored 2-D B operands of MatMul nodes whose A is computed (a linear layer on [..., T, C]
    activations): the weights kernels.sparse.matmul_time_major runs."""
    return {node.inputs[1] for node in graph.nodes
            if node.op in ("MatMul", "Linear") and node.inputs[0] not in tensors
            and getattr(tensors.get(node.inputs[1]), "ndim", 0) == 2}


def storage_candidates(graph: Graph, tensors: Mapping[str, Any]) -> Dict[str, np.ndarray]:
    """{weight name: [rows, rest] matrix} of float32 Conv weights with a kernel over 1 (depthwise and other
    convs), which no sparse kernel runs: the runtime decodes such a weight once at load, and the dense conv
    kernels skip its zero taps, so a sparse encoding only changes the file size."""
    runnable = sparse_candidates(graph, tensors)
    found = {}
    for node in graph.nodes:
        name = node.inputs[1] if node.op == "Conv" and len(node.inputs) > 1 else ""
        weight = tensors.get(name)
        if (name not in runnable and isinstance(weight, np.ndarray) and weight.dtype == np.float32
                and weight.ndim == 3 and weight.shape[2] > 1):
            found[name] = weight.reshape(weight.shape[0], -1)
    return found


def smaller_as_csr(matrix: np.ndarray, value_dtype: str) -> bool:
    """Whether CSR (values, uint16 / int32 column indices, int32 row pointers) stores ``matrix`` in at most
    STORAGE_GAIN of its dense bytes."""
    value_bytes = np.dtype(value_dtype).itemsize
    index_bytes = index_dtype(matrix.shape[1]).itemsize
    csr_bytes = np.count_nonzero(matrix) * (value_bytes + index_bytes) + (matrix.shape[0] + 1) * 4
    return csr_bytes <= STORAGE_GAIN * matrix.size * value_bytes


def encode_weights(graph: Graph, tensors: Mapping[str, Any], mode: str = "auto", frames: int = TILE,
                   value_dtype: str = "float32") -> Tuple[Dict[str, Any], Dict[str, str]]:
    """The converter's ``--sparse`` step: (tensors with sparse weights encoded, {weight: kind}).

    mode "dense" changes nothing; "csr" / "bsr" encode every sparse-runnable weight that has a zero (time-major
    MatMul weights always as csr; LSTM / GRU R as encode_recurrent says); "auto" asks choose_encoding (R:
    choose_recurrent_encoding).  In every mode but "dense", a pruned weight no sparse kernel runs (a depthwise
    conv's) is stored as CSR where that makes it STORAGE_GAIN smaller (storage_candidates).  Call before
    float16 storage of the remaining dense weights.
    """
    if mode not in SPARSE_MODES:
        raise ConversionError(f"--sparse {mode!r} is not one of {', '.join(SPARSE_MODES)}")
    out, kinds = dict(tensors), {}
    if mode == "dense":
        return out, kinds
    time_major = time_major_weights(graph, tensors)
    for name, matrix in sparse_candidates(graph, tensors).items():
        if mode == "auto":
            kind = choose_encoding(matrix, frames, time_major=name in time_major)
        else:
            kind = mode if np.count_nonzero(matrix) < matrix.size else "dense"
        if kind == "bsr" and (matrix.shape[0] % 4 or name in time_major):  # no time-major BSR kernel
            kind = "csr"
        if kind != "dense":
            out[name] = encode(tensors[name], kind, value_dtype, block=4 if best_block(matrix) is None else None)
            kinds[name] = kind
    for name, matrix in storage_candidates(graph, tensors).items():
        if smaller_as_csr(matrix, value_dtype):
            out[name] = encode(tensors[name], "csr", value_dtype)
            kinds[name] = "csr"
    out, recurrent_kinds = encode_recurrent(out, recurrent_weights(graph, tensors), mode)  # float32, as W is
    kinds.update(recurrent_kinds)
    return out, kinds


# --------------------------------------------------------------------------- calibration


def _best_seconds(fn, repeats: int = 30) -> float:
    fn()
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def _relative_fit(features: np.ndarray, seconds: np.ndarray) -> np.ndarray:
    """Coefficients c minimising sum((features @ c / seconds - 1)^2): each measurement weighs the same."""
    weights = 1.0 / seconds
    return np.linalg.lstsq(features * weights[:, None], seconds * weights, rcond=None)[0]


def _run_buffer(array: np.ndarray) -> np.ndarray:
    """A float32 copy of ``array`` in a 64-byte-aligned buffer, as the runtime allocates activations
    (tinyasr.engine.offline.aligned_empty): the csr kernel runs ~1.4x faster on those than on numpy's 16-byte ones."""
    from tinyasr.engine.offline import aligned_empty

    placed = aligned_empty(array.shape, np.float32)
    placed[...] = array
    return placed


def calibrate(sizes=(64, 128, 256, 512), frames=(64, 1000), sparsities=(0.5, 0.8, 0.9, 0.95)) -> Dict[str, float]:
    """Measure tinyasr's dense and sparse kernels (1 thread) and fit the cost model's constants."""
    from tinyasr_convert.sparsity import magnitude_mask

    from tinyasr.engine import threads
    from tinyasr.format.encodings.sparse import BSRMatrix, CSRMatrix
    from tinyasr.kernels.conv1d import conv1d
    from tinyasr.kernels.sparse import matmul_time_major, spmm

    threads.set_num_threads(1)
    rng = np.random.default_rng(0)
    rows_of = {kind: [] for kind in COST_TERMS}  # (the cost terms' factors, in COST_TERMS order; seconds)
    for size in sizes:
        weight = rng.standard_normal((size, size)).astype(np.float32)
        for t in frames:
            x = _run_buffer(rng.standard_normal((1, size, t)))
            y = _run_buffer(np.zeros((1, size, t)))  # reused, as the runtime reuses its planned buffers
            x_rows, y_rows = _run_buffer(x[0].T), _run_buffer(np.zeros((t, size)))  # time-major [T, C]
            tiles = math.ceil(t / TILE)
            rows_of["dense"].append((size * size * t, 1, _best_seconds(lambda: conv1d(x, weight[:, :, None], out=y))))
            rows_of["dense_time_major"].append((size * size * t, 1, _best_seconds(
                lambda: np.matmul(x_rows, weight, out=y_rows))))
            for s in sparsities:
                m = weight * magnitude_mask(weight, s)
                csr = CSRMatrix(*csr_arrays(m), (size, size, 1))
                rows_of["csr"].append((csr.nnz * t, size * tiles, 1, _best_seconds(lambda: spmm(csr, x, out=y))))
                stored_t = CSRMatrix(*csr_arrays(np.ascontiguousarray(m.T)), (size, size))  # MatMul's W = m.T
                rows_of["csr_time_major"].append((csr.nnz * t, 2 * size * t, 1, _best_seconds(
                    lambda: matmul_time_major(x_rows, stored_t, out=y_rows))))
                b = weight * magnitude_mask(weight, s, 4)
                bsr = BSRMatrix(*bsr_arrays(b, (4, 1)), (size, size, 1), (4, 1))
                rows_of["bsr"].append((bsr.nnz * t, size / 4 * tiles, 1, _best_seconds(lambda: spmm(bsr, x, out=y))))
    costs = {}
    for kind, terms in COST_TERMS.items():
        data = np.array(rows_of[kind], np.float64)
        costs.update((term, float(max(c, 0.0))) for term, c in zip(terms, _relative_fit(data[:, :-1], data[:, -1])))
    return costs


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calibrate", action="store_true", help="measure this machine and print COSTS")
    args = parser.parse_args(argv)
    if not args.calibrate:
        parser.print_help()
        return 0
    costs = calibrate()
    print("COSTS = {")
    for key in (term for terms in COST_TERMS.values() for term in terms):
        print(f'    "{key}": {costs[key]:.2g},')
    print("}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
