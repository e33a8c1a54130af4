"""Audio input: read any soundfile format, mix to mono float32, resample.

Everything the front end sees passes through here, so bad input stops here with
an AudioError that names the file (or the array) and the problem, never a
libsndfile traceback.  The resampler is the classic polyphase design of
scipy.signal.resample_poly (Kaiser-windowed sinc, same length and beta), so its
output agrees with scipy to float rounding; scipy itself is not a runtime
dependency.
"""

from __future__ import annotations

import math
import os
from typing import Optional, Tuple

import numba
import numpy as np
import soundfile

from .errors import AudioError

KAISER_BETA = 5.0  # scipy.signal.resample_poly's default window ('kaiser', 5.0)
HALF_LENGTH_PER_RATE = 10  # filter half-length = 10 * max(up, down), as resample_poly

_INT_SCALE = {np.dtype(np.int8): 128.0, np.dtype(np.int16): 32768.0, np.dtype(np.int32): 2147483648.0}


# The highest rate accepted anywhere (files, arrays, model manifests).  It bounds the resampler's filter
# (20 * rate taps at worst), so a file header declaring a rate of 2**31 cannot exhaust memory.
MAX_SAMPLE_RATE = 768_000


def _check_rate(rate, what: str) -> int:
    if isinstance(rate, (bool, np.bool_)) or not isinstance(rate, (int, np.integer)) or not 0 < rate <= MAX_SAMPLE_RATE:
        raise AudioError(f"{what}: sample rate must be an integer from 1 to {MAX_SAMPLE_RATE} Hz, got {rate!r}")
    return int(rate)


# ---------------------------------------------------------------- loading


def check_audio_file(name: str) -> None:
    """AudioError for the path problems libsndfile would only call "System error": missing, a directory, empty."""
    if not os.path.exists(name):
        raise AudioError(f"{name}: no such file")
    if os.path.isdir(name):
        raise AudioError(f"{name}: is a directory, not an audio file")
    if os.path.getsize(name) == 0:
        raise AudioError(f"{name}: file is empty (0 bytes)")


def load_audio(path, sample_rate: Optional[int] = None) -> Tuple[np.ndarray, int]:
    """Read an audio file as float32 mono samples [N] in [-1, 1] and its sample rate.

    Channels are averaged.  With ``sample_rate`` the samples are resampled to it and
    that rate is returned.
    """
    name = os.fspath(path)
    if sample_rate is not None:
        _check_rate(sample_rate, f"{name}: requested rate")
    check_audio_file(name)
    try:
        data, rate = soundfile.read(name, dtype="float32", always_2d=True)
    except (soundfile.LibsndfileError, RuntimeError, TypeError, ValueError) as exc:
        reason = getattr(exc, "error_string", None) or str(exc)  # libsndfile's reason without the path
        raise AudioError(f"{name}: not a readable audio file ({reason})") from None
    if data.shape[0] == 0:
        raise AudioError(f"{name}: contains no audio samples (0 frames)")
    _check_rate(rate, f"{name}: the file's header")
    samples = _mix_to_mono(data, name)
    if sample_rate is not None and sample_rate != rate:
        return resample(samples, rate, sample_rate), int(sample_rate)
    return samples, int(rate)


