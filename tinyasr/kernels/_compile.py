"""Build each kernel twice, serial and parallel, and pick one per call; scratch that stays in registers.

A kernel is written once as a factory ``make(loop)`` whose outer loop is ``loop(n)``.
``range`` gives the serial build: no thread pool, safe to call from many Python threads at
once, and the only build used at 1 thread.  ``prange`` gives the parallel build.  The closure
variable also keeps the two builds apart in Numba's on-disk cache, whose key is the
function's bytecode plus its closure contents (same qualname otherwise).
"""

from __future__ import annotations

import llvmlite.ir as llvm_ir
import numpy as np
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from tinyasr.engine import threads

# Activation codes passed to the kernels (the names are the IR's ``activation`` attribute values): defined here, where
# the IR epilogue (_finish_sums) applies Relu and Clip, and used through epilogue.ACTIVATIONS everywhere else.
ACTIVATIONS = {"": 0, "Relu": 1, "Sigmoid": 2, "Tanh": 3, "Clip": 4}
TILE = 64  # frames per register tile: 4 AVX-512 (8 AVX2, 16 NEON) registers per output row


@intrinsic
def stack_buffer(typingctx, size):
    """A float32 pointer to ``size`` (a literal) floats on the stack of the calling function (one per thread
    in a parallel loop body): scratch that LLVM can keep in registers, as a stack slot aliases no argument
    (Numba cannot mark array arguments noalias).  Wrap it with ``numba.carray(ptr, (size,))``."""
    if not isinstance(size, types.IntegerLiteral):
        return None
    count = size.literal_value

    def codegen(context, builder, signature, args):
        slot = cgutils.alloca_once(builder, llvm_ir.ArrayType(llvm_ir.FloatType(), count))
        return builder.bitcast(slot, llvm_ir.PointerType(llvm_ir.FloatType()))

    return types.CPointer(types.float32)(size), codegen


@njit(cache=True)
def aligned_rows(rows, width):
    """np.empty((rows, width), float32) starting on a 64-byte boundary (Numba's arrays start on 32, numpy's on 16),
    so that with rows of a multiple of 16 floats no AVX-512 load straddles two cache lines: the kernels' scratch
    tiles, the streaming program's windows and packed weights.  A line-split 64-byte load costs the load ports
    twice: the sparse kernels' x tile, which came at 32 bytes past a line in most processes, ran CSR 1x64 2-way at
    512 x 512, T = 1000 in 1.46 ms instead of 1.10 (Zen 4; benchmarks/results/sparse_gather.md); the causal
    QuartzNet's program ran 1-5 % faster a chunk.  Called, not inlined, so that the code around a kernel's loops
    is the same as for np.empty.  Not zeroed: every buffer that grows is written before it is read, and zeroing is
    a pass over fresh pages (when QuartzNet 5x5's end of stream still grew its buffers to ~1500 frames, 26 of its
    34 ms of bookkeeping, Zen 4)."""
    raw = np.empty(rows * width + 16, np.float32)
    skip = (-raw.ctypes.data % 64) // 4
    return raw[skip:skip + rows * width].reshape((rows, width))


