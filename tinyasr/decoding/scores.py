"""What every decoder needs from a model output: scores as log-probabilities, frames by classes, times.

Time stamps.  Output frame ``i`` covers ``[i * frame_seconds, (i + 1) * frame_seconds)``
where ``frame_seconds = hop_length / sample_rate * subsampling`` (see
:func:`output_frame_seconds`).  It is never ``duration / output_frames``: the
feature frontend pads the time axis (NeMo's ``pad_to``), so the output has more
frames than the audio would account for and such a ratio drifts.
"""

from __future__ import annotations

from typing import Tuple

import numpy as np

from tinyasr.errors import InputError, ModelFileError
from tinyasr.kernels.rowwise import log_probs_rows
from tinyasr.kernels.vector_math import all_finite

SCORE_KINDS = ("log_probs", "logits", "probs")
PROB_SLACK = 1e-3  # float32 rounding a softmax may show past [0, 1]



def output_frame_seconds(hop_seconds: float, feature_frames: int, output_frames: int) -> float:
    """Seconds per output frame: ``hop_seconds * subsampling``.

    ``subsampling = round(feature_frames / output_frames)`` is the network's
    total time stride (2 for QuartzNet, 8 for Citrinet), measured from the
    lengths of the feature input and the output the network produced from it.
    """
    if output_frames <= 0:
        raise InputError(f"the model produced {output_frames} output frames from {feature_frames} feature frames")
    subsampling = max(1, int(round(feature_frames / output_frames)))
    return hop_seconds * subsampling


def frames_by_classes(scores: np.ndarray, output: str) -> np.ndarray:
    """Drop a leading batch axis of 1: returns [frames, classes]."""
    scores = np.asarray(scores)
    if scores.ndim == 3 and scores.shape[0] == 1:
        scores = scores[0]
    if scores.ndim != 2:
        raise InputError(
            f"model output {output!r} has shape {np.shape(scores)}; expected [1, frames, classes] or [frames, classes]"
        )
    return scores


def label_runs(best: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """The first frames and the stops (past the last frame) of the runs of equal values in ``best``."""
    if len(best) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    firsts = np.flatnonzero(np.concatenate(([True], best[1:] != best[:-1])))
    return firsts, np.append(firsts[1:], len(best))


def frame_span(first: int, stop: int, frame_seconds: float, duration: float) -> Tuple[float, float]:
    """Start and end seconds of frames [first, stop); the end never passes the audio's end."""
    start = first * frame_seconds
    return float(start), float(max(start, min(stop * frame_seconds, duration)))


def frame_spans(firsts: np.ndarray, stops: np.ndarray, frame_seconds: float,
                duration: float) -> Tuple[np.ndarray, np.ndarray]:
    """frame_span of many runs at once: their start and end seconds as arrays."""
    starts = firsts * frame_seconds
    return starts, np.maximum(starts, np.minimum(stops * frame_seconds, duration))


def check_scores(scores: np.ndarray, kind: str, model, output: str) -> None:
    """ModelFileError naming ``model`` and ``output`` if the scores cannot be decoded into anything meaningful:
    NaN or Inf (broken weights; text decoded from them would be garbage), or "probs" that are not in [0, 1]
    (e.g. a log-softmax output declared as probabilities)."""
    scores = np.asarray(scores)
    if scores.dtype.kind == "f" and not _all_finite(scores):
        bad = int(scores.size - np.isfinite(scores).sum())
        raise ModelFileError(model, f"output {output!r} holds {bad} NaN or infinite values of {scores.size}: "
                                    "the model is broken (weights or graph), its result cannot be decoded")
    if kind == "probs" and scores.size and not (-PROB_SLACK <= scores.min() and scores.max() <= 1 + PROB_SLACK):
        raise ModelFileError(model, f"the decoder reads output {output!r} as probs, but it holds values from "
                                    f"{float(scores.min()):.4g} to {float(scores.max()):.4g}; set the decoder's "
                                    "'logits' to log_probs or logits")


def _all_finite(scores: np.ndarray) -> bool:
    """np.isfinite(scores).all(): one Numba call for float32 / float64 (kernels.vector_math.all_finite; a stream
    checks every graph run's scores, where numpy's three calls took 3-9 us with their code out of the caches),
    numpy's for float16."""
    if scores.dtype in (np.float32, np.float64):
        return all_finite(scores)
    return bool(np.isfinite(scores).all())


def to_log_probs(scores: np.ndarray, kind: str) -> np.ndarray:
    """Normalised natural-log probabilities (float64) over the last axis from log-probs, logits or probs."""
    scores = np.asarray(scores)
    rows = scores.reshape(-1, scores.shape[-1] if scores.ndim else 1)  # a view, for [frames, classes] any strides
    return log_probs_and_best(rows, kind)[0].reshape(scores.shape)


def log_probs_and_best(scores: np.ndarray, kind: str) -> Tuple[np.ndarray, np.ndarray]:
    """to_log_probs of [frames, classes] ``scores`` and each frame's best class (its argmax): log-softmax, a
    no-op up to rounding on log-probs, renormalising probs (kernels.rowwise.log_probs_rows)."""
    if kind not in SCORE_KINDS:
        raise InputError(f"decoder 'logits' is {kind!r}; expected one of {', '.join(SCORE_KINDS)}")
    scores = np.asarray(scores)
    if scores.ndim != 2 or not scores.shape[1]:
        raise InputError(f"scores of shape {scores.shape}: expected [frames, classes] with at least one class")
    if scores.dtype not in (np.float32, np.float64):
        scores = scores.astype(np.float64)
    log_probs = np.empty(scores.shape, np.float64)
    best = np.empty(scores.shape[0], np.int64)
    log_probs_rows(scores, kind == "probs", log_probs, best)
    return log_probs, best
