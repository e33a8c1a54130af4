"""Greedy CTC partial results of a stream, in time linear in the audio.

A stream (tinyasr.pipeline.online) shows a partial result after every chunk.  Decoding all the frames so far
again each time (ctc_greedy) costs time quadratic in the utterance's length.  ``GreedyPartial`` keeps what can
no longer change and redoes only the rest:

* the argmax per frame and the runs of equal labels: a run ends for good when another label follows;
* a token's times, once its run has ended and its end lies before the audio's end (nothing clips it);
* whether a token lies in the speech the gate heard, once it ends (with its reach) before the first time a
  segment can still start (SpeechGate.undecided_from): closed segments never change; or once it meets the open
  segment before its last speech so far (SpeechGate.held_through): the segment will end after that;
* the words of those tokens but the last (a later token may extend it), and the last one as far as it goes
  (tinyasr.decoding.ctc.GrowingWords);
* the coverage score: a speech frame covered by a token frame stays covered, and one further than
  ``cover_seconds`` from every frame still to come stays uncovered.

The result equals ``ctc_greedy(frames so far, speech=...).shifted(-lead, seconds)`` field for field, floats
included (tests/test_streaming.py compares them after every chunk on real audio).
"""

from __future__ import annotations

import math
from typing import List, Optional

import numpy as np

from tinyasr.decoding.confidence import COVER_SECONDS, Speech, in_speech, is_out_of_vocabulary, speech_confidence
from tinyasr.decoding.ctc import GrowingWords, id_to_text, is_wordpiece
from tinyasr.decoding.results import Result, Token, Word, shifted_item
from tinyasr.decoding.scores import frame_span, log_probs_and_best
from tinyasr.decoding.specs import CTCSpec
from tinyasr.kernels.greedy import extend_frames, run_confidence, settle_coverage

SETTLE_MARGIN = 1e-6  # seconds kept from a boundary before a decision counts as final (float rounding)


class _Growing:
    """An array that frames are appended to, its storage doubled when full (amortised O(1) per frame)."""

    def __init__(self, dtype, columns: Optional[int] = None):
        self._data = np.empty((16,) if columns is None else (16, columns), dtype)
        self.size = 0

    def room(self, count: int) -> np.ndarray:
        """The storage, with room for ``count`` more rows after ``size`` (a kernel writes them, the caller moves
        ``size``)."""
        end = self.size + count
        if end > len(self._data):
            grown = np.empty((max(end, 2 * len(self._data)),) + self._data.shape[1:], self._data.dtype)
            grown[:self.size] = self._data[:self.size]
            self._data = grown
        return self._data

    def extend(self, rows: np.ndarray) -> None:
        self.room(len(rows))[self.size:self.size + len(rows)] = rows
        self.size += len(rows)

    @property
    def array(self) -> np.ndarray:
        return self._data[:self.size]


