"""Streaming audio input: a stateful resampler and a stateful feature front end.

Audio arrives in pieces of any size; each piece yields the resampled samples and
the feature frames that are complete so far.  Both stages are exact: the
concatenation of everything they emit equals the offline result on the whole
signal (``audio.resample``; ``frontend.compute_features`` with ``normalize=None``)
to float rounding, whatever the split points.

Look-ahead.  NeMo's STFT is centred: frame ``i`` covers samples
``[i*hop - n_fft//2, i*hop + n_fft//2)``, so it is emitted once ``n_fft//2``
samples past its centre have arrived (16 ms at 16 kHz, n_fft 512).  The left
half of the first frame is the zero (or reflect) padding.  The resampler needs
half its filter length (10 samples of the slower rate) of look-ahead.

Normalisation.  A model trained with ``normalize="per_feature"`` divides each
feature by statistics of the *whole* utterance, which a stream does not have.
Streams then normalise with a :class:`FixedNormalizer` (mean / std per feature
measured on training audio, see :func:`estimate_feature_stats`, stored in the
manifest as ``streaming.feature_mean`` / ``streaming.feature_std``) or a
:class:`RunningNormalizer` (statistics of the utterance so far).  Both are
approximations; docs/streaming.md gives their measured effect on accuracy.
"""

from __future__ import annotations

from typing import Iterable, Optional, Tuple

import numpy as np

from tinyasr.errors import AudioError, TinyASRError
from tinyasr.features.frontend import (
    STD_GUARD,
    FeatureCore,
    FrontendConfig,
    compute_features,
    padded_frame_count,
)
from tinyasr.kernels.spectrum import emphasized_after, standardized
from tinyasr.kernels.vector_math import all_finite

_EMPTY = np.zeros(0, np.float64)


# ---------------------------------------------------------------------------
# Normalisation


class FixedNormalizer:
    """(x - mean) / (std + 1e-5) per feature, with statistics fixed in advance (e.g. from training audio)."""

    def __init__(self, mean, std):
        self.mean = np.asarray(mean, np.float64).reshape(-1, 1)
        self.std = np.asarray(std, np.float64).reshape(-1, 1)
        if self.mean.shape != self.std.shape or not np.all(np.isfinite(self.mean)) or np.any(self.std < 0):
            raise TinyASRError(f"feature statistics: mean {self.mean.shape[0]} and std {self.std.shape[0]} values "
                               "must be finite, of equal length, std >= 0")
        self._means, self._divisors = self.mean[:, 0], (self.std + STD_GUARD)[:, 0]  # once, not per streamed chunk

    def reset(self) -> None:
        pass

    def __call__(self, frames: np.ndarray, final: bool = False) -> np.ndarray:
        """float32 [features, n] from float64 features."""
        if frames.shape[0] != self.mean.shape[0]:
            raise TinyASRError(f"feature statistics have {self.mean.shape[0]} features, the front end "
                               f"produces {frames.shape[0]}")
        return standardized(frames, frames.shape[1], self._means, self._divisors, 0.0, frames.shape[1])


