"""How far a transcript (CTC or transducer) is to be trusted: ``Result.confidence`` and ``Result.out_of_vocabulary``.

Both look at the speech the voice activity detector heard (tinyasr.pipeline.vad), not at the whole audio.
Two scores in [0, 1], the decoder entry's ``oov_score`` picks one (tinyasr.decoding.specs.CTCSpec):

* ``coverage`` (default): the share of speech frames within ``cover_seconds`` of a frame whose best class is
  a token.  A closed-vocabulary model trained to leave other speech blank (the retrained digits model,
  recipes/digits/) covers in-vocabulary speech and leaves the rest uncovered; an open-vocabulary model
  (characters) covers all speech, so this default flags nothing there.
* ``certainty``: exp(-mean entropy of the posteriors over speech frames).  A model never shown speech outside
  its vocabulary reads it as tokens, but less surely than its own words (measured on the first bundled digits
  model, see recipes/digits/out_of_box.py).

``Result.out_of_vocabulary``: at least ``oov_min_speech`` s of speech and the score under ``oov_threshold``.

A transducer (tinyasr.decoding.transducer_decoder) goes behind the same gate (:func:`in_speech`, reach
COVER_SECONDS) and gets ``coverage`` with this module's defaults, its token frames being the frames its search
emitted tokens on (a TDT token: the frames its duration skips, as its time span says).  ``certainty`` does not
apply to it: a transducer has no posterior per frame independent of the tokens before it (the joint's
distribution depends on the path), and its decoder entry has no ``oov_score`` key to ask for it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

import numpy as np

OOV_SCORES = ("coverage", "certainty")
# Defaults for a decoder entry without its own rule: lenient, since they also serve open-vocabulary models.
# Measured with the first bundled digits model (2026-12-05, recipes/digits/evaluate.py's string sets):
# coverage under 0.3 flags 1.0 % of the held-out speaker's digit strings and none of the training speakers'
# held-back ones.  That model emits digits for English too, so only a stated rule flags English there
# (certainty < 0.978: 8 of the 11 shared English clips without digit words, 0.7 % of held-back strings).
COVER_SECONDS = 0.3  # a token accounts for the speech this close to its frames
OOV_MIN_SPEECH = 0.2  # seconds of speech below which nothing is flagged
OOV_THRESHOLD = 0.3


@dataclass(frozen=True, eq=False)
class Speech:
    """What the voice activity detector found in the decoded audio, times in seconds from its start.

    ``frames``: bool per detector frame of ``frame_seconds`` (speech or not); ``segments``: the padded
    (start, end) spans it keeps, ``end`` = inf for one still open in a stream.
    """

    frames: np.ndarray
    frame_seconds: float
    segments: Tuple[Tuple[float, float], ...]

    def holds(self, start: float, end: float) -> bool:
        """Whether [start, end] meets a segment."""
        return any(start <= stop and end >= begin for begin, stop in self.segments)

    @property
    def seconds(self) -> float:
        return float(np.count_nonzero(self.frames)) * self.frame_seconds


def speech_confidence(log_probs: np.ndarray, blank: int, frame_seconds: float, speech: Speech, score: Optional[str],
               cover_seconds: float) -> float:
    """The ``score`` (None: coverage) of decoded [frames, classes] log-posteriors with output frames of
    ``frame_seconds``; 1.0 when no speech was heard."""
    centres = (np.flatnonzero(speech.frames) + 0.5) * speech.frame_seconds
    if centres.size == 0 or len(log_probs) == 0:
        return 1.0
    if score == "certainty":
        frames = np.minimum((centres / frame_seconds).astype(int), len(log_probs) - 1)
        entropy = -(np.exp(log_probs[frames]) * log_probs[frames]).sum(axis=1)
        return float(np.exp(-entropy.mean()))
    return coverage((np.flatnonzero(log_probs.argmax(axis=1) != blank) + 0.5) * frame_seconds, speech, cover_seconds)


def coverage(token_centres: np.ndarray, speech: Speech, cover_seconds: float) -> float:
    """The ``coverage`` score: the share of speech frames within ``cover_seconds`` of a token frame, given the
    centres (seconds, ascending) of the output frames a token accounts for (CTC: those whose best class is a
    token; a transducer: the frames its tokens were emitted on, tinyasr.decoding.transducer_decoder); 1.0
    when no speech was heard."""
    centres = (np.flatnonzero(speech.frames) + 0.5) * speech.frame_seconds
    if centres.size == 0:
        return 1.0
    if token_centres.size == 0:
        return 0.0
    at = np.searchsorted(token_centres, centres)
    nearest = np.minimum(np.abs(centres - token_centres[np.maximum(at - 1, 0)]),
                         np.abs(token_centres[np.minimum(at, token_centres.size - 1)] - centres))
    return float(np.mean(nearest <= cover_seconds + 1e-9))


def in_speech(tokens: Sequence, speech: Speech, reach: float) -> list:
    """The speech gate every decoder applies: the tokens (anything with ``start`` / ``end`` seconds) whose span,
    widened by ``reach`` s on both sides, meets a speech segment; the others fell in silence, noise or a tone."""
    return [t for t in tokens if speech.holds(t.start - reach, t.end + reach)]


def is_out_of_vocabulary(score: float, speech: Speech, threshold: Optional[float],
                         min_speech: Optional[float]) -> bool:
    """The rule: enough speech and a score under the threshold (None: the module's defaults)."""
    floor = OOV_MIN_SPEECH if min_speech is None else min_speech
    return speech.seconds >= floor and score < (OOV_THRESHOLD if threshold is None else threshold)


def out_of_vocabulary_warning(where: str, score: float) -> str:
    """The line the CLI prints on stderr for a Result flagged out of vocabulary."""
    return (f"{where}: warning: the speech does not sound like this model's vocabulary (confidence "
            f"{score:.2f}); the text is likely wrong")
