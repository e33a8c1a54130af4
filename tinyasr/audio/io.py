"""Audio input: read any soundfile format, mix to mono float32, resample (tinyasr.audio.resample).

Everything the front end sees passes through here, so bad input stops here with
an AudioError that names the file (or the array) and the problem, never a
libsndfile traceback.  The resampler is the classic polyphase design of
scipy.signal.resample_poly (Kaiser-windowed sinc, same length and beta), so its
output agrees with scipy to float rounding; scipy itself is not a runtime
dependency.
"""

from __future__ import annotations

import os
import struct
import warnings
from typing import Iterator, Optional, Tuple

import numpy as np
import soundfile

from tinyasr.audio.resample import check_rate, resample
from tinyasr.errors import AudioError, TinyASRWarning
from tinyasr.format.values import MEMORY_BUDGET
from tinyasr.kernels.vector_math import all_finite

MIN_AUDIO_RATE = 1000  # Hz: below this a recording holds no speech band (a 1 Hz header is a broken file)
MAX_CHANNELS = 256  # a header claiming more is broken (and would size every block by it)
BLOCK_BYTES = 1 << 24  # float32 read at once: a header's frame count is never trusted for an allocation
_INT_SCALE = {np.dtype(np.int8): 128.0, np.dtype(np.int16): 32768.0, np.dtype(np.int32): 2147483648.0}


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
        check_rate(sample_rate, f"{name}: requested rate")
    blocks, total, rate = [], 0, None
    for block, rate in read_blocks(name):
        total += block.nbytes
        if total > MEMORY_BUDGET:
            raise AudioError(f"{name}: more than {MEMORY_BUDGET >> 20} MiB of samples: too long to load at once; "
                             "transcribe it with tinyasr.transcribe_long (block by block)")
        blocks.append(block)
    if not total:
        raise AudioError(f"{name}: contains no audio samples (0 frames)")
    samples = _mix_to_mono(np.concatenate(blocks) if len(blocks) > 1 else blocks[0], name)
    if sample_rate is not None and sample_rate != rate:
        return resample(samples, rate, sample_rate), int(sample_rate)
    return samples, int(rate)