class RunningNormalizer:
    """Per-feature mean / std of the utterance so far (NeMo's formula: std with n-1, plus 1e-5).

    With a ``prior`` (FixedNormalizer) the statistics start from it, weighted as
    ``prior_frames`` frames, so early frames are usable.  Without one, the first
    ``warmup`` frames are held back and normalised together (extra latency at the
    start of each utterance only); an utterance shorter than that is normalised
    exactly as offline.
    """

    def __init__(self, prior: Optional[FixedNormalizer] = None, prior_frames: int = 100, warmup: int = 50):
        self.prior, self.prior_frames, self.warmup = prior, int(prior_frames), int(warmup)
        self.reset()

    def reset(self) -> None:
        self._held = []  # warm-up frames not yet returned (no prior only)
        self._count, self._sum, self._sum_sq = 0, 0.0, 0.0
        if self.prior is not None:
            n, mean, std = self.prior_frames, self.prior.mean, self.prior.std
            self._count, self._sum, self._sum_sq = n, mean * n, std**2 * (n - 1) + mean**2 * n

    def __call__(self, frames: np.ndarray, final: bool = False) -> np.ndarray:
        if self.prior is None and self._count == 0:  # still warming up
            self._held.append(frames)
            held = np.concatenate(self._held, axis=1)
            if held.shape[1] < self.warmup and not final:
                return held[:, :0]
            self._held = []
            self._count = held.shape[1]
            self._sum, self._sum_sq = held.sum(axis=1, keepdims=True), (held**2).sum(axis=1, keepdims=True)
            return self._scale(held, self._count, self._sum, self._sum_sq)
        counts = self._count + np.arange(1, frames.shape[1] + 1)
        sums = self._sum + np.cumsum(frames, axis=1)
        sums_sq = self._sum_sq + np.cumsum(frames**2, axis=1)
        if frames.shape[1]:
            self._count, self._sum, self._sum_sq = int(counts[-1]), sums[:, -1:], sums_sq[:, -1:]
        return self._scale(frames, counts, sums, sums_sq)

    @staticmethod
    def _scale(frames, counts, sums, sums_sq):
        mean = sums / counts
        var = np.maximum(sums_sq - counts * mean**2, 0.0) / np.maximum(counts - 1, 1)
        return (frames - mean) / (np.sqrt(var) + STD_GUARD)


def estimate_feature_stats(signals: Iterable[np.ndarray], config: FrontendConfig) -> Tuple[np.ndarray, np.ndarray]:
    """Mean and std per feature of the un-normalised features over all valid frames of ``signals``.

    For a model trained with per-utterance normalisation, run this on (a sample
    of) its training audio and store the result in the manifest as
    ``streaming: {"feature_mean": [...], "feature_std": [...]}``.
    """
    raw = FrontendConfig(**{**config.to_dict(), "normalize": None, "pad_to": 0})
    count, total, total_sq = 0, 0.0, 0.0
    for samples in signals:
        features, valid = compute_features(np.asarray(samples, np.float32), raw)
        used = features[:, :valid].astype(np.float64)
        count += valid
        total = total + used.sum(axis=1)
        total_sq = total_sq + (used**2).sum(axis=1)
    if count < 2:
        raise AudioError("estimate_feature_stats needs at least two feature frames of audio")
    mean = total / count
    return mean, np.sqrt(np.maximum(total_sq / count - mean**2, 0.0) * count / (count - 1))


# ---------------------------------------------------------------------------
# Features


