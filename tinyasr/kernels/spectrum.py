"""The front end's arithmetic around its FFT (tinyasr.features.frontend.FeatureCore; the FFT: kernels/fft.py):
windowed frames cut from the padded signal, and each power spectrum summed into mel bands.

A stream computes 8 frames per 80 ms chunk.  Done with numpy (a sliding window view, the window's product, the
power, a filterbank matmul, the log), a chunk's front end cost ~35 us of calls around an FFT of ~12 us on
Zen 4; one loop per call here.  The filterbank is read over each band's nonzero bins only (a mel filter is a
triangle: 64 bands over 257 bins hold ~500 nonzero weights).  Tested against numpy's chain over the same frames
(tests/test_frontend.py).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from tinyasr.kernels.fft import lane_powers


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


@njit(cache=True)
def emphasized_padded(samples, coefficient, half, reflect):
    """[half + N + half] float64: samples[n] - coefficient * samples[n - 1] (samples[-1] = 0; coefficient 0: the
    samples as they are) between ``half`` zeros, or their reflections (np.pad's "reflect": the edge sample not
    repeated) on both sides; needs N > half to reflect.  One pass where the float64 copy, the pre-emphasis's
    shifted copy and product, and np.pad took five over the whole signal (~0.6 ms at 10 s, Zen 4); the same
    arithmetic, a product and a difference in float64."""
    n = samples.shape[0]
    out = np.empty(n + 2 * half)
    body = out[half:half + n]
    previous = 0.0
    for i in range(n):
        value = np.float64(samples[i])
        body[i] = value - coefficient * previous
        previous = value
    for j in range(half):
        out[half - 1 - j] = body[j + 1] if reflect else 0.0
        out[half + n + j] = body[n - 2 - j] if reflect else 0.0
    return out


@njit(cache=True)
def emphasized_after(carry, samples, coefficient, previous):
    """[carry, y] float64 with y[n] = samples[n] - coefficient * samples[n - 1] (samples[-1] = ``previous``; 0:
    the samples as they are): a stream's next samples pre-emphasised onto the signal it still holds, in one pass
    where numpy's float64 copy, shifted copy, product, difference and concatenation took five (~12 us a call of
    1920 samples, AMD EPYC Zen 1).  The same arithmetic as emphasized_padded."""
    held = carry.shape[0]
    out = np.empty(held + samples.shape[0])
    out[:held] = carry
    for i in range(samples.shape[0]):
        value = np.float64(samples[i])
        out[held + i] = value - coefficient * previous
        previous = value
    return out


def band_spans(filterbank: np.ndarray) -> np.ndarray:
    """[bands, 2] int64: each band's first and past-the-last nonzero bin (0, 0 for a band without any)."""
    spans = np.zeros((filterbank.shape[0], 2), np.int64)
    for band, row in enumerate(filterbank):
        nonzero = np.flatnonzero(row)
        if nonzero.size:
            spans[band] = nonzero[0], nonzero[-1] + 1
    return spans


@njit(cache=True)
def mel_bands(power, filterbank, spans, exponent, out, column):
    """out[b, column + i] for each band b and frame i of ``power`` [bins, count] (|X|^2, bin-major:
    fft.power_spectra): the band's weighted sum of the bins' power (raised to ``exponent`` unless it is 1), in bin
    order, the frames in vector lanes (a frame at a time, each band's sum was a serial chain over its ~8-20 bins:
    0.8 ms of a 10 s front end).  The log is left to numpy, whose log runs vectorised."""
    bins, count = power.shape
    if exponent != 1.0:
        power = power ** exponent
    for band in range(filterbank.shape[0]):
        weights, total = filterbank[band], out[band, column:column + count]
        for i in range(count):
            total[i] = 0.0
        for k in range(spans[band, 0], spans[band, 1]):
            weight, row = weights[k], power[k]
            for i in range(count):
                total[i] += weight * row[i]


@njit(cache=True)
def mel_spectra(signal, count, hop, window, filterbank, spans, exponent, block, out, radices, twiddle_re, twiddle_im,
                offsets, split_re, split_im):
    """out[:, :count]: the mel band sums (mel_bands) of the power spectra of the first ``count`` windowed frames
    of ``signal`` (windowed_frames; fft.lane_powers with the n_fft plan's arrays), ``block`` frames at a time.
    FeatureCore's chain in one call where it took four and an FFT plan's lookup a block: a stream's 24 frames
    (digits model, n_fft 256) 53 -> ~40 us, the calls' share of it (AMD EPYC Zen 1)."""
    bins = window.shape[0] // 2 + 1
    for start in range(0, count, block):
        frames = windowed_frames(signal, start * hop, min(block, count - start), hop, window)
        power = np.empty((bins, frames.shape[0]))
        lane_powers(frames, power, True, radices, twiddle_re, twiddle_im, offsets, split_re, split_im)
        mel_bands(power, filterbank, spans, exponent, out, start)


@njit(cache=True, fastmath={"reassoc"})
def normalized_features(features, valid, mode, guard, pad_value, frames):
    """float32 [F, frames] from log-mel features [F, n] (float64): NeMo's normalize_batch over the first ``valid``
    frames (``mode`` 1: each feature's mean and std, 2: one mean and std over all of them, 0: none; the std with
    n - 1, plus ``guard``), then ``pad_value`` from frame ``valid`` on.  One pass for the statistics and one for
    the output, where numpy's mean, std, subtraction, division, padding and float32 copy took seven over 4 MB a
    minute of audio (2.7 -> ~1 ms, AMD EPYC Zen 1)."""
    rows, kept = features.shape[0], min(valid, features.shape[1])
    means, spreads = np.zeros(rows), np.zeros(rows)
    if mode == 1:
        for r in range(rows):
            row, total = features[r, :kept], 0.0
            for t in range(kept):
                total += row[t]
            means[r] = total / kept
            if kept > 1:
                squares = 0.0
                for t in range(kept):
                    squares += (row[t] - means[r]) ** 2
                spreads[r] = np.sqrt(squares / (kept - 1))
    elif mode == 2:
        total = 0.0
        for r in range(rows):
            row = features[r, :kept]
            for t in range(kept):
                total += row[t]
        mean, squares = total / (rows * kept), 0.0
        for r in range(rows):
            row = features[r, :kept]
            for t in range(kept):
                squares += (row[t] - mean) ** 2
        means[:] = mean
        spreads[:] = np.sqrt(squares / (rows * kept - 1)) if rows * kept > 1 else 0.0
    divisors = spreads + guard if mode else np.ones(rows)  # mode 0: (x - 0) / 1, the features as they are
    return standardized(features, kept, means, divisors, pad_value, frames)


@njit(cache=True)
def standardized(features, kept, means, divisors, pad_value, frames):
    """float32 [F, frames]: (features[r, t] - means[r]) / divisors[r] for t < ``kept`` (in float64, then rounded
    once), ``pad_value`` from there on.  normalized_features' output pass, and a stream's fixed statistics
    (tinyasr.features.streaming.FixedNormalizer): numpy's subtraction, division and float32 copy took ~10 us a
    call on a stream's 24 frames of 64 features, this ~2 (AMD EPYC Zen 1)."""
    out = np.empty((features.shape[0], frames), np.float32)
    for r in range(features.shape[0]):
        row, target, mean, divisor = features[r], out[r], means[r], divisors[r]
        for t in range(kept):
            target[t] = (row[t] - mean) / divisor
        for t in range(kept, frames):
            target[t] = pad_value
    return out
