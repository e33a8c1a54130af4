"""CTC greedy decoding to text, tokens and words with times (chars, subwords, words).

Pure numpy: greedy decoding is one argmax and a few vectorised comparisons per
utterance, far below the cost of the network, so Numba would buy nothing here.
"""

from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import numpy as np

from tinyasr.decoding.confidence import COVER_SECONDS, Speech, in_speech, is_out_of_vocabulary, speech_confidence
from tinyasr.decoding.results import Result, Token, Word
from tinyasr.decoding.scores import (
    frame_spans,
    frames_by_classes,
    label_runs,
    to_log_probs,
)
from tinyasr.decoding.specs import (
    VOCABULARY_TYPES,
    WORD_START,
    WORDPIECE_CONTINUATION,
    CTCSpec,
)
from tinyasr.errors import InputError
from tinyasr.kernels.greedy import run_confidences


def id_to_text(vocabulary: Sequence[str], blank: int, classes: int, output: str):
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


def is_wordpiece(texts: Sequence[str]) -> bool:
    """NeMo's WordPiece vocabularies mark continuations with "##" and never use "▁"."""
    return any(t.startswith(WORDPIECE_CONTINUATION) for t in texts) and not any(WORD_START in t for t in texts)


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
    return tuple(GrowingWords(vocabulary_type, wordpiece).with_tail(tokens))


class GrowingWords:
    """tokens_to_words of a token sequence that only grows, kept in time linear in its length.

    A stream's partial result groups its tokens into words after every chunk; grouping them all again each time
    is quadratic in the utterance, and a vocabulary without word boundaries (Chinese characters, or a model that
    emits no spaces) makes the whole utterance one word that grows.  ``words`` holds the words no later token can
    extend; the last word so far is kept as a Word and extended token by token.
    """

    def __init__(self, vocabulary_type: str, wordpiece: bool = False):
        if vocabulary_type not in VOCABULARY_TYPES:
            raise InputError(f"vocabulary_type {vocabulary_type!r}; expected one of {', '.join(VOCABULARY_TYPES)}")
        self.vocabulary_type, self.wordpiece = vocabulary_type, wordpiece
        self.words: List[Word] = []  # closed
        self._last: Optional[Word] = None  # the word a later token may still extend

    def extend(self, tokens: Sequence[Token]) -> None:
        """Append tokens for good."""
        for token in tokens:
            self._last = self._add(self._last, token, self.words)

    def with_tail(self, tokens: Sequence[Token]) -> List[Word]:
        """The words of the tokens so far followed by ``tokens`` (which are not kept)."""
        closed: List[Word] = []
        last = self._last
        for token in tokens:
            last = self._add(last, token, closed)
        return self.words + closed + ([] if last is None else [last])

    def _add(self, last: Optional[Word], token: Token, closed: List[Word]) -> Optional[Word]:
        """The last word after ``token``; a word it ends goes to ``closed``."""
        if self.vocabulary_type == "chars":
            boundary, text = not token.text.strip(), token.text
        else:
            boundary = _starts_word(token.text, self.vocabulary_type, self.wordpiece)
            text = _word_text(token.text, self.wordpiece)
        if boundary and last is not None:
            closed.append(last)
            last = None
        if not text.strip():
            return last
        if last is None:
            return Word(text=text, start=token.start, end=token.end, confidence=token.confidence)
        return Word(text=last.text + text, start=last.start, end=token.end,
                    confidence=min(last.confidence, token.confidence))


def ctc_frames(scores: np.ndarray, spec: CTCSpec, frame_seconds: float, valid_frames: Optional[int],
               duration: Optional[float]):
    """What a CTC decoder starts from: the valid frames' log-probs, each class's text, whether the vocabulary
    is WordPiece, and the duration (default: the frames' span)."""
    log_probs = to_log_probs(frames_by_classes(scores, spec.output), spec.logits)
    if valid_frames is not None:
        log_probs = log_probs[: max(0, valid_frames)]
    texts = id_to_text(spec.vocabulary, spec.blank, log_probs.shape[1], spec.output)
    if duration is None:
        duration = len(log_probs) * frame_seconds
    return log_probs, texts, is_wordpiece(texts), duration


def ctc_greedy(
    scores: np.ndarray,
    spec: CTCSpec,
    *,
    frame_seconds: float,
    valid_frames: Optional[int] = None,
    duration: Optional[float] = None,
    speech: Optional[Speech] = None,
) -> Result:
    """Best-path CTC decoding: argmax per frame, collapse repeats, drop blanks.

    ``scores``: [1, frames, classes] or [frames, classes] in ``spec.logits`` units.
    Only the first ``valid_frames`` frames are decoded (the rest come from
    feature padding).  ``duration`` defaults to the decoded frames' span.
    ``speech``: what the voice activity detector heard; tokens outside its
    segments are dropped and the Result's confidence and out-of-vocabulary
    flag are computed from it (tinyasr.decoding.confidence).
    """
    log_probs, texts, wordpiece, duration = ctc_frames(scores, spec, frame_seconds, valid_frames, duration)
    best = log_probs.argmax(axis=1)
    tokens = []
    if len(best):  # every run's numbers at once, not a numpy mean per token (60 s, ~230 tokens: 6.2 -> 3.0 ms)
        firsts, stops = label_runs(best)
        confidences = run_confidences(log_probs[np.arange(len(best)), best], firsts, stops)
        kept = best[firsts] != spec.blank
        starts, ends = frame_spans(firsts, stops, frame_seconds, duration)
        for token_id, start, end, confidence in zip(best[firsts][kept].tolist(), starts[kept].tolist(),
                                                    ends[kept].tolist(), confidences[kept].tolist()):
            tokens.append(Token(text=texts[token_id], id=token_id, start=start, end=end, confidence=confidence))
    return ctc_result(tokens, log_probs, spec, wordpiece, frame_seconds=frame_seconds, duration=duration,
                      speech=speech)


def ctc_result(tokens, log_probs: np.ndarray, spec: CTCSpec, wordpiece: bool, *, frame_seconds: float,
               duration: float, speech: Optional[Speech]) -> Result:
    """The Result of a CTC decoder's tokens (greedy or beam search, tinyasr.decoding.beam): with ``speech``,
    tokens outside it are dropped and the confidence and out-of-vocabulary flag come from it."""
    score, out_of_vocabulary = 1.0, False
    if speech is not None:
        reach = spec.cover_seconds or COVER_SECONDS  # CTC spikes may lead or trail the speech they stand for
        tokens = in_speech(tokens, speech, reach)
        score = speech_confidence(log_probs, spec.blank, frame_seconds, speech, spec.oov_score, reach)
        out_of_vocabulary = is_out_of_vocabulary(score, speech, spec.oov_threshold, spec.oov_min_speech)
    words = tokens_to_words(tokens, spec.vocabulary_type, wordpiece)
    return Result(text=" ".join(w.text for w in words), tokens=tuple(tokens), words=words, duration=float(duration),
                  confidence=score, out_of_vocabulary=out_of_vocabulary)
