"""Power spectra of many real rows at once, the rows side by side in vector lanes: the front end's STFT frames and
the speech gate's 100 ms spans.

numpy's rfft costs ~6 us a call before any arithmetic and ~1 us a 512-point row after (numpy 2.4, Zen 4): a streamed
80 ms chunk's 8 frames took ~11-17 us with their power, a 10 s file's 1000 frames ~0.9 ms.  Here LANES rows are
transformed together, each complex value a vector of LANES float lanes, so that every butterfly is a few vector
operations for LANES rows: the rows are transposed into a [samples, LANES] buffer in 8 x 8 blocks (sample 2k the
real part of z_k, 2k + 1 its imaginary part), a self-sorting (Stockham) mixed-radix FFT of length N / 2 runs on z,
and the split that gives the real rows' N / 2 + 1 bins writes their power, bin-major as it is computed or transposed
back to rows.  Radices 4, 2, 3 and 5 (512 = 4^4 x 2, 1600 = 4^3 x 5^2, 400 = 4^2 x 5^2 ...); a length with another
prime factor, or one that is not a multiple of 16, has no plan and the caller keeps numpy's.  Sums in the rows'
type: in float64 (the front end) the two agree to ~1e-15 of a row's largest power, in float32 (the speech gate) to
~3e-7 (tests/test_frontend.py).  Measured: benchmarks/results/history_znver4.md (session 16); float32 against
float64, 64 rows of 1600 / 800 / 400 samples: 4.1 / 2.3 / 0.9 against 14.2 / 3.9 / 1.9 us a row (AMD EPYC Zen 1,
where the float64 buffers of a 1600-sample group, 100 KB each, outgrow the 32 KB L1).
"""

from __future__ import annotations

import functools
from typing import NamedTuple, Optional

import llvmlite.ir as llvm_ir
import numpy as np
from numba import njit, types
from numba.extending import intrinsic

from tinyasr.kernels import tuning
from tinyasr.kernels._compile import element_pointer, transpose_8x8

LANES = 8  # rows per vector: one AVX-512 / two AVX2 / four NEON registers of float64, half that of float32
RADICES = (4, 2, 3, 5)  # tried in this order


class Plan(NamedTuple):
    """What the kernel needs for real rows of ``size`` samples: the radices of size / 2 in order, each stage's
    twiddles w[p, j] = exp(-2 pi i p j / n) (n the stage's length, p < n / r, j < r) flat and their offsets, and
    the split's exp(-2 pi i k / size), k <= size / 2."""

    size: int
    radices: np.ndarray
    twiddle_re: np.ndarray
    twiddle_im: np.ndarray
    offsets: np.ndarray
    split_re: np.ndarray
    split_im: np.ndarray


