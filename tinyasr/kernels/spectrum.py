"""The front end's arithmetic around its FFT (tinyasr.features.frontend.FeatureCore): windowed frames cut from
the padded signal, and each spectrum's power summed into mel bands.

A stream computes 8 frames per 80 ms chunk.  Done with numpy (a sliding window view, the window's product, the
power, a filterbank matmul, the log), a chunk's front end cost ~35 us of calls around an FFT of ~12 us on
Zen 4; one loop per call here.  The filterbank is read over each band's nonzero bins only (a mel filter is a
triangle: 64 bands over 257 bins hold ~500 nonzero weights).  Tested against numpy's chain over the same frames
(tests/test_frontend.py).
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True)
def windowed_frames(signal, first, count, hop, window):
    """[count, window.size] float64: row i holds signal[first + i * hop:][:window.size] * window."""
    size = window.shape[0]
    frames = np.empty((count, size))
    for i in range(count):
        row, piece = frames[i], signal[first + i * hop:first + i * hop + size]  # rows, not [i, k]: it vectorises
        for k in range(size):
            row[k] = piece[k] * window[k]
    return frames


def band_spans(filterbank: np.ndarray) -> np.ndarray:
    """[bands, 2] int64: each band's first and past-the-last nonzero bin (0, 0 for a band without any)."""
    spans = np.zeros((filterbank.shape[0], 2), np.int64)
    for band, row in enumerate(filterbank):
        nonzero = np.flatnonzero(row)
        if nonzero.size:
            spans[band] = nonzero[0], nonzero[-1] + 1
    return spans


@njit(inline="always")
def pair_power(spectrum, power):
    """power[k] = |X_k|^2 for a complex spectrum given as pairs of floats (a row of an rfft's ``.view(np.float64)``),
    read as a row so that the loop vectorises."""
    for k in range(power.shape[0]):
        power[k] = spectrum[2 * k] * spectrum[2 * k] + spectrum[2 * k + 1] * spectrum[2 * k + 1]


@njit(cache=True)
def mel_bands(spectra, filterbank, spans, exponent, out, column):
    """out[b, column + i] for each spectrum i and band b: the band's weighted sum of the bins' power |X|^2 (raised
    to ``exponent`` unless it is 1).  ``spectra`` [count, 2 * bins]: complex spectra as pairs of floats
    (``.view(np.float64)`` of numpy's rfft, pair_power).  The log is left to
    numpy, whose log runs vectorised: one scalar log per band and frame cost as much as the sums."""
    count, bins = spectra.shape[0], spectra.shape[1] // 2
    power = np.empty(bins)
    for i in range(count):
        pair_power(spectra[i], power)
        if exponent != 1.0:
            for k in range(bins):
                power[k] = power[k] ** exponent
        for band in range(filterbank.shape[0]):
            weights = filterbank[band]
            total = 0.0
            for k in range(spans[band, 0], spans[band, 1]):
                total += weights[k] * power[k]
            out[band, column + i] = total
