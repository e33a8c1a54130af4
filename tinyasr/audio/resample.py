"""Resampling: the polyphase design of scipy.signal.resample_poly (Kaiser-windowed sinc, same length
and beta), so its output agrees with scipy to float rounding without scipy at run time; and
:class:`StreamResampler`, the same filter for audio that arrives in pieces.
"""

from __future__ import annotations

import math
from typing import Tuple

import numba
import numpy as np

from tinyasr.errors import AudioError

KAISER_BETA = 5.0  # scipy.signal.resample_poly's default window ('kaiser', 5.0)
HALF_LENGTH_PER_RATE = 10  # filter half-length = 10 * max(up, down), as resample_poly


# The highest rate accepted anywhere (files, arrays, model manifests).  It bounds the resampler's filter
# (20 * rate taps at worst), so a file header declaring a rate of 2**31 cannot exhaust memory.
MAX_SAMPLE_RATE = 768_000

_EMPTY = np.zeros(0, np.float64)


def check_rate(rate, what: str) -> int:
    if isinstance(rate, (bool, np.bool_)) or not isinstance(rate, (int, np.integer)) or not 0 < rate <= MAX_SAMPLE_RATE:
        raise AudioError(f"{what}: sample rate must be an integer from 1 to {MAX_SAMPLE_RATE} Hz, got {rate!r}")
    return int(rate)


def lowpass_filter(up: int, down: int) -> np.ndarray:
    """resample_poly's anti-aliasing FIR: Kaiser(5.0) windowed sinc, cutoff 1/max(up, down), gain ``up``.

    Equals scipy.signal.firwin(2 * 10 * max(up, down) + 1, 1 / max(up, down), window=("kaiser", 5.0)) * up.
    """
    max_rate = max(up, down)
    half_len = HALF_LENGTH_PER_RATE * max_rate
    taps = np.arange(2 * half_len + 1) - half_len
    cutoff = 1.0 / max_rate
    h = cutoff * np.sinc(cutoff * taps) * np.kaiser(2 * half_len + 1, KAISER_BETA)
    return h * (up / h.sum())


BLOCK = 256  # outputs of one phase summed together: their sums and inputs stay in L1 across the taps


