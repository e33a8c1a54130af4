"""What a model takes in, as the Recognizer, the online stream and the VAD all read it: the front end, the
sample rate audio is resampled to, and the tensor a graph on raw audio is fed."""

from __future__ import annotations

from typing import Optional

import numpy as np

from tinyasr.audio.io import to_pcm
from tinyasr.audio.resample import MAX_SAMPLE_RATE
from tinyasr.decoding.specs import DecoderSpec
from tinyasr.errors import ModelFileError, TinyASRError
from tinyasr.features.frontend import FrontendConfig
from tinyasr.format.container import is_int


def frontend_of(model, where) -> Optional[FrontendConfig]:
    """The manifest's front end (None: the graph takes raw audio); ModelFileError(where, ...) when malformed."""
    if not model.frontend:
        return None
    try:
        return FrontendConfig.from_dict(model.frontend)
    except TinyASRError as exc:
        raise ModelFileError(where, str(exc)) from None


def sample_rate_of(model, frontend: Optional[FrontendConfig], decoder: Optional[DecoderSpec], signal, where,
                   default: Optional[int] = None) -> int:
    """The rate audio is resampled to: the front end's; for a graph on raw audio the manifest's top-level
    ``sample_rate``, else the decoder's, else ``default``.  ``signal``: the graph input the audio goes to
    (named when it takes features but the manifest has no front end to compute them)."""
    if frontend is not None:
        return int(frontend.sample_rate)
    rate = model.manifest.get("sample_rate") or (decoder.sample_rate if decoder else None) or default
    if not rate and len(signal.shape) == 3 and signal.shape[1] != 1:
        raise ModelFileError(
            where, f"the model's input {signal.describe()} takes features, but the manifest has no front end to "
            "compute them; convert the model again with --config (NeMo exports) or --frontend-json"
        )
    if not rate:
        raise ModelFileError(where, "the model takes raw audio but its manifest gives no 'sample_rate' to resample to")
    if not is_int(rate) or not 0 < rate <= MAX_SAMPLE_RATE:
        raise ModelFileError(where, f"'sample_rate' must be an integer from 1 to {MAX_SAMPLE_RATE}, got {rate!r}")
    return rate


def audio_tensor(samples: np.ndarray, signal) -> np.ndarray:
    """Float samples in [-1, 1] typed and shaped for a graph input ``signal`` on raw audio ([T], [1, T] or
    [1, 1, T]); an integer input gets full-scale PCM."""
    dtype = np.dtype(signal.dtype)
    samples = to_pcm(samples, dtype) if dtype.kind in "iu" else samples.astype(dtype)
    return samples.reshape((1,) * (len(signal.shape) - 1) + (-1,))
