"""exp for float32 that LLVM vectorises (the softmax, sigmoid and Swish kernels of transformer blocks), and
all_finite, the audio checks' NaN / Inf test in one call.

Numba compiles ``np.exp`` on float32 to a call of the C library's ``expf`` per element (no SVML in a plain
Numba install), which no vectoriser can widen: Conformer-CTC's sigmoids and attention softmaxes spent 5-13 ns
per element there, half of the encoder's non-matmul time.  ``exp32`` is Cephes' expf: n = round(x / ln 2),
r = x - n ln 2 (in two parts), a degree-7 polynomial for exp(r), times 2**n built from the exponent bits
(an LLVM bitcast, so no ISA-specific code: the same IR vectorises for AVX2, AVX-512 and NEON).

Accuracy: within 1 ulp of exp on [-87.3, 88.3] (0.99 ulp measured over a million points;
tests/test_kernels.py checks it against float64 numpy).  Speed: 1.7 ns per element vs 5.9 for expf
(2026-12-06, AMD EPYC, AVX2); Conformer-CTC's Sigmoid 598 -> 79 us on its [250, 352] FFN activation.  Outside: exp(x) = 0 below -87.34 (numpy gives denormals down to -103.9),
+inf above 88.37 (numpy: +inf above 88.72); NaN stays NaN.
"""

from __future__ import annotations

import llvmlite.ir as llvm_ir
import numpy as np
from numba import njit, types
from numba.extending import intrinsic

# The fastmath flags of every kernel that calls exp32: multiply-adds contracted to FMAs (no other relaxation, so
# NaN and inf behave as without it): exp32 0.79 -> 0.49 ns per element, still within 1 ulp (0.98 measured), and
# Swish 0.94 -> 0.70 ns (AMD EPYC Zen 3, 2026-12-06).  Flags apply where the code is compiled: exp32 is inlined,
# so the caller's decorator must carry them.
CONTRACT = {"contract"}
LOWEST = np.float32(-87.33654)  # ln(2**-126): smaller n would leave the normal exponent range
HIGHEST = np.float32(88.37626)  # Cephes' MAXLOGF; above it n + 127 may reach 255 (the inf exponent)
LOG2E = np.float32(1.44269504088896341)
LN2_HIGH = np.float32(0.693359375)  # ln 2 = LN2_HIGH + LN2_LOW; LN2_HIGH * n is exact for |n| <= 128
LN2_LOW = np.float32(-2.12194440e-4)
HALF = np.float32(0.5)
ONE = np.float32(1.0)
ZERO = np.float32(0.0)
INF = np.float32(np.inf)
P0, P1, P2 = np.float32(1.9875691500e-4), np.float32(1.3981999507e-3), np.float32(8.3334519073e-3)
P3, P4, P5 = np.float32(4.1665795894e-2), np.float32(1.6666665459e-1), np.float32(5.0000001201e-1)


@intrinsic
def _two_to_the(typingctx, n):
    """2**n for an integral float32 n in [-126, 127], from the exponent bits: (n + 127) << 23 as a float."""
    if n != types.float32:
        return None

    def codegen(context, builder, signature, args):
        i32 = llvm_ir.IntType(32)
        exponent = builder.add(builder.fptosi(args[0], i32), i32(127))
        return builder.bitcast(builder.shl(exponent, i32(23)), llvm_ir.FloatType())

    return types.float32(types.float32), codegen


@njit(inline="always")
def exp32(x):
    """exp(x) for a float32 x, branch-free (selects only), so loops calling it vectorise."""
    c = LOWEST if x < LOWEST else (HIGHEST if x > HIGHEST else x)  # NaN compares false: stays NaN
    n = np.floor(c * LOG2E + HALF)
    r = c - n * LN2_HIGH
    r = r - n * LN2_LOW
    p = ((((P0 * r + P1) * r + P2) * r + P3) * r + P4) * r + P5
    y = (p * r * r + r + ONE) * _two_to_the(n)
    y = INF if x > HIGHEST else y
    return ZERO if x < LOWEST else y