@numba.njit("float64[:](float64[:], float64[:, :], int64, int64, int64, int64)", cache=True, fastmath={"contract"})
def _polyphase_kernel(x, phases, up, down, first, count):
    """Outputs first..first+count of upfirdn(h, x, up, down).

    ``phases[p, r] = h[p + (taps - 1 - r) * up]`` (each phase reversed, so both arrays are walked forwards);
    output m uses phase p = (m * down) % up and the inputs up to newest = (m * down) // up.  Outputs m and m + up
    use the same phase, their inputs ``down`` apart, so each of the ``up`` classes of outputs is a plain FIR: per
    block of outputs, tap by tap, one coefficient times a run of inputs (``down`` apart), a loop LLVM
    vectorises.  The input is first copied between zeros (the taps before the signal and past its end) and dealt
    into ``down`` columns, so that the inputs of one tap are contiguous: every output takes every tap, its terms
    still added in tap order, the missing ones as zeros.  Output by output (a dot product of ~taps terms with a
    bounds check per term) the 8 -> 16 kHz filter ran at 0.3 GMAC/s, 45 ms for 40 s of audio, half a digits-model
    transcription (AMD EPYC Zen 1; figures: benchmarks/results/resample.md)."""
    if first < 0 or count < 0:
        raise ValueError("_polyphase_kernel: outputs start at 0 or later")
    taps = phases.shape[1]
    y = np.zeros(count)
    if count == 0:
        return y
    # The signal between zeros, dealt into ``down`` columns: padded index i = newest + r (which pairs with
    # phases[p, r]) is columns[i % down, i // down], so the inputs ``down`` apart of one tap are a contiguous run.
    last_newest = ((first + count - 1) * down) // up
    length = taps - 1 + max(x.shape[0], last_newest + 1)
    columns = np.zeros((down, (length + down - 1) // down))
    for q in range(down):
        i = (q - (taps - 1)) % down  # the first sample dealt to column q
        if i < x.shape[0]:
            j = (taps - 1 + i) // down
            samples = x[i::down]
            columns[q, j:j + samples.shape[0]] = samples
    acc = np.empty(BLOCK)
    for c in range(min(up, count)):  # outputs c, c + up, c + 2 up, ...
        t = (first + c) * down
        row, base = phases[t % up], t // up
        outputs = (count - c + up - 1) // up
        for k0 in range(0, outputs, BLOCK):
            n = min(BLOCK, outputs - k0)
            acc[:n] = 0.0
            start = base + k0 * down
            q, j = start % down, start // down  # tap r's run: columns[q, j:j + n] at padded index start + r
            for r in range(taps):
                w, run = row[r], columns[q, j:j + n]
                for k in range(n):
                    acc[k] += w * run[k]
                q += 1
                if q == down:
                    q, j = 0, j + 1
            for k in range(n):
                y[c + (k0 + k) * up] = acc[k]
    return y


def _polyphase_reference(x, h, up, down, first, count):
    """numpy reference of _polyphase_kernel: zero-stuff by ``up``, convolve, keep every ``down``-th."""
    stuffed = np.zeros(len(x) * up)
    stuffed[::up] = x
    full = np.convolve(stuffed, h)[::down]
    out = np.zeros(count)
    available = full[first:first + count]
    out[:available.size] = available
    return out


def _polyphase_bank(h: np.ndarray, up: int) -> np.ndarray:
    """Split h into its ``up`` phases [up, taps], each reversed, in the layout _polyphase_kernel reads."""
    taps = -(-h.size // up)
    padded = np.zeros(taps * up)
    padded[:h.size] = h
    return np.ascontiguousarray(padded.reshape(taps, up).T[:, ::-1])


def _ratio(from_rate, to_rate, where: str) -> Tuple[int, int]:
    """(up, down): to_rate / from_rate reduced, the rates checked."""
    from_rate = check_rate(from_rate, f"{where}: source rate")
    to_rate = check_rate(to_rate, f"{where}: target rate")
    g = math.gcd(from_rate, to_rate)
    return to_rate // g, from_rate // g


def _aligned_filter(up: int, down: int) -> Tuple[np.ndarray, int]:
    """resample_poly's filter and delay alignment: the phase bank of the filter pre-padded so its group delay
    falls on an output sample, and the index of the first upfirdn output that belongs to the signal."""
    h = lowpass_filter(up, down)
    half_len = (h.size - 1) // 2
    pre_pad = down - half_len % down
    h = np.concatenate([np.zeros(pre_pad), h])
    return _polyphase_bank(h, up), (half_len + pre_pad) // down


def resample(samples: np.ndarray, from_rate: int, to_rate: int) -> np.ndarray:
    """Resample 1-D audio by the reduced ratio to_rate/from_rate; float32 [ceil(N * to / from)].

    Same filter, delay compensation and output length as scipy.signal.resample_poly.
    """
    up, down = _ratio(from_rate, to_rate, "resample")
    x = np.asarray(samples, dtype=np.float64)
    if x.ndim != 1:
        raise AudioError(f"resample expects 1-D mono samples, got shape {x.shape}")
    if up == down or x.size == 0:
        return x.astype(np.float32)
    bank, first = _aligned_filter(up, down)
    count = -(-x.size * up // down)
    return _polyphase_kernel(x, bank, up, down, first, count).astype(np.float32)


# ---------------------------------------------------------------- streaming


class StreamResampler:
    """``audio.resample`` for audio given in pieces: emits each output sample once its inputs are all in.

    Output ``m`` of resample_poly pairs the filter with inputs up to
    ``((first + m) * down) // up``; a piece of the signal that starts at a
    multiple of ``down`` resamples to a contiguous run of the full output, so
    each call resamples the buffered inputs (left context + new samples) and
    keeps the outputs whose support is complete.
    """

    def __init__(self, from_rate: int, to_rate: int):
        self.up, self.down = _ratio(from_rate, to_rate, "StreamResampler")
        self.from_rate, self.to_rate = int(from_rate), int(to_rate)
        if self.up != self.down:
            self._bank, self._first = _aligned_filter(self.up, self.down)
        self.reset()

    def reset(self) -> None:
        self._buffer = _EMPTY
        self._buffer_start = 0  # absolute input index of _buffer[0], a multiple of down
        self._received = 0
        self._emitted = 0
        self._announced = 0  # input samples announce() has counted

    def _outputs(self, stop: int) -> np.ndarray:
        """Full-signal outputs [emitted, stop) computed from the buffer; then drop inputs no longer needed."""
        if stop <= self._emitted:
            return np.zeros(0, np.float32)
        offset = self._buffer_start * self.up // self.down  # the buffer's outputs are the signal's from here on
        piece = _polyphase_kernel(self._buffer, self._bank, self.up, self.down, self._first + self._emitted - offset,
                                  stop - self._emitted).astype(np.float32)
        self._emitted = stop
        oldest_needed = ((self._first + stop) * self.down) // self.up - self._bank.shape[1] + 1
        keep_from = max(self._buffer_start, (max(0, oldest_needed) // self.down) * self.down)
        self._buffer = self._buffer[keep_from - self._buffer_start:]
        self._buffer_start = keep_from
        return piece

    def announce(self, count: int) -> int:
        """How many samples ``accept`` will return for the next ``count`` input samples, told before they are
        given: a stream that holds its input counts its samples at the output rate without resampling yet.  Every
        sample given after a reset must have been announced, in order."""
        before = self._emitted_after(self._announced)
        self._announced += count
        return self._emitted_after(self._announced) - before

    def _emitted_after(self, received: int) -> int:
        """How many samples ``accept`` returns in all for the first ``received`` input samples since a reset."""
        if self.up == self.down or received <= 0:
            return max(0, received)
        ready = (received * self.up - 1) // self.down - self._first + 1
        return max(0, min(ready, -(-received * self.up // self.down)))

    def accept(self, samples: np.ndarray) -> np.ndarray:
        """New float32 samples at ``to_rate``: those whose filter support has fully arrived."""
        if self.up == self.down:
            return np.asarray(samples, np.float32)
        self._buffer = np.concatenate([self._buffer, np.asarray(samples, np.float64)])
        self._received += len(samples)
        ready = (self._received * self.up - 1) // self.down - self._first + 1
        return self._outputs(min(ready, -(-self._received * self.up // self.down)))

    def finish(self) -> np.ndarray:
        """The remaining samples (the signal ends here: zeros beyond, as resample_poly)."""
        if self.up == self.down:
            return np.zeros(0, np.float32)
        out = self._outputs(-(-self._received * self.up // self.down))
        self.reset()
        return out