@functools.lru_cache(maxsize=16)
def plan(size: int, dtype=np.float64) -> Optional[Plan]:
    """The plan for real rows of ``size`` samples computed in ``dtype`` (float64 or float32: its twiddles rounded
    to it), or None where there is none."""
    if size < 16 or size % 16:
        return None
    n, radices = size // 2, []
    for radix in RADICES:
        while n % radix == 0 and n > 1:
            radices.append(radix)
            n //= radix
    if n != 1:
        return None
    twiddles, offsets, length = [], [], size // 2
    for radix in radices:
        m = length // radix
        offsets.append(sum(t.size for t in twiddles))
        twiddles.append(np.exp(-2j * np.pi * np.outer(np.arange(m), np.arange(radix)) / length).reshape(-1))
        length = m
    flat = np.concatenate(twiddles)
    split = np.exp(-2j * np.pi * np.arange(size // 2 + 1) / size)
    return Plan(size, np.array(radices, np.int64), flat.real.astype(dtype), flat.imag.astype(dtype),
                np.array(offsets, np.int64), split.real.astype(dtype), split.imag.astype(dtype))


def power_spectra(rows: np.ndarray, bin_major: bool = False) -> np.ndarray:
    """|np.fft.rfft(rows, axis=1)|^2 for rows [count, size]: [count, size / 2 + 1], or with ``bin_major``
    [size / 2 + 1, count], a column per row (the mel filterbank sums over bins with the frames in vector lanes).
    Computed in the rows' float type: float64 (the front end) or float32 (the speech gate's tone check, whose
    decision has room for float32's rounding, and which then moves half the bytes and fits twice the lanes in a
    vector).  The lanes kernel where the size has a plan and there is at least a whole vector of rows, or fewer
    where it measured faster than numpy's rfft on one row on this CPU (lanes_for_few_rows); numpy's rfft
    otherwise."""
    dtype = np.float32 if rows.dtype == np.float32 else np.float64
    fft_plan = plan(rows.shape[1], dtype)
    if lanes_take(fft_plan, rows.shape[0], dtype):
        return power_lanes(rows, fft_plan, bin_major)
    power = _numpy_power(rows, dtype)
    return np.ascontiguousarray(power.T) if bin_major else power


def lanes_take(fft_plan: Optional[Plan], rows: int, dtype) -> bool:
    """Whether the lanes kernel transforms ``rows`` rows with ``fft_plan`` (power_spectra's rule, which
    FeatureCore's fused chain follows too): a plan, and a whole vector of rows or fewer where it measured faster."""
    return fft_plan is not None and rows > 0 and (rows >= LANES or lanes_for_few_rows(fft_plan.size, dtype))


@functools.lru_cache(maxsize=16)
def lanes_for_few_rows(size: int, dtype) -> bool:
    """Whether the lanes kernel beats numpy's rfft (and pair_powers) on one row of ``size`` samples in ``dtype`` on
    this CPU (a size with a plan), measured once per CPU (tuning.fastest).  Its cost is about flat up to LANES rows
    while numpy's grows with them, so winning at one row it wins at every count.  Measured: on Zen 4, 4 spans of
    1600 samples in float64 29 us against numpy's 22; on AMD EPYC Zen 1 in float32, one row 31 against 39 us, 4 rows
    32 against 58 (the speech gate's 4 spans an 80 ms chunk), in float64 4 rows 59 against 49."""
    fft_plan = plan(size, dtype)
    row = np.random.default_rng(0).standard_normal((1, size)).astype(dtype)
    candidates = {"lanes": lambda: power_lanes(row, fft_plan), "numpy": lambda: _numpy_power(row, dtype)}
    family = f"power spectra of one row: {size} {np.dtype(dtype).name}"
    return tuning.fastest(family, candidates, *tuning.cache_of(lane_powers)) == "lanes"


def _numpy_power(rows: np.ndarray, dtype) -> np.ndarray:
    spectra = np.fft.rfft(rows.astype(dtype, copy=False), axis=1).view(dtype)  # complex as float pairs
    return pair_powers(spectra, np.empty((rows.shape[0], spectra.shape[1] // 2), dtype))


@njit(cache=True)
def pair_powers(spectra, out):
    """out[i, k] = |X_k|^2 of complex spectra given as pairs of floats ([count, 2 * bins], an rfft's
    ``.view(np.float64)``), each row read as a row so that the loop vectorises; returns out."""
    for i in range(spectra.shape[0]):
        spectrum, power = spectra[i], out[i]
        for k in range(power.shape[0]):
            power[k] = spectrum[2 * k] * spectrum[2 * k] + spectrum[2 * k + 1] * spectrum[2 * k + 1]
    return out


def power_lanes(rows: np.ndarray, fft_plan: Plan, bin_major: bool = False) -> np.ndarray:
    """power_spectra by the lanes kernel, for rows [count, fft_plan.size], in the plan's float type."""
    bins, dtype = fft_plan.size // 2 + 1, fft_plan.twiddle_re.dtype
    out = np.empty((bins, rows.shape[0]) if bin_major else (rows.shape[0], bins), dtype)
    lane_powers(np.ascontiguousarray(rows, dtype), out, bin_major, fft_plan.radices, fft_plan.twiddle_re,
                fft_plan.twiddle_im, fft_plan.offsets, fft_plan.split_re, fft_plan.split_im)
    return out


@njit(cache=True)
def lane_powers(rows, out, bin_major, radices, twiddle_re, twiddle_im, offsets, split_re, split_im):
    count, size = rows.shape
    half, bins = size // 2, size // 2 + 1
    a, b = np.empty((size, LANES), rows.dtype), np.empty((size, LANES), rows.dtype)  # z_k at rows 2k (real), 2k + 1
    power = np.empty((bins, LANES), rows.dtype)
    whole = bins - bins % 8
    for first in range(0, count, LANES):
        lanes = min(LANES, count - first)
        source, row0 = rows, first
        if lanes < LANES:  # its rows, zeros for the missing ones (loops: Numba took 3 s to compile 2-D slice copies)
            source, row0 = np.zeros((LANES, size), rows.dtype), 0
            for lane in range(lanes):
                for k in range(size):
                    source[lane, k] = rows[first + lane, k]
        for c in range(0, size, 8):
            transpose_8x8(source, row0, c, a, c, 0)
        z = b if _stockham(a, b, radices, twiddle_re, twiddle_im, offsets) else a
        zp, target = element_pointer(z, 0), element_pointer(power, 0)
        for k in range(bins):
            split_power(zp, k % half, (half - k) % half, split_re[k], split_im[k], target, k)
        if bin_major:
            for k in range(bins):
                for lane in range(lanes):
                    out[k, first + lane] = power[k, lane]
        elif lanes == LANES:  # back to rows in 8 x 8 blocks, the last bins one by one
            for k in range(0, whole, 8):
                transpose_8x8(power, k, 0, out, first, k)
            for k in range(whole, bins):
                for lane in range(LANES):
                    out[first + lane, k] = power[k, lane]
        else:
            for lane in range(lanes):
                for k in range(bins):
                    out[first + lane, k] = power[k, lane]


@njit(inline="always")
def _stockham(x, y, radices, twiddle_re, twiddle_im, offsets):
    """The complex FFT of each lane of x along n (x [2n, LANES], real and imaginary rows interleaved), x and y used
    in turn; True when it ends in y.

    Decimation in frequency, self-sorting: a stage of radix r on a length n with stride s reads x[q + s (p + k m)]
    (m = n / r, k < r), writes the r-point DFT's outputs times w[p, j] to y[q + s (r p + j)], and leaves a
    length m with stride s r."""
    n, stride, in_y = x.shape[0] // 2, 1, False
    xp, yp = element_pointer(x, 0), element_pointer(y, 0)
    for stage in range(radices.shape[0]):
        radix = radices[stage]
        m = n // radix
        source, target = (yp, xp) if in_y else (xp, yp)
        if radix == 4:
            _butterflies(source, target, m, stride, twiddle_re, twiddle_im, offsets[stage], 4)
        elif radix == 2:
            _butterflies(source, target, m, stride, twiddle_re, twiddle_im, offsets[stage], 2)
        elif radix == 3:
            _butterflies(source, target, m, stride, twiddle_re, twiddle_im, offsets[stage], 3)
        else:
            _butterflies(source, target, m, stride, twiddle_re, twiddle_im, offsets[stage], 5)
        in_y = not in_y
        n, stride = m, stride * radix
    return in_y


@njit(inline="always")
def _butterflies(x, y, m, stride, twiddle_re, twiddle_im, offset, radix):
    for p in range(m):
        wr, wi = element_pointer(twiddle_re, offset + p * radix), element_pointer(twiddle_im, offset + p * radix)
        for q in range(stride):
            dft_butterfly(x, q + stride * p, stride * m, y, q + stride * radix * p, stride, wr, wi, radix)


FLOATS = (types.float32, types.float64)  # the kernels' float types: the lanes are <LANES x float> or <LANES x double>


def _same_float_pointers(*arguments) -> bool:
    """True when every argument is a pointer to the same float type of FLOATS."""
    if not all(isinstance(a, types.CPointer) for a in arguments):
        return False
    return arguments[0].dtype in FLOATS and all(a.dtype == arguments[0].dtype for a in arguments)


def _vector_type(element):
    return llvm_ir.VectorType(element, LANES)


def _alignment(element) -> int:
    return 8 if isinstance(element, llvm_ir.DoubleType) else 4


def _complex_at(builder, pointer, row):
    """(real, imaginary) vector pointers of complex row ``row`` of an interleaved [2n, LANES] buffer."""
    vector = _vector_type(pointer.type.pointee)
    base = builder.mul(row, llvm_ir.IntType(64)(2 * LANES))
    return tuple(builder.bitcast(builder.gep(pointer, [builder.add(base, llvm_ir.IntType(64)(part * LANES))]),
                                 vector.as_pointer()) for part in (0, 1))


def _splat(builder, scalar):
    vector = _vector_type(scalar.type)
    first = builder.insert_element(llvm_ir.Constant(vector, None), scalar, llvm_ir.IntType(32)(0))
    return builder.shuffle_vector(first, llvm_ir.Constant(vector, None),
                                  llvm_ir.Constant(llvm_ir.VectorType(llvm_ir.IntType(32), LANES), [0] * LANES))


def _constant(value: float, element):
    return llvm_ir.Constant(_vector_type(element), [llvm_ir.Constant(element, value)] * LANES)


def _dft(builder, a):
    """The DFT b_j = sum_k a_k exp(-2 pi i j k / r) of r = len(a) complex vectors, r in 2, 3, 4, 5: the sums and
    differences of the symmetric pairs first, a real constant times each (radix 3 / 5), so a radix-5 butterfly
    is 16 multiplies instead of the 64 of its plain sums."""
    add, sub, mul = builder.fadd, builder.fsub, builder.fmul
    element = a[0][0].type.element

    def plus(u, v):
        return add(u[0], v[0]), add(u[1], v[1])

    def minus(u, v):
        return sub(u[0], v[0]), sub(u[1], v[1])

    def scaled(u, c):
        return mul(u[0], _constant(c, element)), mul(u[1], _constant(c, element))

    def turned(m, n):  # (m - i n, m + i n)
        return (add(m[0], n[1]), sub(m[1], n[0])), (sub(m[0], n[1]), add(m[1], n[0]))

    r = len(a)
    if r == 2:
        return [plus(a[0], a[1]), minus(a[0], a[1])]
    if r == 4:
        t0, t1, t2 = plus(a[0], a[2]), minus(a[0], a[2]), plus(a[1], a[3])
        t3 = sub(a[1][1], a[3][1]), sub(a[3][0], a[1][0])  # (a1 - a3) (-i)
        return [plus(t0, t2), plus(t1, t3), minus(t0, t2), minus(t1, t3)]
    if r == 3:
        t1, t2 = plus(a[1], a[2]), minus(a[1], a[2])
        b1, b2 = turned(plus(a[0], scaled(t1, -0.5)), scaled(t2, np.sin(2 * np.pi / 3)))
        return [plus(a[0], t1), b1, b2]
    c1, c2, s1, s2 = np.cos(2 * np.pi / 5), np.cos(4 * np.pi / 5), np.sin(2 * np.pi / 5), np.sin(4 * np.pi / 5)
    t1, t2, t3, t4 = plus(a[1], a[4]), plus(a[2], a[3]), minus(a[1], a[4]), minus(a[2], a[3])
    m1 = plus(a[0], plus(scaled(t1, c1), scaled(t2, c2)))
    m2 = plus(a[0], plus(scaled(t1, c2), scaled(t2, c1)))
    n1 = plus(scaled(t3, s1), scaled(t4, s2))
    n2 = minus(scaled(t3, s2), scaled(t4, s1))
    (b1, b4), (b2, b3) = turned(m1, n1), turned(m2, n2)
    return [plus(a[0], plus(t1, t2)), b1, b2, b3, b4]


@intrinsic
def dft_butterfly(typingctx, x, source, step, y, target, stride, w_re, w_im, radix):
    """One r-point DFT on LANES rows at once: a_k = x[source + k step] (k < r; complex rows of an interleaved
    [2n, LANES] buffer), y[target + j stride] = (sum_k a_k exp(-2 pi i j k / r)) w_j for j < r.  Float64 or
    float32 pointers, all one type (element_pointer; ``w`` this butterfly's twiddles); ``radix`` a literal.  LLVM
    IR on <LANES x double> (or float) values: the same sums written as loops over the lanes stayed scalar (vmulsd,
    read with inspect_asm), LLVM unrolling each 8-lane loop before its vectoriser saw it."""
    if not isinstance(radix, types.IntegerLiteral) or radix.literal_value not in (2, 3, 4, 5):
        return None
    if not _same_float_pointers(x, y, w_re, w_im):
        return None
    r = radix.literal_value

    def codegen(context, builder, signature, args):
        xp, source, step, yp, target, stride, wr, wi, _ = args
        align = _alignment(xp.type.pointee)

        def row(base, scale, k):
            return builder.add(base, builder.mul(scale, llvm_ir.IntType(64)(k)))

        a = []
        for k in range(r):
            re_pointer, im_pointer = _complex_at(builder, xp, row(source, step, k))
            a.append((builder.load(re_pointer, align=align), builder.load(im_pointer, align=align)))
        for j, (re, im) in enumerate(_dft(builder, a)):
            if j:  # w_0 = exp(0) = 1
                c = _splat(builder, builder.load(builder.gep(wr, [llvm_ir.IntType(64)(j)])))
                s = _splat(builder, builder.load(builder.gep(wi, [llvm_ir.IntType(64)(j)])))
                re, im = (builder.fsub(builder.fmul(re, c), builder.fmul(im, s)),
                          builder.fadd(builder.fmul(re, s), builder.fmul(im, c)))
            re_pointer, im_pointer = _complex_at(builder, yp, row(target, stride, j))
            builder.store(re, re_pointer, align=align)
            builder.store(im, im_pointer, align=align)
        return context.get_dummy_value()

    return types.void(x, types.int64, types.int64, y, types.int64, types.int64, w_re, w_im, radix), codegen


@intrinsic
def split_power(typingctx, z, j, r, c, s, power, k):
    """power[k] = |X_k|^2 for LANES real rows at once, X_k = E + (c + i s) O with E = (Z_j + conj Z_r) / 2 and
    O = -i (Z_j - conj Z_r) / 2 (j = k mod N/2, r = -k mod N/2, c + i s = exp(-2 pi i k / N)): the bins of the
    real rows from the half-length transform Z of their even / odd samples.  Float64 (or float32) pointers to z
    (interleaved [N, LANES]) and power ([N/2 + 1, LANES]), c and s of the same type."""
    if not _same_float_pointers(z, power):
        return None

    def codegen(context, builder, signature, args):
        zp, j, r, c, s, target, k = args
        add, sub, mul = builder.fadd, builder.fsub, builder.fmul
        element = zp.type.pointee
        align, half = _alignment(element), _constant(0.5, element)
        (a_re, a_im), (b_re, b_im) = ((builder.load(p, align=align) for p in _complex_at(builder, zp, index))
                                      for index in (j, r))
        b_im = builder.fneg(b_im)
        e_re, e_im = mul(half, add(a_re, b_re)), mul(half, add(a_im, b_im))
        o_re, o_im = mul(half, sub(a_im, b_im)), mul(half, sub(b_re, a_re))
        cv, sv = _splat(builder, c), _splat(builder, s)
        x_re = add(e_re, sub(mul(cv, o_re), mul(sv, o_im)))
        x_im = add(e_im, add(mul(cv, o_im), mul(sv, o_re)))
        row = builder.gep(target, [builder.mul(k, llvm_ir.IntType(64)(LANES))])
        pointer = builder.bitcast(row, _vector_type(element).as_pointer())
        builder.store(add(mul(x_re, x_re), mul(x_im, x_im)), pointer, align=align)
        return context.get_dummy_value()

    return types.void(z, types.int64, types.int64, z.dtype, z.dtype, power, types.int64), codegen