class StreamingFeatures:
    """compute_features for audio given in pieces: ``accept`` returns the new frames [features, n] float32.

    ``finish`` ends the utterance: it returns the last frames (computed with the
    right-hand padding), then the pad_value frames offline adds (NeMo's masked
    last frame and the padding to a multiple of ``pad_to``), so the
    concatenated frames have the offline shape.  ``normalizer`` is required when
    the config normalises over the utterance (it is then used instead).  Each frame
    is computed by the offline path's own ``FeatureCore``; this class adds only the
    carried samples, pre-emphasis state, the padding at both ends (the centring's and
    the config's pad_seconds of silence) and the normaliser.  ``num_samples`` counts
    that silence too.
    """

    def __init__(self, config: FrontendConfig, normalizer=None):
        if not config.center or config.exact_pad or config.remove_mean:
            setting = "center=False" if not config.center else "exact_pad" if config.exact_pad else "remove_mean"
            raise TinyASRError(f"streaming front end: {setting} is not supported (it needs the whole signal "
                               "or is not NeMo's default); only centred STFTs stream")
        if config.normalize is not None and normalizer is None:
            raise TinyASRError(f"streaming front end: the model normalises features {config.normalize!r} over the "
                               "whole utterance; give a FixedNormalizer or RunningNormalizer")
        self.config = config
        self.normalizer = normalizer if config.normalize is not None else None
        self._half = config.n_fft // 2
        self._core = FeatureCore(config)
        self.reset()

    def reset(self) -> None:
        """Start a new utterance."""
        self._padded = _EMPTY  # pre-emphasised, padded signal from the first sample of the next frame on
        self._started = False  # the left padding is in place
        self._head = _EMPTY  # reflect mode: samples held until the left reflection can be built
        self._tail = _EMPTY  # reflect mode: the last half + 1 samples, for the right reflection
        self._last_sample = 0.0  # pre-emphasis state
        self.num_samples = 0
        self.num_frames = 0  # frames computed so far (a warming-up normaliser may still hold some back)
        if self.normalizer is not None:
            self.normalizer.reset()

    def _append(self, x: np.ndarray) -> None:
        """Pre-emphasise ``x`` onto the signal held, after the left padding: zeros, or (reflect) the reflection of
        the first samples, held back until there are enough of them."""
        half, coefficient, previous = self._half, self.config.preemph or 0.0, self._last_sample
        if x.size:
            self._last_sample = float(x[-1])
        if self.config.pad_mode != "reflect":
            if not self._started:
                self._padded, self._started = np.zeros(half), True
            self._padded = emphasized_after(self._padded, x, coefficient, previous)
            return
        y = emphasized_after(_EMPTY, x, coefficient, previous)
        self._tail = np.concatenate([self._tail, y])[-(half + 1):]
        if not self._started:
            self._head = np.concatenate([self._head, y])
            if self._head.size <= half:
                return
            y, self._head = self._head, _EMPTY
            self._padded = y[half:0:-1].copy()
            self._started = True
        self._padded = np.concatenate([self._padded, y])

    def _frames(self, count: int) -> np.ndarray:
        """Log-mel (or MFCC) of the next ``count`` frames of _padded, float64 [features, count]; drops used samples."""
        count = max(count, 0)
        features = self._core(self._padded, count)
        self._padded = self._padded[count * self.config.hop_length:]
        self.num_frames += count
        return features

    def _ready(self) -> int:
        return self._core.frames_in(self._padded.size) if self._started else 0

    def _output(self, features: np.ndarray, final: bool = False) -> np.ndarray:
        if self.normalizer is not None:
            features = self.normalizer(features, final=final)
        return features.astype(np.float32, copy=False)

    def accept(self, samples: np.ndarray) -> np.ndarray:
        """Float samples at config.sample_rate -> the newly complete frames [features, n] float32."""
        x = np.asarray(samples).reshape(-1)
        if x.dtype not in (np.float32, np.float64):
            x = x.astype(np.float64)
        if not all_finite(x):
            raise AudioError("audio samples contain NaN or Inf")
        self._take(x)
        return self._output(self._frames(self._ready()))

    def _take(self, x: np.ndarray) -> None:
        """Pre-emphasise and append samples; the first of an utterance come after the config's leading silence."""
        if self.num_samples == 0 and x.size and self.config.pad_samples:
            x = np.concatenate([np.zeros(self.config.pad_samples), x])
        self.num_samples += x.size
        self._append(x)

    def finish(self) -> np.ndarray:
        """The utterance ends: its last frames and the offline padding frames; then reset for the next one."""
        if self.config.pad_samples:  # the trailing silence (_take adds the leading one when no audio came)
            self._take(np.zeros(self.config.pad_samples))
        cfg, half, n = self.config, self._half, self.num_samples
        if cfg.pad_mode == "reflect":
            if n <= half:
                raise AudioError(f"audio of {n} samples is too short for reflect padding of {half} samples "
                                 f"(n_fft={cfg.n_fft}); need at least {half + 1}")
            right = self._tail[-2:-(half + 2):-1]
        else:
            if not self._started:
                self._append(_EMPTY)
            right = np.zeros(half)
        self._padded = np.concatenate([self._padded, right])
        total = (n + 2 * half - cfg.n_fft) // cfg.hop_length + 1  # STFT frames of the whole signal
        valid = total if cfg.kind == "mfcc" else total - 1  # NeMo masks the mel front end's last frame
        if valid < 1:
            raise AudioError(f"audio of {n} samples is too short: at least hop_length={cfg.hop_length} "
                             "samples are needed for one feature frame")
        last = self._output(self._frames(valid - self.num_frames), final=True)
        padding = np.full((cfg.num_features, padded_frame_count(total, cfg) - valid), cfg.pad_value, np.float32)
        self.reset()
        return np.concatenate([last, padding], axis=1)
