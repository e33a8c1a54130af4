"""The energy VAD's per-frame arithmetic (tinyasr.pipeline.vad.EnergyVAD): the noise floor as a running
percentile of frame levels, the speech probability from the level's margin over it, and the tone check's
share of a span's power in its strongest band of adjacent FFT bins.

A stream feeds the VAD 100 ms at a time, five frames, so numpy's whole-array calls (sliding windows, a
sort of a [frames, window] array, NaN masks) cost more in call overhead than in arithmetic: a third of
the detector's time per chunk, and the detector is a fifth of a stream's compute.  One loop per call here.
Tested against ``np.nanpercentile`` over the same windows and against cumulative sums over the spectra
(tests/test_vad.py).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit


@njit(cache=True)
def speech_probabilities(padded, window, q, snr_db, min_db):
    """``padded``: frame levels in dB (float64), NaN where a window slot lies before anything was heard; the
    last ``len(padded) - window + 1`` entries are the frames to judge.  Frame i's floor is the ``q``-th
    percentile (linear interpolation, NaNs left out) of the ``window`` levels ending at it; its probability
    is a logistic of ``(level - max(floor + snr_db, min_db)) / 2``.

    The window's levels are kept sorted as it slides (one removal and one insertion per frame, found by
    bisection): sorting each window afresh cost 6 us a frame, a third of the whole detector."""
    count = padded.shape[0] - window + 1
    probs = np.empty(max(count, 0))
    ordered = np.empty(window)
    n = 0
    for k in range(min(window - 1, padded.shape[0])):
        n = _insert(ordered, n, padded[k])
    for i in range(count):
        n = _insert(ordered, n, padded[i + window - 1])
        position = q / 100.0 * (n - 1)
        low = int(math.floor(position))
        high = min(low + 1, n - 1)
        floor = ordered[low] + (position - low) * (ordered[high] - ordered[low])
        margin = padded[i + window - 1] - max(floor + snr_db, min_db)
        probs[i] = 1.0 / (1.0 + math.exp(-margin / 2.0))
        n = _remove(ordered, n, padded[i])
    return probs


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


@njit(cache=True)
def windowed_spans(audio, ends, frame, window):
    """Row i: the ``window.size`` samples of ``audio`` ending with frame ``ends[i]`` (frames of ``frame`` samples;
    ``audio`` starts ``window.size - frame`` samples before frame 0), less their mean, times ``window``: the
    tone check's FFT input in one pass instead of numpy's gather, mean, subtraction and product."""
    size = window.shape[0]
    spans = np.empty((ends.shape[0], size))
    for i in range(ends.shape[0]):
        start = ends[i] * frame
        mean = 0.0
        for k in range(size):
            mean += audio[start + k]
        mean /= size
        for k in range(size):
            spans[i, k] = (audio[start + k] - mean) * window[k]
    return spans


@njit(cache=True)
def tonal_spans(spectra, bins, share):
    """Per row of complex ``spectra`` [spans, frequencies]: whether some ``bins`` adjacent bins hold at least
    ``share`` of the row's power.  One pass per row with a running band sum: numpy's cumulative sums, band
    differences and maxima over a [32, 801] batch cost 2/3 of its FFT (10 s of speech: 2.2 of 10 ms)."""
    spans, width = spectra.shape
    tonal = np.zeros(spans, np.bool_)
    power = np.empty(width)
    for s in range(spans):
        total = 0.0
        for k in range(width):
            value = spectra[s, k]
            power[k] = value.real * value.real + value.imag * value.imag
            total += power[k]
        band = 0.0
        for k in range(min(bins, width)):
            band += power[k]
        peak = band
        for k in range(bins, width):
            band += power[k] - power[k - bins]
            peak = max(peak, band)
        tonal[s] = peak >= share * total + 1e-20
    return tonal