@njit(inline="always")
def lane_max(row):
    """max of a float32 row (size >= 1) in eight interleaved lanes, which LLVM keeps in one vector register
    (a single running max is a serial chain it may not reorder); max is exact in any order.  NaN is dropped,
    as a running ``max`` drops it."""
    top = row[0]
    t0 = t1 = t2 = t3 = t4 = t5 = t6 = t7 = top
    n = row.shape[0]
    body = n - n % 8
    for j in range(0, body, 8):
        t0 = max(t0, row[j])
        t1 = max(t1, row[j + 1])
        t2 = max(t2, row[j + 2])
        t3 = max(t3, row[j + 3])
        t4 = max(t4, row[j + 4])
        t5 = max(t5, row[j + 5])
        t6 = max(t6, row[j + 6])
        t7 = max(t7, row[j + 7])
    for j in range(body, n):
        top = max(top, row[j])
    return max(max(max(t0, t1), max(t2, t3)), max(max(t4, t5), max(max(t6, t7), top)))


UNMASKED, MASK_SELECT, MASK_MULTIPLY = 0, 1, 2  # masked_lane_sum's modes: the row as it is, where(m != 0, row, 0), row * m


@njit(inline="always")
def masked_value(value, weight, mode):
    """One element as masked_lane_sum adds it: ``value``; with MASK_SELECT ``value`` where ``weight`` is nonzero,
    else 0 (a NaN in padding gives 0); with MASK_MULTIPLY ``value * weight``."""
    if mode == MASK_SELECT:
        return value if weight != 0 else ZERO
    if mode == MASK_MULTIPLY:
        return value * weight
    return value


@njit(inline="always")
def lane_total(s0, s1, s2, s3, s4, s5, s6, s7, tail):
    """The eight lanes and the tail added in lane_sum's fixed order (log_softmax_columns, which keeps the lanes of
    many columns, ends with this too, so its bits match lane_sum's)."""
    return ((s0 + s1) + (s2 + s3)) + ((s4 + s5) + (s6 + s7)) + tail


@njit(inline="always")
def masked_lane_sum(row, m, mode):
    """sum of a float32 row, each element masked by ``m`` as ``mode`` says (masked_value), in eight interleaved
    float32 lanes: a fixed order, independent of the CPU, and no masked copy of the row stored.  ``mode`` is the
    same for every element, so LLVM takes its branch out of the loop."""
    s0 = s1 = s2 = s3 = s4 = s5 = s6 = s7 = ZERO
    n = row.shape[0]
    body = n - n % 8
    for j in range(0, body, 8):
        s0 += masked_value(row[j], m[j], mode)
        s1 += masked_value(row[j + 1], m[j + 1], mode)
        s2 += masked_value(row[j + 2], m[j + 2], mode)
        s3 += masked_value(row[j + 3], m[j + 3], mode)
        s4 += masked_value(row[j + 4], m[j + 4], mode)
        s5 += masked_value(row[j + 5], m[j + 5], mode)
        s6 += masked_value(row[j + 6], m[j + 6], mode)
        s7 += masked_value(row[j + 7], m[j + 7], mode)
    tail = ZERO
    for j in range(body, n):
        tail += masked_value(row[j], m[j], mode)
    return lane_total(s0, s1, s2, s3, s4, s5, s6, s7, tail)


@njit(inline="always")
def lane_sum(row):
    """sum of a float32 row in masked_lane_sum's eight interleaved lanes, unmasked."""
    return masked_lane_sum(row, row, UNMASKED)


@njit(cache=True, fastmath={"reassoc"})
def all_finite(x) -> bool:
    """Whether every element of a float array is finite: the sum of x * 0 is 0 unless some x is NaN or +-inf (0
    times them is NaN), summed in lanes (reassoc only: no flag lets LLVM drop the product or assume finite values).
    One Numba call where ``np.all(np.isfinite(x))`` is three numpy calls: on a stream's 80 ms chunk of 1280 float32
    samples 0.97 against 6.4 us; on a minute of audio 249 against 188 us (numpy's loops are wider) (AMD EPYC Zen 1)."""
    flat = x.ravel()
    total = flat.dtype.type(0.0)
    for i in range(flat.shape[0]):
        total += flat[i] * flat.dtype.type(0.0)
    return total == 0.0