class GreedyPartial:
    """One utterance's greedy decoding, carried on chunk by chunk.

    ``spec``: the CTC decoder (its ``logits`` as the frames given to ``extend`` are: OnlineStream gives
    log-probs); ``frame_seconds``: per output frame; ``lead``: seconds of silence the front end put before the
    audio (the result is reported without it, as Recognizer.transcribe reports it).
    """

    def __init__(self, spec: CTCSpec, frame_seconds: float, lead: float = 0.0):
        self.spec, self.frame_seconds, self.lead = spec, frame_seconds, lead
        self.reach = spec.cover_seconds or COVER_SECONDS
        self._texts: Optional[List[str]] = None
        self._wordpiece = False
        self._best = _Growing(np.int64)
        self._scores = _Growing(np.float64)  # each frame's best log-prob
        self._log_probs: Optional[_Growing] = None  # all of them, for the "certainty" score only
        self._run_first = 0  # first frame of the last run (still open)
        self._runs: List[tuple] = []  # (id, first, stop) of the ended runs of a token, in order
        self._stable: List[Token] = []  # tokens of the first runs, final (ended, not clipped by the duration)
        self._decided = 0  # tokens whose place in or out of speech is final
        self._kept: List[Token] = []  # those of them in speech
        self._words = GrowingWords(spec.vocabulary_type)  # the words of _kept (made anew once WordPiece is known)
        self._texts_of_words: List[str] = []  # the texts of its closed words
        self._placed_tokens: List[Token] = []  # _kept shifted by -lead, while nothing clips them
        self._placed_words: List[Word] = []  # the closed words likewise
        # coverage score: token frame centres; speech frame centres not settled; settled covered / all speech
        self._token_centres = _Growing(np.float64)
        self._ends = np.empty(0, np.int64)  # extend_frames's run ends
        self._pending = _Growing(np.float64)
        self._covered = 0
        self._settled_uncovered = 0
        self._flags_seen = 0  # speech frames (Speech.frames) looked at

    @property
    def frames(self) -> int:
        return self._best.size

    def extend(self, scores: np.ndarray) -> int:
        """New frames [frames, classes] in ``spec.logits`` units; returns the last of them whose best class is a
        token (its index from the first frame ever given), or -1."""
        log_probs, best = log_probs_and_best(scores, self.spec.logits)
        if self._texts is None:
            self._texts = id_to_text(self.spec.vocabulary, self.spec.blank, log_probs.shape[1], self.spec.output)
            self._wordpiece = is_wordpiece(self._texts)
            self._words = GrowingWords(self.spec.vocabulary_type, self._wordpiece)
            if self.spec.oov_score == "certainty":
                self._log_probs = _Growing(np.float64, log_probs.shape[1])
        if not len(log_probs):
            return -1
        if len(self._ends) < len(best):
            self._ends = np.empty(2 * len(best), np.int64)
        if self._log_probs is not None:
            self._log_probs.extend(log_probs)
        first, count = self._best.size, len(best)
        labels, top, centres = self._best.room(count), self._scores.room(count), self._token_centres.room(count)
        self._token_centres.size, ends, last_token = extend_frames(
            log_probs, best, self.spec.blank, self.frame_seconds, labels, first, top, centres, self._token_centres.size,
            self._ends)
        self._best.size = self._scores.size = first + count
        for start in self._ends[:ends].tolist():
            self._end_run(start)
        return last_token

    def _end_run(self, stop: int) -> None:
        label = int(self._best.array[self._run_first])
        if label != self.spec.blank:
            self._runs.append((label, self._run_first, stop))
        self._run_first = stop

    def _token(self, label: int, first: int, stop: int, duration: float) -> Token:
        start, end = frame_span(first, stop, self.frame_seconds, duration)
        confidence = run_confidence(self._scores.array, first, stop)
        return Token(text=self._texts[label], id=label, start=start, end=end, confidence=confidence)

    def result(self, seconds: float, speech: Speech, undecided_from: float,
               held_through: Optional[float] = None) -> Result:
        """The utterance so far: ``seconds`` of audio (the lead not counted), ``speech`` what the gate heard (times
        with the lead), ``undecided_from`` where its segments may still change and ``held_through`` where its open
        segment holds for good (SpeechGate.undecided_from / held_through, plus the lead)."""
        lead, reach = self.lead, self.reach
        duration = seconds + 2 * lead
        frames = self.frames
        # tokens: the final ones, then the others computed again
        while len(self._stable) < len(self._runs) and self._runs[len(self._stable)][2] * self.frame_seconds <= duration:
            self._stable.append(self._token(*self._runs[len(self._stable)], duration))
        tail = [self._token(*run, duration) for run in self._runs[len(self._stable):]]
        label = int(self._best.array[self._run_first]) if frames else self.spec.blank
        if label != self.spec.blank:
            tail.append(self._token(label, self._run_first, frames, duration))
        # in speech or not: final for stable tokens that end (with their reach) before the undecided part
        kept_before = len(self._kept)
        limit = undecided_from - SETTLE_MARGIN
        while self._decided < len(self._stable):
            token = self._stable[self._decided]
            if token.end + reach < limit:
                self._kept += in_speech((token,), speech, reach)
            elif held_through is not None and token.start - reach <= held_through - SETTLE_MARGIN:
                # the open segment's start is final and its end lies past held_through: the token meets it, or
                # ends (with its reach) within SETTLE_MARGIN before it and is judged by the final segments
                self._kept += in_speech((token,), speech, reach)
            else:
                break
            self._decided += 1
        undecided = self._stable[self._decided:] + tail
        kept_tail = in_speech(undecided, speech, reach)
        # words: those of the final tokens but the last are final
        self._words.extend(self._kept[kept_before:])
        closed = self._words.words
        self._texts_of_words.extend(w.text for w in closed[len(self._texts_of_words):])
        words = self._words.with_tail(kept_tail)
        tokens = self._kept + kept_tail
        score = self._score(speech)
        oov = is_out_of_vocabulary(score, speech, self.spec.oov_threshold, self.spec.oov_min_speech)
        text = " ".join(self._texts_of_words + [w.text for w in words[len(closed):]])
        if lead:
            tokens = self._placed(self._placed_tokens, tokens, len(self._kept), seconds)
            words = self._placed(self._placed_words, words, len(closed), seconds)
        return Result(text=text, tokens=tuple(tokens), words=tuple(words),
                      duration=float(seconds if lead else duration), confidence=score, out_of_vocabulary=oov)

    def _placed(self, placed: list, items: list, final: int, seconds: float) -> list:
        """``items`` shifted by -lead into 0 .. seconds (Result.shifted); ``placed`` keeps those of the first
        ``final`` (which never change) that no clip touches: a longer ``seconds`` never clips them either."""
        while len(placed) < final:
            item = shifted_item(items[len(placed)], -self.lead, math.inf)
            if item.end > seconds:
                break
            placed.append(item)
        return placed + [shifted_item(item, -self.lead, seconds) for item in items[len(placed):]]

    def _score(self, speech: Speech) -> float:
        """speech_confidence over the frames so far; coverage from the speech frames not yet settled."""
        if self._log_probs is not None:
            return speech_confidence(self._log_probs.array, self.spec.blank, self.frame_seconds, speech,
                                     self.spec.oov_score, self.reach)
        flags = speech.frames[self._flags_seen:]
        # a frame this far before the next frame's centre is never covered by a frame still to come
        horizon = (self.frames + 0.5) * self.frame_seconds - self.reach - SETTLE_MARGIN
        self._pending.size, covered, uncovered, total = settle_coverage(
            flags, self._flags_seen, speech.frame_seconds, self._pending.room(len(flags)), self._pending.size,
            self._token_centres.array, self.reach, horizon, self.frames > 0, self._covered + self._settled_uncovered)
        self._flags_seen += flags.size
        if total == 0 or self.frames == 0:
            return 1.0
        self._covered += covered
        self._settled_uncovered += uncovered
        if not self._token_centres.size:
            return 0.0
        return float(self._covered / total)
