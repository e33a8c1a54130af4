"""What decoding returns: frozen dataclasses with times in seconds from the start of the audio."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Tuple

import numpy as np


@dataclass(frozen=True)
class Token:
    """One emitted token (CTC or transducer).

    ``start`` / ``end`` are seconds from the start of the audio (end exclusive:
    the end of the last frame of the token's run); ``confidence`` in (0, 1] is
    the geometric mean of the token's probability over the frames of its run
    (a transducer's: its probability among the token classes in the joint's
    output where the search chose it; its span is its frame, or a TDT token's
    duration).
    """

    text: str
    id: int
    start: float
    end: float
    confidence: float

    def spanning(self, start: float, end: float) -> "Token":
        """The same token at ``start`` .. ``end`` (dataclasses.replace, which reads the fields' list each call, took
        ~3 us of a stream's partial result, AMD EPYC Zen 1)."""
        return Token(self.text, self.id, start, end, self.confidence)


@dataclass(frozen=True)
class Word:
    """A word built from tokens: times in seconds; confidence = lowest token confidence."""

    text: str
    start: float
    end: float
    confidence: float

    def spanning(self, start: float, end: float) -> "Word":
        """The same word at ``start`` .. ``end`` (Token.spanning)."""
        return Word(self.text, start, end, self.confidence)


@dataclass(frozen=True)
class Result:
    """A transcript: ``text`` is the words joined by single spaces; ``duration`` in seconds.

    ``confidence`` in [0, 1]: the share of the speech heard that the tokens account for (1.0 without speech,
    tinyasr.decoding.confidence); ``out_of_vocabulary``: the audio holds speech the model's vocabulary does not
    seem to cover, so the text is likely wrong (the decoder entry's rule).
    """

    text: str
    tokens: Tuple[Token, ...]
    words: Tuple[Word, ...]
    duration: float
    confidence: float = 1.0
    out_of_vocabulary: bool = False

    def shifted(self, seconds: float, duration: float) -> "Result":
        """The same transcript with ``seconds`` added to every time and that duration: an utterance placed in
        its file, or times from audio that was decoded with silence before it.  Times stay in 0 .. ``duration``;
        a token that fell in silence before the audio starts at 0 and keeps its length."""
        return replace(self, tokens=tuple(shifted_item(t, seconds, duration) for t in self.tokens),
                       words=tuple(shifted_item(w, seconds, duration) for w in self.words), duration=float(duration))

    def to_dict(self) -> dict:
        return {
            "text": self.text,
            "duration": self.duration,
            "confidence": self.confidence,
            "out_of_vocabulary": self.out_of_vocabulary,
            "words": [vars(w) for w in self.words],
            "tokens": [vars(t) for t in self.tokens],
        }


def shifted_item(item, seconds: float, duration: float):
    """A Token or Word as Result.shifted places it: ``seconds`` added, kept in 0 .. ``duration``."""
    start = min(max(item.start + seconds, 0.0), duration)
    end = max(item.end + seconds, start + (item.end - item.start))
    return item.spanning(start, min(end, duration))


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
