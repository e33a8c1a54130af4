"""Turn model outputs into text and labels: CTC greedy decoding and classification.

Pure numpy: greedy decoding is one argmax and a few vectorised comparisons per
utterance, far below the cost of the network, so Numba would buy nothing here.

Time stamps.  Output frame ``i`` covers ``[i * frame_seconds, (i + 1) * frame_seconds)``
where ``frame_seconds = hop_length / sample_rate * subsampling`` (see
:func:`output_frame_seconds`).  It is never ``duration / output_frames``: the
feature frontend pads the time axis (NeMo's ``pad_to``), so the output has more
frames than the audio would account for and such a ratio drifts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

import numpy as np

from .errors import InputError

WORD_START = "\u2581"  # sentencepiece's "▁": the piece starts a new word
WORDPIECE_CONTINUATION = "##"  # WordPiece: the piece continues the previous word
VOCABULARY_TYPES = ("chars", "subword", "words")
SCORE_KINDS = ("log_probs", "logits", "probs")


# ---------------------------------------------------------------------------
# Results


@dataclass(frozen=True)
class Token:
    """One emitted CTC token.

    ``start`` / ``end`` are seconds from the start of the audio (end exclusive:
    the end of the last frame of the token's run); ``confidence`` in (0, 1] is
    the geometric mean of the token's probability over the frames of its run.
    """

    text: str
    id: int
    start: float
    end: float
    confidence: float


@dataclass(frozen=True)
class Word:
    """A word built from tokens: times in seconds; confidence = lowest token confidence."""

    text: str
    start: float
    end: float
    confidence: float


@dataclass(frozen=True)
class Result:
    """A transcript: ``text`` is the words joined by single spaces; ``duration`` in seconds."""

    text: str
    tokens: Tuple[Token, ...]
    words: Tuple[Word, ...]
    duration: float

    def to_dict(self) -> dict:
        return {
            "text": self.text,
            "duration": self.duration,
            "words": [vars(w) for w in self.words],
            "tokens": [vars(t) for t in self.tokens],
        }


@dataclass(frozen=True)
class Classification:
    """Top labels of a clip: ``labels`` is ((label, probability), ...), most probable first."""

    labels: Tuple[Tuple[str, float], ...]
    duration: float

    @property
    def label(self) -> str:
        return self.labels[0][0]

    @property
    def probability(self) -> float:
        return self.labels[0][1]

    def to_dict(self) -> dict:
        return {
            "label": self.label,
            "labels": [{"label": name, "probability": p} for name, p in self.labels],
            "duration": self.duration,
        }


@dataclass(frozen=True)
class Segment:
    """A run of output frames with the same most probable label; times in seconds.

    ``confidence`` is the mean probability of ``label`` over the run's frames.
    """

    label: str
    start: float
    end: float
    confidence: float


@dataclass(frozen=True, eq=False)
class FrameClassification:
    """Per-frame labels of a frame model (e.g. frame VAD).

    ``probabilities`` is float32 [frames, classes]; frame ``i`` covers
    ``[i * frame_seconds, (i + 1) * frame_seconds)``; ``segments`` merges runs
    of the same most probable label.
    """

    label_names: Tuple[str, ...]
    probabilities: np.ndarray
    frame_seconds: float
    segments: Tuple[Segment, ...]
    duration: float

    @property
    def frame_labels(self) -> Tuple[str, ...]:
        return tuple(self.label_names[i] for i in self.probabilities.argmax(axis=1))

    def to_dict(self) -> dict:
        return {
            "frame_seconds": self.frame_seconds,
            "duration": self.duration,
            "segments": [vars(s) for s in self.segments],
        }


# ---------------------------------------------------------------------------
# Shared helpers


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


def _frames_by_classes(scores: np.ndarray, output: str) -> np.ndarray:
    """Drop a leading batch axis of 1: returns [frames, classes]."""
    scores = np.asarray(scores)
    if scores.ndim == 3 and scores.shape[0] == 1:
        scores = scores[0]
    if scores.ndim != 2:
        raise InputError(
            f"model output {output!r} has shape {np.shape(scores)}; expected [1, frames, classes] or [frames, classes]"
        )
    return scores


def _runs(best: np.ndarray):
    """(first, stop) frame index pairs of the runs of equal values in ``best``."""
    if len(best) == 0:
        return []
    starts = np.flatnonzero(np.concatenate(([True], best[1:] != best[:-1])))
    return list(zip(starts.tolist(), np.append(starts[1:], len(best)).tolist()))


def _span(first: int, stop: int, frame_seconds: float, duration: float) -> Tuple[float, float]:
    """Start and end seconds of frames [first, stop); the end never passes the audio's end."""
    start = first * frame_seconds
    return float(start), float(max(start, min(stop * frame_seconds, duration)))


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


# ---------------------------------------------------------------------------
# CTC


def _id_to_text(vocabulary: Sequence[str], blank: int, classes: int, output: str):
    """Map class ids to token text; the vocabulary may list the blank or leave it out."""
    if not 0 <= blank < classes:
        raise InputError(f"CTC blank index {blank} is outside the {classes} classes of output {output!r}")
    vocabulary = list(vocabulary)
    if len(vocabulary) == classes:
        return vocabulary
    if len(vocabulary) == classes - 1:
        return vocabulary[:blank] + ["<blank>"] + vocabulary[blank:]
    raise InputError(
        f"model output {output!r} has {classes} classes but the vocabulary has {len(vocabulary)} entries "
        f"(expected {classes} with the blank, or {classes - 1} without)"
    )


def _starts_word(text: str, vocabulary_type: str, wordpiece: bool) -> bool:
    if vocabulary_type == "words":
        return True
    if wordpiece:
        return not text.startswith(WORDPIECE_CONTINUATION)
    return text.startswith(WORD_START)


def _word_text(text: str, wordpiece: bool) -> str:
    if wordpiece and text.startswith(WORDPIECE_CONTINUATION):
        return text[len(WORDPIECE_CONTINUATION):]
    return text.replace(WORD_START, "")


def tokens_to_words(tokens: Sequence[Token], vocabulary_type: str, wordpiece: bool = False) -> Tuple[Word, ...]:
    """Group tokens into words.

    chars: a token that is all whitespace ends the current word; subword:
    sentencepiece pieces starting with "▁" begin a new word (or, with
    ``wordpiece``, every piece not starting with "##" does); words: each token
    is a word.
    """
    if vocabulary_type not in VOCABULARY_TYPES:
        raise InputError(f"vocabulary_type {vocabulary_type!r}; expected one of {', '.join(VOCABULARY_TYPES)}")
    groups = []
    current = []
    for token in tokens:
        if vocabulary_type == "chars":
            boundary, text = not token.text.strip(), token.text
        else:
            boundary, text = _starts_word(token.text, vocabulary_type, wordpiece), _word_text(token.text, wordpiece)
        if boundary and current:
            groups.append(current)
            current = []
        if text.strip():
            current.append((token, text))
    if current:
        groups.append(current)
    return tuple(
        Word(
            text="".join(text for _, text in group),
            start=group[0][0].start,
            end=group[-1][0].end,
            confidence=min(token.confidence for token, _ in group),
        )
        for group in groups
    )


def ctc_greedy(
    scores: np.ndarray,
    *,
    vocabulary: Sequence[str],
    blank: int,
    vocabulary_type: str = "chars",
    kind: str = "log_probs",
    frame_seconds: float,
    valid_frames: Optional[int] = None,
    duration: Optional[float] = None,
    output: str = "output",
) -> Result:
    """Best-path CTC decoding: argmax per frame, collapse repeats, drop blanks.

    ``scores``: [1, frames, classes] or [frames, classes] in ``kind`` units.
    Only the first ``valid_frames`` frames are decoded (the rest come from
    feature padding).  ``duration`` defaults to the decoded frames' span.
    """
    log_probs = to_log_probs(_frames_by_classes(scores, output), kind)
    if valid_frames is not None:
        log_probs = log_probs[: max(0, valid_frames)]
    texts = _id_to_text(vocabulary, blank, log_probs.shape[1], output)
    # NeMo's WordPiece vocabularies mark continuations with "##" and never use "▁"
    wordpiece = any(t.startswith(WORDPIECE_CONTINUATION) for t in texts) and not any(WORD_START in t for t in texts)
    if duration is None:
        duration = len(log_probs) * frame_seconds

    best = log_probs.argmax(axis=1)
    frame_scores = log_probs[np.arange(len(best)), best]
    tokens = []
    for first, stop in _runs(best):
        token_id = int(best[first])
        if token_id != blank:
            start, end = _span(first, stop, frame_seconds, duration)
            confidence = float(np.exp(frame_scores[first:stop].mean()))
            tokens.append(Token(text=texts[token_id], id=token_id, start=start, end=end, confidence=confidence))
    words = tokens_to_words(tokens, vocabulary_type, wordpiece)
    return Result(text=" ".join(w.text for w in words), tokens=tuple(tokens), words=words, duration=float(duration))


# ---------------------------------------------------------------------------
# Classification


def classify_clip(
    scores: np.ndarray,
    *,
    labels: Sequence[str],
    kind: str = "logits",
    top_k: int = 5,
    duration: float = 0.0,
    output: str = "output",
) -> Classification:
    """Top-k labels of a clip model; ``scores`` [1, classes] or [classes] (trailing axes of 1 allowed)."""
    if top_k < 1:
        raise InputError(f"top_k must be at least 1, got {top_k}")
    scores = np.asarray(scores)
    flat = scores.reshape(-1)
    if flat.size != len(labels):
        raise InputError(
            f"model output {output!r} has shape {scores.shape}; expected one score per label ({len(labels)} labels)"
        )
    probs = np.exp(to_log_probs(flat, kind))
    order = np.argsort(-probs, kind="stable")[:top_k]
    return Classification(labels=tuple((labels[i], float(probs[i])) for i in order), duration=float(duration))


def classify_frames(
    scores: np.ndarray,
    *,
    labels: Sequence[str],
    kind: str = "logits",
    frame_seconds: float,
    valid_frames: Optional[int] = None,
    duration: Optional[float] = None,
    output: str = "output",
) -> FrameClassification:
    """Per-frame labels of a frame model; ``scores`` [1, frames, classes] or [frames, classes]."""
    scores = _frames_by_classes(scores, output)
    if scores.shape[1] != len(labels):
        raise InputError(
            f"model output {output!r} has {scores.shape[1]} classes but the decoder lists {len(labels)} labels"
        )
    probs = np.exp(to_log_probs(scores, kind))
    if valid_frames is not None:
        probs = probs[: max(0, valid_frames)]
    if duration is None:
        duration = len(probs) * frame_seconds
    best = probs.argmax(axis=1)
    segments = tuple(
        Segment(labels[int(best[first])], *_span(first, stop, frame_seconds, duration),
                confidence=float(probs[first:stop, best[first]].mean()))
        for first, stop in _runs(best)
    )
    return FrameClassification(
        label_names=tuple(labels),
        probabilities=probs.astype(np.float32),
        frame_seconds=float(frame_seconds),
        segments=segments,
        duration=float(duration),
    )
