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


def run_confidences(frame_scores: np.ndarray, firsts: np.ndarray, stops: np.ndarray) -> np.ndarray:
    """Each run's confidence, exp of the mean of its frames' log-probs, for runs that cover ``frame_scores``
    one after another (firsts[0] = 0, each stop the next first): the sums in frame order.  A stream's partial
    result gives one run at a time and gets the offline decoder's bits."""
    return np.exp(np.add.reduceat(frame_scores, firsts) / (stops - firsts))


def run_confidence(run_scores: np.ndarray) -> float:
    """run_confidences of the one run ``run_scores`` (its frames' log-probs), to the same bits: the same sum, the
    same float64 division by the frame count and the same exp, with two numpy calls fewer (a stream's partial
    result makes one or two a chunk, each numpy call ~5-10 us there with its code out of the caches)."""
    return float(np.exp(np.add.reduceat(run_scores, _ONE_RUN) / len(run_scores))[0])


_ONE_RUN = np.zeros(1, np.int64)


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
    if scores.dtype.kind == "f" and not np.isfinite(scores).all():
        bad = int(scores.size - np.isfinite(scores).sum())
        raise ModelFileError(model, f"output {output!r} holds {bad} NaN or infinite values of {scores.size}: "
                                    "the model is broken (weights or graph), its result cannot be decoded")
    if kind == "probs" and scores.size and not (-PROB_SLACK <= scores.min() and scores.max() <= 1 + PROB_SLACK):
        raise ModelFileError(model, f"the decoder reads output {output!r} as probs, but it holds values from "
                                    f"{float(scores.min()):.4g} to {float(scores.max()):.4g}; set the decoder's "
                                    "'logits' to log_probs or logits")


def to_log_probs(scores: np.ndarray, kind: str) -> np.ndarray:
    """Normalised natural-log probabilities (float64) over the last axis from log-probs, logits or probs."""
    if kind not in SCORE_KINDS:
        raise InputError(f"decoder 'logits' is {kind!r}; expected one of {', '.join(SCORE_KINDS)}")
    scores = np.asarray(scores, dtype=np.float64)
    if kind == "probs":
        with np.errstate(divide="ignore"):
            scores = np.log(scores)
    # log-softmax: a no-op (up to rounding) on log-probs, and it renormalises probs
    shifted = scores - scores.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