def as_float32_mono(array, sample_rate: int, target_rate: Optional[int] = None) -> np.ndarray:
    """Convert a user's array to float32 mono samples [N], resampled to ``target_rate`` if given.

    Layout is soundfile's: [N] or [N, channels] (channels averaged).  Integer PCM is
    scaled to [-1, 1) (int8/int16/int32 by their full range, uint8 around 128);
    floats are taken as they are.  An array shaped [channels, N] (more columns than
    rows) is refused rather than guessed: pass ``array.T``.
    """
    rate = _check_rate(sample_rate, "audio array")
    array = np.asarray(array)
    if array.ndim not in (1, 2):
        raise AudioError(f"audio array must have shape [N] or [N, channels], got shape {array.shape}")
    if array.ndim == 2 and array.shape[1] > array.shape[0]:
        raise AudioError(f"audio array of shape {array.shape} looks like [channels, N]; "
                         "tinyasr expects [N, channels] (pass array.T)")
    if array.shape[0] == 0:
        raise AudioError(f"audio array of shape {array.shape} contains no samples")
    if array.dtype in _INT_SCALE:
        samples = array.astype(np.float32) / np.float32(_INT_SCALE[array.dtype])
    elif array.dtype == np.uint8:
        samples = (array.astype(np.float32) - 128.0) / 128.0
    elif np.issubdtype(array.dtype, np.floating):
        samples = array.astype(np.float32)
    else:
        raise AudioError(f"audio array has unsupported dtype {array.dtype} "
                         "(use int8, uint8, int16, int32, float32 or float64)")
    samples = _mix_to_mono(samples.reshape(samples.shape[0], -1), "audio array")
    if target_rate is not None:
        target = _check_rate(target_rate, "audio array: target rate")
        if target != rate:
            return resample(samples, rate, target)
    return samples


def _mix_to_mono(data: np.ndarray, name: str) -> np.ndarray:
    """Average the channels of [N, channels] float32 data; refuse NaN / Inf."""
    if not np.all(np.isfinite(data)):
        bad = int(np.argmax(~np.isfinite(data).all(axis=1)))
        raise AudioError(f"{name}: non-finite sample (NaN or Inf) at frame {bad}")
    mono = data[:, 0] if data.shape[1] == 1 else data.mean(axis=1, dtype=np.float64)
    return np.ascontiguousarray(mono, dtype=np.float32)


# ---------------------------------------------------------------- resampling


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


@numba.njit("float64[:](float64[:], float64[:, :], int64, int64, int64, int64)", cache=True, fastmath=True)
def _polyphase_kernel(x, phases, up, down, first, count):
    """Hot loop: outputs first..first+count of upfirdn(h, x, up, down).

    ``phases[p, r] = h[p + (taps - 1 - r) * up]`` (each phase reversed, so both arrays
    are walked forwards); output m pairs input i with filter tap m*down - i*up.
    """
    n_in = x.shape[0]
    taps = phases.shape[1]
    y = np.zeros(count)
    for j in range(count):
        t = (first + j) * down
        p = t % up
        newest = t // up  # the input sample paired with the phase's first tap h[p]
        offset = taps - 1 - newest  # phases[p, i + offset] multiplies x[i]
        i_start = max(0, newest - taps + 1)
        i_stop = min(n_in, newest + 1)
        acc = 0.0
        for i in range(i_start, i_stop):
            acc += x[i] * phases[p, i + offset]
        y[j] = acc
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


def resample(samples: np.ndarray, from_rate: int, to_rate: int) -> np.ndarray:
    """Resample 1-D audio by the reduced ratio to_rate/from_rate; float32 [ceil(N * to / from)].

    Same filter, delay compensation and output length as scipy.signal.resample_poly.
    """
    from_rate = _check_rate(from_rate, "resample: source rate")
    to_rate = _check_rate(to_rate, "resample: target rate")
    x = np.asarray(samples, dtype=np.float64)
    if x.ndim != 1:
        raise AudioError(f"resample expects 1-D mono samples, got shape {x.shape}")
    g = math.gcd(from_rate, to_rate)
    up, down = to_rate // g, from_rate // g
    if up == down or x.size == 0:
        return x.astype(np.float32)
    h = lowpass_filter(up, down)
    half_len = (h.size - 1) // 2
    # resample_poly's alignment: pre-pad the filter so the group delay falls on an output sample.
    pre_pad = down - half_len % down
    h = np.concatenate([np.zeros(pre_pad), h])
    first = (half_len + pre_pad) // down
    count = -(-x.size * up // down)
    return _polyphase_kernel(x, _polyphase_bank(h, up), up, down, first, count).astype(np.float32)
