"""Clip and frame classification: top-k labels of a clip, labelled segments of a frame model."""

from __future__ import annotations

from typing import Optional

import numpy as np

from tinyasr.decoding.results import Classification, FrameClassification, Segment
from tinyasr.decoding.scores import (
    frame_span,
    frames_by_classes,
    label_runs,
    to_log_probs,
)
from tinyasr.decoding.specs import ClassificationSpec, FrameClassificationSpec
from tinyasr.errors import InputError


def classify_clip(
    scores: np.ndarray,
    spec: ClassificationSpec,
    *,
    top_k: int = 5,
    duration: float = 0.0,
) -> Classification:
    """Top-k labels of a clip model; ``scores`` [1, classes] or [classes] (trailing axes of 1 allowed)."""
    if top_k < 1:
        raise InputError(f"top_k must be at least 1, got {top_k}")
    labels = spec.labels
    scores = np.asarray(scores)
    flat = scores.reshape(-1)
    if flat.size != len(labels):
        raise InputError(
            f"model output {spec.output!r} has shape {scores.shape}; expected one score per label "
            f"({len(labels)} labels)"
        )
    probs = np.exp(to_log_probs(flat, spec.logits))
    order = np.argsort(-probs, kind="stable")[:top_k]
    return Classification(labels=tuple((labels[i], float(probs[i])) for i in order), duration=float(duration))


def classify_frames(
    scores: np.ndarray,
    spec: FrameClassificationSpec,
    *,
    frame_seconds: float,
    valid_frames: Optional[int] = None,
    duration: Optional[float] = None,
) -> FrameClassification:
    """Per-frame labels of a frame model; ``scores`` [1, frames, classes] or [frames, classes]."""
    labels = spec.labels
    scores = frames_by_classes(scores, spec.output)
    if scores.shape[1] != len(labels):
        raise InputError(
            f"model output {spec.output!r} has {scores.shape[1]} classes but the decoder lists {len(labels)} labels"
        )
    probs = np.exp(to_log_probs(scores, spec.logits))
    if valid_frames is not None:
        probs = probs[: max(0, valid_frames)]
    if duration is None:
        duration = len(probs) * frame_seconds
    best = probs.argmax(axis=1)
    segments = tuple(
        Segment(labels[int(best[first])], *frame_span(first, stop, frame_seconds, duration),
                confidence=float(probs[first:stop, best[first]].mean()))
        for first, stop in zip(*(runs.tolist() for runs in label_runs(best)))
    )
    return FrameClassification(
        label_names=tuple(labels),
        probabilities=probs.astype(np.float32),
        frame_seconds=float(frame_seconds),
        segments=segments,
        duration=float(duration),
    )
