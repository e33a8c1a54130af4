"""The energy VAD's per-frame arithmetic (tinyasr.pipeline.vad.EnergyVAD): the noise floor as a running
percentile of frame levels, the speech probability from the level's margin over it, and the tone check's
share of a span's power in its strongest band of adjacent FFT bins, after a bound on the spread of that power from
three autocorrelations that clears most spans of speech without their FFT.

A stream feeds the VAD 100 ms at a time, five frames, so numpy's whole-array calls (sliding windows, a
sort of a [frames, window] array, NaN masks) cost more in call overhead than in arithmetic: a third of
the detector's time per chunk, and the detector is a fifth of a stream's compute.  One loop per call here, and
one call (energy_frames, then release_frames) for all of a chunk's arithmetic but a rare span's FFT.  Tested
against ``np.nanpercentile`` over the same windows and against cumulative sums over the spectra (tests/test_vad.py).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from tinyasr.kernels.vector_math import lane_max, lane_sum


@njit(cache=True, fastmath={"reassoc"})
def frame_levels(audio, frame):
    """Each whole ``frame``-sample frame's level in dB: 10 log10(mean square + 1e-10), squares in float64 whatever
    ``audio``'s float type."""
    levels = np.empty(audio.shape[0] // frame)
    for i in range(levels.shape[0]):
        total = 0.0
        piece = audio[i * frame:(i + 1) * frame]
        for k in range(frame):  # indexed, as in windowed_spans: iterating the slice's values is slower
            value = np.float64(piece[k])
            total += value * value
        levels[i] = 10.0 * math.log10(total / frame + 1e-10)
    return levels


@njit(cache=True)
def speech_probabilities(padded, window, q, snr_db, min_db, ordered, n):
    """``padded``: frame levels in dB (float64), NaN where a window slot lies before anything was heard; the
    last ``len(padded) - window + 1`` entries are the frames to judge.  Frame i's floor is the ``q``-th
    percentile (linear interpolation, NaNs left out) of the ``window`` levels ending at it; its probability
    is a logistic of ``(level - max(floor + snr_db, min_db)) / 2``.  Returns the probabilities and the new ``n``.

    ``ordered[:n]`` holds the levels of padded[:window - 1] sorted, NaNs left out, and is left holding those of
    the last window - 1 levels: the caller keeps it from call to call, so the window is kept sorted as it
    slides (one removal and one insertion per frame, found by bisection).  Sorting each window afresh cost
    6 us a frame; sorting the 149 levels carried into each 80 ms chunk, 5 us a chunk."""
    count = padded.shape[0] - window + 1
    probs = np.empty(max(count, 0))
    for i in range(count):
        n = _insert(ordered, n, padded[i + window - 1])
        position = q / 100.0 * (n - 1)
        low = int(math.floor(position))
        high = min(low + 1, n - 1)
        floor = ordered[low] + (position - low) * (ordered[high] - ordered[low])
        margin = padded[i + window - 1] - max(floor + snr_db, min_db)
        probs[i] = 1.0 / (1.0 + math.exp(-margin / 2.0))
        n = _remove(ordered, n, padded[i])
    return probs, n


@njit(inline="always")
def _insert(ordered, n, value):
    """Insert ``value`` (skipped if NaN) into the sorted ``ordered[:n]``; -> the new count."""
    if math.isnan(value):
        return n
    at = np.searchsorted(ordered[:n], value)
    for j in range(n, at, -1):
        ordered[j] = ordered[j - 1]
    ordered[at] = value
    return n + 1


@njit(inline="always")
def _remove(ordered, n, value):
    """Remove one ``value`` (skipped if NaN) from the sorted ``ordered[:n]``; -> the new count."""
    if math.isnan(value):
        return n
    for j in range(np.searchsorted(ordered[:n], value), n - 1):
        ordered[j] = ordered[j + 1]
    return n - 1


@njit(cache=True, fastmath={"reassoc"})
def windowed_spans(audio, ends, frame, window):
    """Row i: the ``window.size`` samples of ``audio`` ending with frame ``ends[i]`` (frames of ``frame`` samples;
    ``audio`` starts ``window.size - frame`` samples before frame 0), less their mean, times ``window``: the
    tone check's FFT input in one pass instead of numpy's gather, mean, subtraction and product.

    Stored as float32: the FFT then runs in float32 (fft.power_spectra), 1600-sample spans 14.2 -> 4.1 us each
    (AMD EPYC Zen 1), where a tone's share of >= 0.9995 against speech's <= 0.992 leaves float32's ~1e-7 of
    rounding no say in the decision.  Spans one frame apart share all but a frame of their samples, so each
    frame's sum is taken once (float64) and a span's mean from its frames' sums; the product in the audio's and
    window's type (float32 in the gate: twice the lanes), 3.4 -> 1.6 ms a minute of speech (Zen 1).  Each span
    is read as a slice (indexing ``spans[i, k]`` and ``audio[start + k]`` kept LLVM from vectorising: 2-3x
    slower)."""
    size = window.shape[0]
    whole = size // frame  # whole frames in a span; any rest of it summed sample by sample
    spans = np.empty((ends.shape[0], size), np.float32)
    if ends.shape[0] == 0:
        return spans
    first = ends.min()  # the sums of the frames from the first span's to the last span's last whole frame
    sums = np.empty(ends.max() + whole - first)
    for f in range(sums.shape[0]):
        piece, total = audio[(first + f) * frame:(first + f + 1) * frame], 0.0
        for k in range(frame):  # indexed: iterating ``for value in piece`` ran the whole kernel 1.8x slower
            total += piece[k]
        sums[f] = total
    for i in range(ends.shape[0]):
        row, piece = spans[i], audio[ends[i] * frame:ends[i] * frame + size]
        total = 0.0
        for f in range(ends[i] - first, ends[i] - first + whole):
            total += sums[f]
        for k in range(whole * frame, size):
            total += piece[k]
        mean = piece.dtype.type(total / size)
        for k in range(size):
            row[k] = (piece[k] - mean) * window[k]
    return spans


@njit(cache=True)
def tonal_spans(power, bins, share):
    """Per row of ``power`` [spans, frequencies] (|X|^2: fft.power_spectra): whether some ``bins`` adjacent bins
    hold at least ``share`` of the row's power.  Each band's sum is taken whole, one pass over the row per bin of
    the band, and the total in interleaved sums (lane_sum), so every loop vectorises: a running band sum, each add
    waiting for the last, made the kernel 1.5-2x slower (801-bin rows, Zen 4); numpy's cumulative sums, band
    differences and maxima over a [32, 801] batch cost 2/3 of its FFT."""
    spans, width = power.shape
    tonal = np.zeros(spans, np.bool_)
    bands = max(1, width - bins + 1)  # a row narrower than the band is one band of all its bins
    band = np.empty(bands, power.dtype)  # float32 spectra: twice the lanes, no conversions (4.6 -> 3.0 ms a minute)
    for s in range(spans):
        row = power[s]
        total = lane_sum(row)
        for k in range(bands):
            band[k] = row[k]
        for j in range(1, min(bins, width)):
            for k in range(bands):
                band[k] += row[k + j]
        tonal[s] = lane_max(band) >= share * total + 1e-20
    return tonal


# Lags of broadband_spans' tests as divisors of the span (1600 samples at 16 kHz: 1, 2, 0.5 ms), tried in this
# order (the second reuses the first's product at twice its lag).  Measured on a minute of read English speech,
# the 2928 spans the gate looks at: the first lag clears 99 % of them, with the other two 99.5 %; pure tones at
# 100 Hz - 7.9 kHz, clean or at 30 / 20 dB SNR, none.
BROADBAND_LAGS = (100, 50, 200)
FFT_ROUNDING = 2e-4  # the float32 FFT's and tonal_spans' sums' error in a band's share: ~5e-5 at 801 bins
SUM_ROUNDING = 2e-3  # the spread's error from float32 products summed in any order: 1600 terms, ~5e-4 at most


@njit(cache=True, fastmath={"reassoc"})
def broadband_spans(spans, bins, share):
    """Per row of ``spans`` (the tone check's windowed spans, windowed_spans): True where its power is proven too
    spread for tonal_spans to find ``bins`` adjacent bins of the row's FFT holding ``share`` of it, so that the FFT
    can be skipped; False leaves the row to the FFT (a row this cannot clear, or NaN).

    Why it holds: with P_k the power of bin k of the row's N-point DFT and theta_k = 2 pi k / N, the circular
    autocorrelation at lag L is r_L = (1 / N) sum over all k of P_k cos(L theta_k), so a_L = r_L / r_0 is the mean
    of cos(L theta) under the two-sided power distribution, and V_L = (1 + a_2L) / 2 - a_L^2 its variance.  If a
    band of ``bins`` bins holds ``share`` of the one-sided power, the band and its mirror image hold all but
    2 (1 - share) of the two-sided power, and on them cos(L theta) stays within pi L (bins - 1) / N of a middle
    value, elsewhere within 2 of it; so V_L <= (pi L (bins - 1) / N)^2 + 8 (1 - share).  A row above that bound
    for some lag is not tonal; speech is far above it at lags of about a millisecond, where its power spread over
    hundreds of Hz turns cos(L theta) through much of its range.  The bound takes ``share`` less FFT_ROUNDING, so
    that the float32 FFT's decision is covered, and adds SUM_ROUNDING for the products' float32 sums: in any order
    a sum of n terms is off by at most (n - 1) 2^-24 of the sum of their magnitudes, <= r_0 (Cauchy-Schwarz), so
    each a_L by ~2e-4 at N = 1600 and V_L by ~5e-4.  (Sums in float32: 0.81 us a 1600-sample span; in float64,
    widening each sample, 1.75; the FFT and tonal_spans 4.3; AMD EPYC Zen 1.)"""
    rows, size = spans.shape
    clear = np.zeros(rows, np.bool_)
    room = 8.0 * (1.0 - share + FFT_ROUNDING) + SUM_ROUNDING * size / 1600.0
    for i in range(rows):
        row = spans[i]
        r0 = np.float64(_circular_product(row, 0))
        if not r0 > 0.0:  # silence (no band holds any power: tonal_spans' + 1e-20), or NaN: to the FFT
            clear[i] = r0 == 0.0
            continue
        known_lag, known = 0, r0  # the last product computed, reused where a lag's double is the next lag
        for divisor in BROADBAND_LAGS:
            lag = size // divisor
            if lag == 0 or 2 * lag >= size:
                continue
            near = known if known_lag == lag else np.float64(_circular_product(row, lag))
            far = np.float64(_circular_product(row, 2 * lag))
            known_lag, known = 2 * lag, far
            spread = (1.0 + far / r0) / 2.0 - (near / r0) ** 2
            if spread > (math.pi * lag * (bins - 1) / size) ** 2 + room:
                clear[i] = True
                break
    return clear


@njit(inline="always", fastmath={"reassoc"})
def _circular_product(row, lag):
    """sum over n of row[n] row[(n + lag) mod N], in the row's float type."""
    size, total = row.shape[0], row.dtype.type(0.0)
    head, tail = row[:size - lag], row[lag:]
    for n in range(size - lag):
        total += head[n] * tail[n]
    for n in range(lag):
        total += row[size - lag + n] * row[n]
    return total


# EnergyVAD's state between calls, in one int64 array beside its float buffers (energy_frames, release_frames)
REST, ORDERED, HELD = 0, 1, 2  # samples of an unfinished frame; levels in the sorted window; frames held back


@njit(cache=True)
def energy_frames(samples, rest, tail, history, ordered, held, held_tonal, counts, q, snr_db, min_db, window, bins,
                  share, batch):
    """One EnergyVAD.accept's arithmetic in one call: float32 ``samples`` after the ``counts[REST]`` samples of
    ``rest`` (an unfinished frame of rest.size samples) -> each whole frame's level, its speech probability
    (speech_probabilities over ``history``, the last levels, and ``ordered``, them sorted) and, for frames at or
    above ``min_db``, whether the span of window.size samples ending with it is proven broadband (windowed_spans
    and broadband_spans, ``batch`` spans at a time so that a long input's spans stay small).  ``tail``: the
    window.size - frame samples before the first new frame.  Every state buffer is updated in place.

    Returns the probabilities and tonal flags of the ``counts[HELD]`` held frames followed by the new ones, the
    new frames the tone check could not clear (their spans need the FFT: tinyasr.pipeline.vad), and the audio
    those spans are cut from (``tail`` then the new frames).  EnergyVAD.accept made ~25 numpy and kernel calls
    for this: ~80 us a graph run of the digits stream, ~15 of them arithmetic (AMD EPYC Zen 1)."""
    frame, before = rest.shape[0], tail.shape[0]
    kept = counts[REST]
    count = (kept + samples.shape[0]) // frame
    audio = np.empty(before + count * frame, np.float32)
    audio[:before] = tail
    used = count * frame - kept if count else 0  # the samples that complete frames
    if count:
        audio[before:before + kept] = rest[:kept]
        audio[before + kept:] = samples[:used]
        counts[REST] = 0
    left = samples[used:]
    rest[counts[REST]:counts[REST] + left.shape[0]] = left
    counts[REST] += left.shape[0]
    levels = frame_levels(audio[before:], frame)
    padded = np.empty(history.shape[0] + count)
    padded[:history.shape[0]] = history
    padded[history.shape[0]:] = levels
    new, counts[ORDERED] = speech_probabilities(padded, history.shape[0] + 1, q, snr_db, min_db, ordered,
                                                counts[ORDERED])
    history[:] = padded[padded.shape[0] - history.shape[0]:]
    tail[:] = audio[audio.shape[0] - before:]
    waiting = counts[HELD]
    probs, tonal = np.empty(waiting + count), np.zeros(waiting + count, np.bool_)
    probs[:waiting], probs[waiting:] = held[:waiting], new
    tonal[:waiting] = held_tonal[:waiting]
    loud = np.nonzero(levels >= min_db)[0]
    unclear = np.empty(loud.shape[0], np.int64)
    found = 0
    for first in range(0, loud.shape[0], batch):
        rows = loud[first:first + batch]
        clear = broadband_spans(windowed_spans(audio, rows, frame, window), bins, share)
        for i in range(rows.shape[0]):
            if not clear[i]:
                unclear[found] = rows[i]
                found += 1
    return probs, tonal, unclear[:found], audio


@njit(cache=True)
def release_frames(probs, tonal, held, held_tonal, counts):
    """The probabilities of all but the last held.size frames of ``probs``, 0 where a tonal span (``tonal[i]``:
    the one ending at frame i, held.size + 1 frames long) covers the frame; those last frames go to ``held`` /
    ``held_tonal`` (counts[HELD] of them) until the spans ending after them are known."""
    reach = held.shape[0]  # a span covers the frame it ends at and the reach frames before it
    ready = max(0, probs.shape[0] - reach)
    out = probs[:ready].copy()
    for i in range(probs.shape[0]):
        if tonal[i]:
            out[max(0, i - reach):min(ready, i + 1)] = 0.0
    kept = probs.shape[0] - ready
    held[:kept], held_tonal[:kept] = probs[ready:], tonal[ready:]
    counts[HELD] = kept
    return out