def read_blocks(path, seconds: Optional[float] = None) -> Iterator[Tuple[np.ndarray, int]]:
    """([frames, channels] float32 block, sample rate) of a sound file, in order: ``seconds`` of audio each (default:
    BLOCK_BYTES).  The header is untrusted: its rate must pass check_audio_rate and its channel count
    MAX_CHANNELS, and its frame count is never used to allocate (a 27 KB FLAC may claim 2**32 - 1 samples);
    reading stops where the data does.  Every libsndfile failure is an AudioError naming the file."""
    name = os.fspath(path)
    check_audio_file(name)
    try:
        with soundfile.SoundFile(name) as handle:
            rate = check_audio_rate(handle.samplerate, f"{name}: the file's header")
            if not 0 < handle.channels <= MAX_CHANNELS:
                raise AudioError(f"{name}: the file's header declares {handle.channels} channels "
                                 f"(at most {MAX_CHANNELS})")
            warn_if_cut_short(name)
            frames = max(1, BLOCK_BYTES // (4 * handle.channels))
            if seconds is not None:
                frames = min(frames, max(1, int(seconds * rate)))
            while True:
                block = handle.read(frames, dtype="float32", always_2d=True)
                if not len(block):
                    return
                yield block, rate
    except (soundfile.LibsndfileError, RuntimeError, TypeError, ValueError, OverflowError) as exc:
        reason = getattr(exc, "error_string", None) or str(exc)  # libsndfile's reason without the path
        raise AudioError(f"{name}: not a readable audio file ({reason})") from None


def check_audio_rate(rate, what: str) -> int:
    """The rate of audio to recognise: check_rate's integer up to the maximum, and at least MIN_AUDIO_RATE."""
    rate = check_rate(rate, what)
    if rate < MIN_AUDIO_RATE:
        raise AudioError(f"{what}: sample rate {rate} Hz is below {MIN_AUDIO_RATE} Hz, too low for speech")
    return rate


def warn_if_cut_short(name: str) -> None:
    """A TinyASRWarning naming the file when a RIFF WAV's data chunk declares more bytes than the file holds
    (an interrupted copy or recording): libsndfile then reads what is there without a word."""
    try:
        size = os.path.getsize(name)
        with open(name, "rb") as handle:
            head = handle.read(12)
            if head[:4] != b"RIFF" or head[8:] != b"WAVE":
                return
            position = 12
            for _ in range(64):  # a WAV has a handful of chunks before its data
                handle.seek(position)
                header = handle.read(8)
                if len(header) < 8:
                    return
                chunk, length = header[:4], struct.unpack("<I", header[4:])[0]
                if chunk == b"data":
                    present = size - position - 8
                    if present < length < 0xFFFFFFFF:  # 0xFFFFFFFF (or 0): a streaming writer's unknown size
                        warnings.warn(f"{name}: the WAV header declares {length} bytes of audio but the file "
                                      f"holds {present}: it is cut short; using the part that is there",
                                      TinyASRWarning, stacklevel=2)
                    return
                position += 8 + length + (length & 1)
    except OSError:
        return  # the reader reports unreadable files


def as_float32_mono(array, sample_rate: int, target_rate: Optional[int] = None) -> np.ndarray:
    """Convert a user's array to float32 mono samples [N], resampled to ``target_rate`` if given.

    Layout is soundfile's: [N] or [N, channels] (channels averaged).  Integer PCM is
    scaled to [-1, 1) (int8/int16/int32 by their full range, uint8 around 128);
    floats are taken as they are.  An array shaped [channels, N] (more columns than
    rows) is refused rather than guessed: pass ``array.T``.
    """
    rate = check_audio_rate(sample_rate, "audio array")
    array = np.asarray(array)
    if array.ndim not in (1, 2):
        raise AudioError(f"audio array must have shape [N] or [N, channels], got shape {array.shape}")
    if array.ndim == 2 and array.shape[1] > array.shape[0]:
        raise AudioError(f"audio array of shape {array.shape} looks like [channels, N]; "
                         "tinyasr expects [N, channels] (pass array.T)")
    if array.shape[0] == 0:
        raise AudioError(f"audio array of shape {array.shape} contains no samples")
    if array.dtype.kind == "f":  # the kind, not np.issubdtype: a stream converts every chunk (~2 us a call)
        samples = array.astype(np.float32)
    elif array.dtype in _INT_SCALE:
        samples = array.astype(np.float32) / np.float32(_INT_SCALE[array.dtype])
    elif array.dtype == np.uint8:
        samples = (array.astype(np.float32) - 128.0) / 128.0
    else:
        raise AudioError(f"audio array has unsupported dtype {array.dtype} "
                         "(use int8, uint8, int16, int32, float32 or float64)")
    samples = _mix_to_mono(samples, "audio array")
    if target_rate is not None:
        target = check_rate(target_rate, "audio array: target rate")
        if target != rate:
            return resample(samples, rate, target)
    return samples


def _mix_to_mono(data: np.ndarray, name: str) -> np.ndarray:
    """Average the channels of [N] or [N, channels] float32 data; refuse NaN / Inf."""
    if not all_finite(data):
        bad = int(np.argmax(~np.isfinite(data.reshape(data.shape[0], -1)).all(axis=1)))
        raise AudioError(f"{name}: non-finite sample (NaN or Inf) at frame {bad}")
    if data.ndim == 1:
        return data
    mono = data[:, 0] if data.shape[1] == 1 else data.mean(axis=1, dtype=np.float64)
    return np.ascontiguousarray(mono, dtype=np.float32)


# ---------------------------------------------------------------- to a graph


def to_pcm(samples: np.ndarray, dtype) -> np.ndarray:
    """Float samples in [-1, 1] as integer PCM of ``dtype`` (int16: x 32768), rounded and clipped: the inverse
    of as_float32_mono's scaling, for graphs that take integer audio (the MarbleNet VAD takes int16)."""
    info = np.iinfo(dtype)
    return np.clip(np.round(samples * (info.max + 1.0)), info.min, info.max).astype(dtype)