@intrinsic
def element_pointer(typingctx, array, offset):
    """A pointer to element ``offset`` (counted in elements from the first) of a C-contiguous ``array``; wrap it
    with ``numba.carray(ptr, (n,))``.  For the gathers of the sparse kernels: a slice ``x[row, t0:t0 + n]``
    costs Numba's negative-index and clamp code (~15 scalar instructions) per non-zero, a pointer one multiply-add.
    Only C-contiguous arrays type, so an offset computed from the shape always names the element meant; the
    caller keeps it in bounds (the indices were validated at load)."""
    if not isinstance(array, types.Array) or array.layout != "C" or not isinstance(offset, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        data = context.make_array(signature.args[0])(context, builder, args[0]).data
        return builder.gep(data, [args[1]])

    return types.CPointer(array.dtype)(array, offset), codegen


def _prefetch(locality: int):
    """The codegen of llvm.prefetch (read) with ``locality`` 0 (read once) .. 3 (keep in all levels)."""

    def codegen(context, builder, signature, args):
        i8p, i32 = llvm_ir.IntType(8).as_pointer(), llvm_ir.IntType(32)
        function = cgutils.get_or_insert_function(builder.module, llvm_ir.FunctionType(llvm_ir.VoidType(),
                                                  [i8p, i32, i32, i32]), "llvm.prefetch.p0i8")
        builder.call(function, [builder.bitcast(args[0], i8p), i32(0), i32(locality), i32(1)])
        return context.get_dummy_value()

    return codegen


@intrinsic
def prefetch(typingctx, pointer):
    """Ask for the cache line at ``pointer`` (a typed pointer, element_pointer's) to be read into the caches ahead of
    its use: llvm.prefetch (read, keep in all levels), which LLVM lowers to prefetcht0 on x86 and PRFM PLDL1KEEP on
    ARM.  A hint: nothing is loaded into a register and a bad address faults nowhere."""
    if not isinstance(pointer, types.CPointer):
        return None
    return types.void(pointer), _prefetch(3)


@intrinsic
def prefetch_once(typingctx, pointer):
    """prefetch for data read once and not again soon: llvm.prefetch with locality 0, prefetchnta on x86 (into L1,
    kept out of the other levels as far as the CPU allows) and PRFM PLDL1STRM on ARM, so that a stream of it
    does not push out of the caches what is read again."""
    if not isinstance(pointer, types.CPointer):
        return None
    return types.void(pointer), _prefetch(0)


# An 8x8 transpose as 4x4 transposes inside each half of 4 elements (unpack / shufps on AVX2, zip / trn on NEON) and
# an exchange of halves.  Where the rows come from memory the halves are exchanged by how they are read: two half
# rows loaded into one vector are a vinsertf128 with a memory operand, where exchanging halves between registers
# (vperm2f128) is 8 micro-ops for 3 cycles on AMD Zen 1.  From registers (transpose_run) the high halves still
# meet through vperm2f128; storing them as half columns does not avoid it, LLVM merges the two stores back into
# one.  LLVM lowers the same IR for any vector width.
_UNPACK = ([0, 8, 1, 9, 4, 12, 5, 13], [2, 10, 3, 11, 6, 14, 7, 15])
_PAIRS = ([0, 1, 8, 9, 4, 5, 12, 13], [2, 3, 10, 11, 6, 7, 14, 15])
_HALVES = ([0, 1, 2, 3, 8, 9, 10, 11], [4, 5, 6, 7, 12, 13, 14, 15])
_JOINED = list(range(8))


def _in_halves(builder, rows):
    """quads[4 g + c] for 8 vectors ``rows`` of 8: in each half h of 4 elements, element c of rows 4 g .. 4 g + 3
    (the 4x4 transposes of rows 0-3 and 4-7, half by half, through 16 two-input shuffles)."""
    masks = llvm_ir.VectorType(llvm_ir.IntType(32), 8)

    def mix(a, b, mask):
        return builder.shuffle_vector(a, b, llvm_ir.Constant(masks, mask))

    pairs = [mix(rows[2 * k], rows[2 * k + 1], _UNPACK[h]) for k in range(4) for h in range(2)]
    return [mix(pairs[4 * g + h], pairs[4 * g + h + 2], _PAIRS[p]) for g in range(2) for h in range(2)
            for p in range(2)]


def _columns_of_halves(builder, halves):
    """The 8 columns (vectors of 8) of an 8x8 block given as half rows, ``halves[i][h]`` elements 4 h .. 4 h + 3 of
    row i (vectors of 4): rows i and i + 4 joined half by half, so that _in_halves' quads are the columns."""
    joined = llvm_ir.Constant(llvm_ir.VectorType(llvm_ir.IntType(32), 8), _JOINED)
    mixed = [builder.shuffle_vector(halves[k][h], halves[k + 4][h], joined) for h in range(2) for k in range(4)]
    return _in_halves(builder, mixed)


def _columns_of_rows(builder, rows):
    """The 8 columns of an 8x8 block held as 8 vectors ``rows``: _in_halves' quads with their halves exchanged."""
    quads = _in_halves(builder, rows)
    masks = llvm_ir.VectorType(llvm_ir.IntType(32), 8)
    return [builder.shuffle_vector(quads[j % 4], quads[4 + j % 4], llvm_ir.Constant(masks, _HALVES[j // 4]))
            for j in range(8)]


@intrinsic
def transpose_8x8(typingctx, src, src_row, src_column, dst, dst_row, dst_column):
    """dst[dst_row + j, dst_column + i] = src[src_row + i, src_column + j] for i, j < 8, on C-contiguous 2-D
    float32 (or float64) arrays, with no bounds checks (the caller's loops keep the block inside both arrays).

    Sixteen half-row loads, 16 shuffles in registers, eight row stores: LLVM's vectoriser does not find this
    for a transposing loop, which instead moves one float per load and store (measured on Zen 3, AVX2, a
    256 x 352 transpose: 32 us in blocks, 243 us as a loop, 40 us for numpy's copy)."""
    if not all(isinstance(a, types.Array) and a.ndim == 2 and a.dtype == src.dtype and a.layout == "C"
               for a in (src, dst)) or src.dtype not in (types.float32, types.float64):
        return None
    element, size = (llvm_ir.FloatType(), 4) if src.dtype == types.float32 else (llvm_ir.DoubleType(), 8)

    def codegen(context, builder, signature, args):
        def pointer(array_type, array_value, row, column, offset, width):
            array = context.make_array(array_type)(context, builder, array_value)
            columns = builder.extract_value(array.shape, 1)
            index = builder.add(builder.mul(builder.add(row, llvm_ir.IntType(64)(offset)), columns), column)
            return builder.bitcast(builder.gep(array.data, [index]), llvm_ir.VectorType(element, width).as_pointer())

        src_type, dst_type = signature.args[0], signature.args[3]
        halves = []
        for i in range(8):
            row = pointer(src_type, args[0], args[1], args[2], i, 4)
            halves.append([builder.load(builder.gep(row, [llvm_ir.IntType(64)(h)]), align=size) for h in range(2)])
        for j, column in enumerate(_columns_of_halves(builder, halves)):
            builder.store(column, pointer(dst_type, args[3], args[4], args[5], j, 8), align=size)
        return context.get_dummy_value()

    return types.void(src, types.int64, types.int64, dst, types.int64, types.int64), codegen


@intrinsic
def transpose_run(typingctx, src, lanes, dst, dst_row, dst_column):
    """dst[dst_row + i, dst_column + k] = src[k * lanes + i] for k < 8, i < ``lanes`` (a literal multiple of 8):
    eight ``lanes``-float vectors at the float32 pointer ``src`` (a stack_buffer) written transposed into a
    C-contiguous 2-D float32 array, 8 x 8 blocks at a time, no bounds checks.  Each vector is loaded whole, as the
    kernel's multiply-adds stored it, and split in registers: read as 8-float rows of the 16-lane buffer
    (transpose_8x8 on its halves), a 256-channel depthwise conv of K 33 at T = 500 took 140 us against 100 (Intel
    Xeon, Emerald Rapids)."""
    if not (isinstance(lanes, types.IntegerLiteral) and lanes.literal_value % 8 == 0 and isinstance(src, types.CPointer)
            and src.dtype == types.float32 and isinstance(dst, types.Array) and dst.ndim == 2
            and dst.dtype == types.float32 and dst.layout == "C"):
        return None
    count = lanes.literal_value

    def codegen(context, builder, signature, args):
        vector, row = llvm_ir.VectorType(llvm_ir.FloatType(), count), llvm_ir.VectorType(llvm_ir.FloatType(), 8)
        masks = llvm_ir.VectorType(llvm_ir.IntType(32), 8)
        base = builder.bitcast(args[0], vector.as_pointer())
        whole = [builder.load(builder.gep(base, [llvm_ir.IntType(64)(k)]), align=4) for k in range(8)]
        array = context.make_array(signature.args[2])(context, builder, args[2])
        width = builder.extract_value(array.shape, 1)
        for part in range(0, count, 8):
            rows = [builder.shuffle_vector(v, v, llvm_ir.Constant(masks, list(range(part, part + 8)))) for v in whole]
            for i, column in enumerate(_columns_of_rows(builder, rows)):
                index = builder.add(builder.mul(builder.add(args[3], llvm_ir.IntType(64)(part + i)), width), args[4])
                builder.store(column, builder.bitcast(builder.gep(array.data, [index]), row.as_pointer()), align=4)
        return context.get_dummy_value()

    return types.void(src, lanes, dst, types.int64, types.int64), codegen


@intrinsic
def vector_fma(typingctx, accumulator, scale, source, width):
    """``accumulator[0:width] = fma(scale, source[0:width], accumulator[0:width])`` as one ``<width x float>``
    fused multiply-add (llvm.fma: the rounding of the scalar fused multiply-adds that ``fastmath={"contract"}``
    gives elsewhere, so results stay bit-identical to them).  ``accumulator`` and ``source`` are float32 pointers
    (``stack_buffer``, ``element_pointer``); ``width`` a literal.

    For loops too short for LLVM's vectoriser: 4 or 8 frames of 4 rows, fully unrolled before it runs, stayed
    scalar (16-32 ``vfmadd231ss`` per tap, read with inspect_asm).  LLVM lowers the vector type for the host:
    one SSE / NEON register for 4 floats, one AVX (two NEON) for 8."""
    if not isinstance(width, types.IntegerLiteral):
        return None
    if not all(isinstance(a, types.CPointer) and a.dtype == types.float32 for a in (accumulator, source)):
        return None
    count = width.literal_value

    def codegen(context, builder, signature, args):
        vector = llvm_ir.VectorType(llvm_ir.FloatType(), count)
        lane0 = builder.insert_element(llvm_ir.Constant(vector, None), args[1], llvm_ir.IntType(32)(0))
        scales = builder.shuffle_vector(lane0, llvm_ir.Constant(vector, None),  # the scale in every lane
                                        llvm_ir.Constant(llvm_ir.VectorType(llvm_ir.IntType(32), count), [0] * count))
        _accumulate_fma(builder, args[0], scales, args[2], vector)
        return context.get_dummy_value()

    return types.void(accumulator, types.float32, source, width), codegen


def _accumulate_fma(builder, accumulator, factors, source, vector) -> None:
    """*accumulator = llvm.fma(factors, *source, *accumulator) on ``vector`` values (float pointers, align 4)."""
    target = builder.bitcast(accumulator, vector.as_pointer())
    values = builder.load(builder.bitcast(source, vector.as_pointer()), align=4)
    fma = cgutils.get_or_insert_function(builder.module, llvm_ir.FunctionType(vector, [vector] * 3),
                                         f"llvm.fma.v{vector.count}f32")
    builder.store(builder.call(fma, [factors, values, builder.load(target, align=4)]), target, align=4)


@intrinsic
def lanes_fma(typingctx, accumulator, factors, source, width):
    """``accumulator[0:width] = fma(factors[0:width], source[0:width], accumulator[0:width])`` as one
    ``<width x float>`` fused multiply-add, lane by lane: for kernels whose vector runs across channels (a
    block of 8 or 16 channels of a channels-last buffer), where both operands vary by lane.  All three float32
    pointers (``stack_buffer``, ``element_pointer``); ``width`` a literal.  The same loop written over the lanes
    stayed scalar (vfmadd231ss, read with inspect_asm)."""
    if not isinstance(width, types.IntegerLiteral):
        return None
    if not all(isinstance(a, types.CPointer) and a.dtype == types.float32 for a in (accumulator, factors, source)):
        return None
    count = width.literal_value

    def codegen(context, builder, signature, args):
        vector = llvm_ir.VectorType(llvm_ir.FloatType(), count)
        factors = builder.load(builder.bitcast(args[1], vector.as_pointer()), align=4)
        _accumulate_fma(builder, args[0], factors, args[2], vector)
        return context.get_dummy_value()

    return types.void(accumulator, factors, source, width), codegen


def _chunk(count):
    """Floats per vector for ``count`` floats of a row: all of them where a power of two (LLVM splits the vector
    into the host's registers), else 16 (a 48-frame tile as three <16 x float>: as one <48 x float>, not a power of
    two, LLVM's code for it ran 4.4x slower on Zen 4)."""
    return count if count & (count - 1) == 0 else 16


def _gathered_sums(builder, x_p, x_step, values_p, value_step, row_step, indices_p, first, last, count, row_count,
                   way_count):
    """The IR of gather_fma's loop: the sums of ``row_count`` rows of ``count`` floats, as SSA vectors (row k's
    chunks at k*chunks .. (k+1)*chunks-1, _chunk), over j = first .. last-1 of values[j*value_step + k*row_step]
    (row k) times the ``count`` floats at x + column*x_step, column = indices[j] (sparse), or j itself where
    ``indices_p`` is None (a dense strip); ``way_count`` ways interleaved, then added pairwise, then the tail."""
    i64 = llvm_ir.IntType(64)
    chunk = _chunk(count)
    chunks = count // chunk
    vector = llvm_ir.VectorType(llvm_ir.FloatType(), chunk)
    zero = llvm_ir.Constant(vector, None)
    fma = cgutils.get_or_insert_function(builder.module, llvm_ir.FunctionType(vector, [vector] * 3),
                                         f"llvm.fma.v{chunk}f32")

    def add_non_zero(j, sums):
        column = j if indices_p is None else builder.zext(builder.load(builder.gep(indices_p, [j])), i64)
        row = builder.gep(x_p, [builder.mul(column, x_step)])
        x_row = [builder.load(builder.bitcast(builder.gep(row, [i64(i * chunk)]) if i else row, vector.as_pointer()),
                              align=4) for i in range(chunks)]
        base = builder.mul(j, value_step)
        scaled = []
        for k in range(len(sums) // chunks):
            value = builder.load(builder.gep(values_p, [builder.add(base, builder.mul(row_step, i64(k)))]))
            scale = _splat(builder, value, vector)
            scaled += [builder.call(fma, [scale, x_row[i], sums[k * chunks + i]]) for i in range(chunks)]
        return scaled

    def loop(name, j_start, sums_start, step):
        """while j + step <= end: each of ``step`` non-zeros into its own group of ``rows`` sums."""
        entry = builder.block
        head, body, done = (builder.append_basic_block(f"{name}.{part}") for part in ("head", "body", "done"))
        builder.branch(head)
        builder.position_at_end(head)
        j = builder.phi(i64)
        j.add_incoming(j_start, entry)
        sums = []
        for total in sums_start:
            sums.append(builder.phi(vector))
            sums[-1].add_incoming(total, entry)
        builder.cbranch(builder.icmp_signed("<=", builder.add(j, i64(step)), last), body, done)
        builder.position_at_end(body)
        updated = []
        for u in range(step):
            updated += add_non_zero(builder.add(j, i64(u)), sums[u * group : (u + 1) * group])
        j.add_incoming(builder.add(j, i64(step)), builder.block)
        for total, new in zip(sums, updated):
            total.add_incoming(new, builder.block)
        builder.branch(head)
        builder.position_at_end(done)
        return j, sums

    group = row_count * chunks  # the vectors of one way's sums
    j, sums = loop("gather", first, [zero] * (group * way_count), way_count)
    while len(sums) > group:  # the interleaved partial sums, pairwise
        half = len(sums) // 2
        sums = [builder.fadd(a, b) for a, b in zip(sums[:half], sums[half:])]
    if way_count > 1:
        j, sums = loop("gather_tail", j, sums, 1)
    return sums


def _splat(builder, value, vector):
    """The float ``value`` in every lane of a ``vector`` (a broadcast)."""
    zero = llvm_ir.Constant(vector, None)
    lanes = llvm_ir.Constant(llvm_ir.VectorType(llvm_ir.IntType(32), vector.count), [0] * vector.count)
    return builder.shuffle_vector(builder.insert_element(zero, value, llvm_ir.IntType(32)(0)), zero, lanes)


def _literal_shape(rows, width, ways):
    """(width, rows, ways) of literal arguments, ways a power of two (the partial sums are added pairwise) and width
    whole vectors (_chunk), else None."""
    if not all(isinstance(a, types.IntegerLiteral) for a in (rows, width, ways)):
        return None
    if ways.literal_value & (ways.literal_value - 1) or width.literal_value % _chunk(width.literal_value):
        return None
    return width.literal_value, rows.literal_value, ways.literal_value


def _float32_pointers(*arguments):
    return all(isinstance(a, types.CPointer) and a.dtype == types.float32 for a in arguments)


def _row_offsets(builder, sums, count, step):
    """(row, the float offset of each of ``sums``' vectors: row k's chunk i at k*step + i*chunk) for _gathered_sums'
    order."""
    i64, chunk = llvm_ir.IntType(64), _chunk(count)
    chunks = count // chunk
    return [(s // chunks, builder.add(builder.mul(step, i64(s // chunks)), i64((s % chunks) * chunk)))
            for s in range(len(sums))]


def _store_sums(builder, sums, pointer, count, step):
    """Each row k of ``count`` floats to pointer + k * step floats (unaligned vector stores)."""
    for total, (_, at) in zip(sums, _row_offsets(builder, sums, count, step)):
        builder.store(total, builder.bitcast(builder.gep(pointer, [at]), total.type.as_pointer()), align=4)


def _finish_sums(builder, sums, out_p, count, finish_flag, y_p, y_step, bias_p, bias_flag, residual_p, residual_flag,
                 act_code, lo_value, hi_value):
    """Where ``finish_flag`` (int64) is non-zero, row k's sums (``count`` floats) finished and stored at y_p +
    k*y_step: act((sum + bias[k]) + the residual's row at residual_p + k*y_step), each part only where its flag is
    set; else the sums as they are at out_p + k*count (gather_fma_finish)."""
    i64 = llvm_ir.IntType(64)
    vector = sums[0].type
    zero = llvm_ir.Constant(vector, None)

    def when(flag, name, make, values):
        """make(values) where the int64 ``flag`` is non-zero, else ``values`` unchanged."""
        entry = builder.block
        then, merged = builder.append_basic_block(f"{name}.then"), builder.append_basic_block(f"{name}.done")
        builder.cbranch(builder.icmp_unsigned("!=", flag, i64(0)), then, merged)
        builder.position_at_end(then)
        made = make(values)
        made_in = builder.block
        builder.branch(merged)
        builder.position_at_end(merged)
        joined = []
        for old, new in zip(values, made):
            phi = builder.phi(vector)
            phi.add_incoming(old, entry)
            phi.add_incoming(new, made_in)
            joined.append(phi)
        return joined

    def relu(values):
        shifted = [builder.fadd(total, zero) for total in values]
        return [builder.select(builder.fcmp_ordered(">", zero, total), zero, total) for total in shifted]

    def clip(values):
        low, high = _splat(builder, lo_value, vector), _splat(builder, hi_value, vector)
        raised = [builder.select(builder.fcmp_ordered(">", low, total), low, total) for total in values]
        return [builder.select(builder.fcmp_ordered("<", high, total), high, total) for total in raised]

    def is_code(code):
        return builder.zext(builder.icmp_signed("==", act_code, i64(code)), i64)

    with builder.if_else(builder.icmp_unsigned("!=", finish_flag, i64(0))) as (direct, buffered):
        with direct:
            places = _row_offsets(builder, sums, count, y_step)
            values = when(bias_flag, "bias", lambda v: [builder.fadd(total, _splat(builder, builder.load(
                builder.gep(bias_p, [i64(k)])), vector)) for total, (k, _) in zip(v, places)], sums)
            values = when(residual_flag, "residual", lambda v: [builder.fadd(total, builder.load(
                builder.bitcast(builder.gep(residual_p, [at]), vector.as_pointer()), align=4))
                for total, (_, at) in zip(v, places)], values)
            values = when(is_code(ACTIVATIONS["Relu"]), "relu", relu, values)
            values = when(is_code(ACTIVATIONS["Clip"]), "clip", clip, values)
            _store_sums(builder, values, y_p, count, y_step)
        with buffered:
            _store_sums(builder, sums, out_p, count, i64(count))


@intrinsic
def gather_fma(typingctx, out, x, x_stride, values, value_stride, indices, start, end, rows, width, ways):
    """out[k*width : (k+1)*width] = sum over j in [start, end) of values[j*value_stride + k] * the ``width`` floats
    at x + indices[j]*x_stride, for the ``rows`` rows k: the inner loop of the sparse kernels (sparse.py), written
    as LLVM IR so that its sums live in registers whatever the code around it.

    ``out``, ``x`` and ``values`` are float32 pointers, ``indices`` a uint16 pointer (element_pointer,
    stack_buffer); ``rows``, ``width`` and ``ways`` (a power of two) literals.  Each sum is a ``<width x float>``
    SSA value carried round the loop (LLVM splits it into the host's registers: 8 floats a register on AVX2, 16 on
    AVX-512, 4 on NEON), so no store can make LLVM keep it in memory: written as Numba loops over a stack
    buffer, the same loop kept its sums in registers or not depending on the code around it (the BSR strip
    loaded and stored all 16 sums for every block, Zen 3: 2-3x slower; benchmarks/results/sparse_gather.md).
    ``ways`` > 1 interleaves the non-zeros into that many partial sums (more independent multiply-add chains
    when rows x width is too few registers to hide the latency), added pairwise before the last
    ``(end - start) % ways`` non-zeros; results then differ from ways = 1 by float32 rounding, and are the
    same on every call.  Multiply-adds are fused (llvm.fma).  The caller keeps every address in bounds."""
    shape = _literal_shape(rows, width, ways)
    if shape is None or not _float32_pointers(out, x, values) or not _uint16_pointer(indices):
        return None

    def codegen(context, builder, signature, args):
        one = llvm_ir.IntType(64)(1)
        sums = _gathered_sums(builder, *args[1:5], one, *args[5:8], *shape)
        _store_sums(builder, sums, args[0], shape[0], llvm_ir.IntType(64)(shape[0]))
        return context.get_dummy_value()

    return types.void(out, x, types.int64, values, types.int64, indices, types.int64, types.int64, rows, width,
                      ways), codegen


def _uint16_pointer(argument):
    return isinstance(argument, types.CPointer) and argument.dtype == types.uint16


_FINISH_TYPES = (types.int64, None, types.int64, None, types.int64, None, types.int64, types.int64, types.float32,
                 types.float32)  # finish, y, y_stride, bias, has_bias, residual, add_residual, act, lo, hi


def _finish_signature(leading, finishing, literals):
    """The signature of a *_finish intrinsic: its own leading arguments, the finishing ones (the pointers y, bias
    and residual as given, the rest _FINISH_TYPES), then the literals."""
    return types.void(*leading, *(given if kind is None else kind for kind, given in zip(_FINISH_TYPES, finishing)),
                      *literals)


@intrinsic
def gather_fma_finish(typingctx, out, x, x_stride, values, value_stride, indices, start, end, finish, y, y_stride,
                      bias, has_bias, residual, add_residual, act, lo, hi, rows, width, ways):
    """gather_fma, and where ``finish`` is true its sums finished and stored straight into the output instead of
    ``out``: row k's ``width`` floats at y + k*y_stride = act((sum + bias[k]) + residual[k*y_stride ...]), the
    epilogue.store_tile order and rounding, act Relu (max(v + 0, 0), relu_stored) or Clip (min(max(v, lo), hi), as
    Numba's max / min select) applied, any other code none.  ``bias`` is read only where ``has_bias``, ``residual``
    (rows at y_stride too) only where ``add_residual``.  For whole tiles: through the stack buffer, store_tile's
    Numba loops (y sliced, trip counts known at run time, the activation a second pass over y re-reading its fresh
    stores) cost ~19 ns a 64-frame row tile (an all-zero 256 x 256 matrix at T = 512 with bias and Relu: 55.5 us,
    27.7 with the aligned x tile and this; whole 90 % encoders 9-12 % faster, Zen 4; sparse_gather.md)."""
    shape = _literal_shape(rows, width, ways)
    if (shape is None or not _float32_pointers(out, x, values, y, bias, residual) or not _uint16_pointer(indices)):
        return None

    def codegen(context, builder, signature, args):
        one = llvm_ir.IntType(64)(1)
        sums = _gathered_sums(builder, *args[1:5], one, *args[5:8], *shape)
        _finish_sums(builder, sums, args[0], shape[0], *args[8:18])
        return context.get_dummy_value()

    leading = (out, x, types.int64, values, types.int64, indices, types.int64, types.int64)
    return _finish_signature(leading, (finish, y, y_stride, bias, has_bias, residual, add_residual, act, lo, hi),
                             (rows, width, ways)), codegen


@intrinsic
def dense_fma_finish(typingctx, out, x, x_stride, weights, inputs, finish, y, y_stride, bias, has_bias, residual,
                     add_residual, act, lo, hi, rows, width):
    """gather_fma_finish for a dense strip: the sums of the ``rows`` rows k of weights[c*rows + k] (the strip packed
    input by input, pointwise.packed_strips) times the ``width`` floats at x + c*x_stride over every input c <
    ``inputs``, in channel order (the pointwise tile kernel, pointwise.py), then finished into y or stored at ``out``
    the same way."""
    shape = _literal_shape(rows, width, types.IntegerLiteral(1))  # one way: a strip's rows x frames are chains enough
    if shape is None or not _float32_pointers(out, x, weights, y, bias, residual):
        return None

    def codegen(context, builder, signature, args):
        i64 = llvm_ir.IntType(64)
        sums = _gathered_sums(builder, args[1], args[2], args[3], i64(shape[1]), i64(1), None, i64(0), args[4],
                              *shape)  # shape: (width, rows, ways)
        _finish_sums(builder, sums, args[0], shape[0], *args[5:15])
        return context.get_dummy_value()

    leading = (out, x, types.int64, weights, types.int64)
    return _finish_signature(leading, (finish, y, y_stride, bias, has_bias, residual, add_residual, act, lo, hi),
                             (rows, width)), codegen


@intrinsic
def halves_to_floats(typingctx, target, source, count):
    """target[0:count] = the float16 values whose bits are source[0:count] (a uint16 pointer), widened to float32:
    one ``<count x half>`` load and ``fpext`` (F16C's vcvtph2ps on x86, fcvtl on ARM), exact.  Weights kept as
    float16 halve the bytes a few-frame kernel reads per multiply-add (the streaming program's pointwise convs:
    kernels/conv_program.py); Numba has no float16 arithmetic of its own."""
    if not isinstance(count, types.IntegerLiteral):
        return None
    if not (isinstance(target, types.CPointer) and target.dtype == types.float32
            and isinstance(source, types.CPointer) and source.dtype == types.uint16):
        return None
    lanes = count.literal_value

    def codegen(context, builder, signature, args):
        bits = builder.load(builder.bitcast(args[1], llvm_ir.VectorType(llvm_ir.IntType(16), lanes).as_pointer()),
                            align=2)
        halves = builder.bitcast(bits, llvm_ir.VectorType(llvm_ir.HalfType(), lanes))
        floats = builder.fpext(halves, llvm_ir.VectorType(llvm_ir.FloatType(), lanes))
        builder.store(floats, builder.bitcast(args[0], llvm_ir.VectorType(llvm_ir.FloatType(), lanes).as_pointer()),
                      align=4)
        return context.get_dummy_value()

    return types.void(target, source, count), codegen


@intrinsic
def copy_floats(typingctx, target, source, count):
    """target[0:count] = source[0:count] (float32 pointers, ``count`` a literal): one ``<count x float>`` load and
    store.  The streaming program's kernels move their sums from a stack buffer into a row this way: as a loop
    LLVM wrote 16 scalar loads and stores per frame and block (read in the assembly), 60-65 ns of the ~115 a
    depthwise block of 16 channels x 4 frames took at K = 15 (AMD EPYC Zen 1)."""
    if not isinstance(count, types.IntegerLiteral):
        return None
    if not all(isinstance(p, types.CPointer) and p.dtype == types.float32 for p in (target, source)):
        return None
    vector = llvm_ir.VectorType(llvm_ir.FloatType(), count.literal_value).as_pointer()

    def codegen(context, builder, signature, args):
        values = builder.load(builder.bitcast(args[1], vector), align=4)
        builder.store(values, builder.bitcast(args[0], vector), align=4)
        return context.get_dummy_value()

    return types.void(target, source, count), codegen


@njit(inline="always")
def copy_elements(dst, src):
    """dst[i] = src[i] for every i of the 1-D ``dst`` (``src`` at least as long): for the short per-frame copies of
    the recurrent and transducer kernels.  Numba's slice assignment ``dst[:] = src`` first checks the two for
    overlap (and would copy through a temporary): 183 ns for 512 floats against 31 ns for this loop (AMD EPYC,
    Zen 3), a fifth of an LSTM step at H = 128 with R empty."""
    for i in range(dst.shape[0]):
        dst[i] = src[i]


class SerialAndParallel:
    """A kernel with a serial and a parallel build, each compiled (or loaded from the cache) on first use.

    Compiling lazily keeps ``import tinyasr`` cheap: a dense model never pays for the sparse kernels, and a
    one-thread process never builds the parallel variants (cold compile of everything took ~30 s here).
    """

    def __init__(self, make, signature, options):
        self._make, self._signature, self._options = make, signature, options
        self._builds = {}
        self.__name__ = self.__qualname__ = make.__name__
        self.__doc__ = make.__doc__

    def _build(self, parallel: bool):
        build = self._builds.get(parallel)
        if build is None:
            kernel = self._make(prange if parallel else range)
            build = njit(self._signature, cache=True, parallel=parallel, **self._options)(kernel)
            self._builds[parallel] = build
        return build

    @property
    def serial(self):
        return self._build(False)

    @property
    def parallel(self):
        return self._build(True)

    def __call__(self, work, *args):
        if threads.serial_only(work):  # checked first: no context manager on the (streaming) fast path
            (self._builds.get(False) or self._build(False))(*args)
            return
        with threads.parallel_region(work) as use_parallel:
            self._build(use_parallel)(*args)


def serial_and_parallel(signature, **options):
    """Decorator: ``make(range)`` and ``make(prange)`` compiled with ``signature`` (cached), lazily.

    Returns ``run(work, *args)``, which calls the parallel build when threads.py grants a parallel
    region for ``work`` (multiply-adds, or elements for elementwise kernels), else the serial one.
    """

    def build(make):
        return SerialAndParallel(make, signature, options)

    return build
