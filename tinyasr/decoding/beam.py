"""CTC prefix beam search with a word n-gram LM and hotwords, to text, tokens and words with times.

Each hypothesis is a node of a prefix tree (one node per distinct token sequence) carrying the two CTC
prefix probabilities (ending in blank / in its last token) and what the sequence fixes once and for all:
its LM context, the word being spelled, its hotword state and ``extra`` = alpha * LM score + beta * words
+ hotword bonus, added when a word completes (a word-start piece, a space character, or the end).  So a
kept prefix's final score is exactly log P(text | audio) + alpha log P_LM(words, </s>) + beta * words +
hotword boosts: with a beam wide enough to keep every prefix the search returns the best text by that
score (tests/test_beam.py checks it against enumerating every alignment).

Plain Python over numpy rows: per frame only tokens above ``token_min_logp`` are tried (CTC outputs are
peaky: one to three tokens a frame), so the cost is beam x a few dict updates per frame — measured in
benchmarks/bench_beam.py against the network's own time (results/beam.md); a Numba kernel would have to
call back into the LM and the hotword tree for every new word.
"""

from __future__ import annotations

import copy
import dataclasses
import heapq
import itertools
import math
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from tinyasr.decoding.confidence import Speech
from tinyasr.decoding.ctc import ctc_frames, ctc_result
from tinyasr.decoding.hotwords import START, HotwordState, HotwordTree
from tinyasr.decoding.lm import EOS, load_language_model
from tinyasr.decoding.results import Result, Token
from tinyasr.decoding.scores import frame_span
from tinyasr.decoding.specs import WORD_START, WORDPIECE_CONTINUATION, BeamSearch, CTCSpec
from tinyasr.kernels.ctc_align import log_likelihood, viterbi_states
from tinyasr.kernels.greedy import run_confidence

NEG_INF = -math.inf


def _logaddexp(a: float, b: float) -> float:
    if a < b:
        a, b = b, a
    return a if b == NEG_INF else a + math.log1p(math.exp(b - a))


def token_piece(text: str, vocabulary_type: str, wordpiece: bool) -> str:
    """What a token adds to the transcript, a space marking a word boundary: chars as they are, "▁x" ->
    " x", WordPiece "x" -> " x" and "##x" -> "x", a word -> " word"."""
    if vocabulary_type == "chars":
        return " " if not text.strip() else text
    if vocabulary_type == "words":
        return " " + text
    if wordpiece:
        return text[len(WORDPIECE_CONTINUATION):] if text.startswith(WORDPIECE_CONTINUATION) else " " + text
    return text.replace(WORD_START, " ")


class _Prefix:
    """A node of the prefix tree: a token sequence and what it fixes (see the module docstring)."""

    __slots__ = ("parent", "token", "context", "word", "hot", "extra")

    def __init__(self, parent, token: int, context, word: str, hot: HotwordState, extra: float):
        self.parent, self.token, self.context, self.word, self.hot = parent, token, context, word, hot
        self.extra = extra

    def tokens(self) -> List[int]:
        ids, prefix = [], self
        while prefix.token >= 0:
            ids.append(prefix.token)
            prefix = prefix.parent
        return ids[::-1]


class PrefixScorer:
    """What a token sequence fixes for the LM and hotwords (see the module docstring), as a prefix tree grows:
    shared by CTC prefix beam search and transducer beam search (tinyasr.decoding.transducer_beam).

    :meth:`root` is the empty sequence, :meth:`extend` a child (``piece``: the token's text, token_piece's
    form), ``prefix.extra`` what the sequence's completed words scored, :meth:`final_extra` its total once
    the text ends.  ``words_complete``: every token is a whole word (a words vocabulary)."""

    def __init__(self, options: BeamSearch, words_complete: bool):
        self.options, self._words_complete = options, words_complete
        self.lm = load_language_model(options.lm) if options.lm else None
        self.hotwords = HotwordTree(options.hotwords) if options.hotwords else None

    def root(self) -> _Prefix:
        return _Prefix(None, -1, self.lm.start() if self.lm else (), "", START, 0.0)

    def _complete(self, context, word: str) -> Tuple[object, float]:
        """The LM context after ``word`` and its score alpha * log P + beta (0 without an LM)."""
        if self.lm is None:
            return context, 0.0
        logp, context = self.lm.score(context, word)
        return context, self.options.alpha * logp + self.options.beta

    def extend(self, parent: _Prefix, token: int, piece: str) -> _Prefix:
        context, word, extra = parent.context, parent.word, parent.extra
        for char in piece:
            if char.isspace():
                if word:
                    context, score = self._complete(context, word)
                    extra += score
                word = ""
            else:
                word += char
        if self._words_complete and word:
            context, score = self._complete(context, word)
            extra, word = extra + score, ""
        hot = parent.hot
        if self.hotwords is not None:
            hot, bonus = self.hotwords.advance(hot, piece)
            extra += bonus
        return _Prefix(parent, token, context, word, hot, extra)

    def final_extra(self, prefix: _Prefix) -> float:
        """``extra`` once the text ends: the last word completed, </s> scored, partial hotwords taken back."""
        extra, context = prefix.extra, prefix.context
        if prefix.word:
            context, score = self._complete(context, prefix.word)
            extra += score
        if self.lm is not None:
            extra += self.options.alpha * self.lm.score(context, EOS)[0]
        if self.hotwords is not None:
            extra += self.hotwords.finish(prefix.hot)
        return extra


class BeamDecoder:
    """A BeamSearch's settings with its LM read and hotword tree built once, for many decodes."""

    def __init__(self, options: BeamSearch, spec: CTCSpec):
        self.options, self.spec = options, spec
        self.scorer = PrefixScorer(options, spec.vocabulary_type == "words")

    def with_hotwords(self, hotwords: Sequence[Tuple[str, float]]) -> "BeamDecoder":
        """This decoder with ``hotwords`` added to its own (a server session's): the LM is shared, not read again."""
        if not hotwords:
            return self
        decoder = copy.copy(self)
        decoder.options = dataclasses.replace(self.options, hotwords=self.options.hotwords + tuple(hotwords))
        decoder.scorer = copy.copy(self.scorer)
        decoder.scorer.options = decoder.options
        decoder.scorer.hotwords = HotwordTree(decoder.options.hotwords)
        return decoder

    # -- the search ------------------------------------------------------------

    def start(self, blank: int, pieces: Sequence[str]) -> "PrefixSearch":
        """A search to feed frames as they arrive (the online stream's partial and final results)."""
        return PrefixSearch(self, blank, pieces)

    def search(self, log_probs: np.ndarray, blank: int, pieces: Sequence[str]) -> List[Tuple[float, _Prefix]]:
        """Final (score, prefix) pairs, best first, of natural-log probabilities [frames, classes]."""
        search = self.start(blank, pieces)
        search.advance(log_probs)
        return search.finish(log_probs)

    def decode(self, scores: np.ndarray, *, frame_seconds: float, valid_frames: Optional[int] = None,
               duration: Optional[float] = None, speech: Optional[Speech] = None) -> Result:
        """Like tinyasr.decoding.ctc.ctc_greedy, by beam search: the best hypothesis with token and word times.

        A token's times are its frames on the best (Viterbi) alignment of the chosen tokens, its confidence
        the geometric mean of its probability over those frames, as in greedy decoding; ``speech`` as there.
        """
        spec = self.spec
        log_probs, texts, wordpiece, duration = ctc_frames(scores, spec, frame_seconds, valid_frames, duration)
        pieces = [token_piece(t, spec.vocabulary_type, wordpiece) for t in texts]
        ids = self.search(log_probs, spec.blank, pieces)[0][1].tokens() if len(log_probs) else []
        return self.result(ids, log_probs, texts, wordpiece, frame_seconds=frame_seconds, duration=duration,
                           speech=speech)

    def result(self, ids: Sequence[int], log_probs: np.ndarray, texts: Sequence[str], wordpiece: bool, *,
               frame_seconds: float, duration: float, speech: Optional[Speech]) -> Result:
        """The Result of the token ``ids`` a search chose: times and confidences from their Viterbi alignment."""
        tokens: List[Token] = []
        for token, (first, stop) in zip(ids, ctc_align(log_probs, ids, self.spec.blank) if ids else ()):
            start, end = frame_span(first, stop, frame_seconds, duration)
            confidence = run_confidence(log_probs[:, token], first, stop)
            tokens.append(Token(text=texts[token], id=token, start=start, end=end, confidence=confidence))
        return ctc_result(tokens, log_probs, self.spec, wordpiece, frame_seconds=frame_seconds, duration=duration,
                          speech=speech)


class PrefixSearch:
    """One CTC prefix beam search in progress: :meth:`advance` takes frames as they arrive, :meth:`best` is
    the best prefix so far (an online stream's partial result), :meth:`finish` the final hypotheses.

    The scores are the prefix search's: each kept prefix sums its alignments *that stayed in the beam*, a
    lower bound of its exact score (every alignment, plus the LM and hotword terms), since a prefix pruned
    at one frame, or a token not tried there, loses alignments (on flat outputs of an untrained network,
    beam 4 kept 40 nats less than the exact score).  A narrow beam can so lose the greedy (best-path)
    hypothesis, or rank it below a worse one; so when the search's best is not the greedy hypothesis,
    :meth:`finish` scores both exactly (the CTC forward algorithm, a Numba kernel) and puts the higher first:
    the result's exact score is never below greedy decoding's, whatever the beam.  Scoring every final
    hypothesis exactly instead changed no digit string (benchmarks/bench_beam.py) and cost 15x the search on a
    one-minute character-model output (2,700 tokens: 16 M forward cells each).
    """

    def __init__(self, decoder: BeamDecoder, blank: int, pieces: Sequence[str]):
        self.decoder, self.blank, self.pieces = decoder, blank, pieces
        self.scorer = decoder.scorer
        self.beams: Dict[_Prefix, Tuple[float, float]] = {self.scorer.root(): (0.0, NEG_INF)}  # (blank, token)
        self.frames = 0

    def advance(self, log_probs: np.ndarray) -> None:
        """Go on over natural-log probabilities [frames, classes] (the frames after those already seen)."""
        options, blank, pieces, beams = self.decoder.options, self.blank, self.pieces, self.beams
        # per frame, the tokens to try: the best `beam` non-blank ones above token_min_logp (numpy, once)
        order = np.argsort(-log_probs, axis=1)[:, :options.beam + 1]
        allowed = (np.take_along_axis(log_probs, order, axis=1) >= options.token_min_logp) & (order != blank)
        candidates = [[c for c, ok in zip(o, a) if ok][:options.beam] for o, a in zip(order.tolist(), allowed.tolist())]
        for row, tried in zip(log_probs.tolist(), candidates):  # Python floats: far faster than numpy scalars here
            grown: Dict[_Prefix, List[float]] = {}
            # the kept prefixes by (parent, token), to find a child already kept; pruned ones are freed
            known = {(id(prefix.parent), prefix.token): prefix for prefix in beams}
            for prefix, (p_blank, p_token) in beams.items():
                total = _logaddexp(p_blank, p_token)
                entry = grown.setdefault(prefix, [NEG_INF, NEG_INF])
                entry[0] = _logaddexp(entry[0], total + row[blank])
                last = prefix.token
                if last >= 0:  # the last token's run goes on (no new token)
                    entry[1] = _logaddexp(entry[1], p_token + row[last])
                for token in tried:
                    child = known.get((id(prefix), token))
                    if child is None:
                        child = known[(id(prefix), token)] = self.scorer.extend(prefix, token, pieces[token])
                    step = (p_blank if token == last else total) + row[token]
                    if step == NEG_INF:
                        continue
                    child_entry = grown.setdefault(child, [NEG_INF, NEG_INF])
                    child_entry[1] = _logaddexp(child_entry[1], step)
            if not tried:  # no new prefix: the same ones stay (pruning waits for a frame that adds some)
                beams = {prefix: (p[0], p[1]) for prefix, p in grown.items()}
                continue
            ranked = heapq.nlargest(options.beam, ((_logaddexp(p[0], p[1]) + prefix.extra, id(prefix), prefix, p)
                                                   for prefix, p in grown.items()))
            floor = ranked[0][0] - options.beam_prune
            beams = {prefix: (p[0], p[1]) for score, _, prefix, p in ranked if score >= floor}
        self.beams = beams
        self.frames += len(log_probs)

    def best(self) -> _Prefix:
        """The prefix the search ranks first now (its completed words scored, the word being spelled not yet)."""
        return max(self.beams.items(), key=lambda item: _logaddexp(*item[1]) + item[0].extra)[0]

    def finish(self, log_probs: np.ndarray) -> List[Tuple[float, _Prefix]]:
        """The final (score, prefix) pairs of all the frames seen (``log_probs``, [frames, classes]), best first:
        the kept prefixes and, when it is not the best kept one, the greedy hypothesis; those two with their
        exact scores (see the class docstring)."""
        if len(log_probs) != self.frames:
            raise ValueError(f"finish() needs the {self.frames} frames searched, got {len(log_probs)}")
        final = sorted(((_logaddexp(*p) + self.scorer.final_extra(prefix), prefix) for prefix, p in self.beams.items()),
                       key=lambda pair: pair[0], reverse=True)
        greedy_ids = [t for t, _ in itertools.groupby(log_probs.argmax(axis=1).tolist()) if t != self.blank]
        if final[0][1].tokens() == greedy_ids:
            return final
        greedy = self.scorer.root()
        for token in greedy_ids:
            greedy = self.scorer.extend(greedy, token, self.pieces[token])
        contenders = sorted(((ctc_log_likelihood(log_probs, prefix.tokens(), self.blank)
                              + self.scorer.final_extra(prefix), prefix) for prefix in (final[0][1], greedy)),
                            key=lambda pair: pair[0], reverse=True)
        return contenders + [pair for pair in final[1:] if pair[1].tokens() != greedy_ids]


def _labels(ids: Sequence[int], blank: int) -> np.ndarray:
    """The CTC states of a token sequence: blanks between and around the tokens."""
    labels = np.full(2 * len(ids) + 1, blank, dtype=np.int64)
    labels[1::2] = ids
    return labels


def ctc_log_likelihood(log_probs: np.ndarray, ids: Sequence[int], blank: int) -> float:
    """log P(ids | log_probs [frames, classes]) over every CTC alignment (-inf when the ids do not fit)."""
    return float(log_likelihood(np.ascontiguousarray(log_probs, dtype=np.float64), _labels(ids, blank)))


def ctc_align(log_probs: np.ndarray, ids: Sequence[int], blank: int) -> List[Tuple[int, int]]:
    """(first, stop) frames of each of ``ids`` on the most probable CTC alignment (Viterbi) of log-probs
    [frames, classes]; the ids must fit the frames (a repeated token needs a blank between)."""
    labels = _labels(ids, blank)
    path = viterbi_states(np.ascontiguousarray(log_probs, dtype=np.float64), labels)
    token_frames = np.flatnonzero(path % 2 == 1)
    tokens = path[token_frames] // 2
    starts = np.searchsorted(tokens, np.arange(len(ids)), side="left")
    stops = np.searchsorted(tokens, np.arange(len(ids)), side="right")
    return [(int(token_frames[a]), int(token_frames[b - 1]) + 1) for a, b in zip(starts, stops)]


def ctc_beam_search(scores: np.ndarray, spec: CTCSpec, options: BeamSearch = BeamSearch(), *,
                    frame_seconds: float, valid_frames: Optional[int] = None,
                    duration: Optional[float] = None, speech: Optional[Speech] = None) -> Result:
    """One-off beam search (reads the LM each call; keep a BeamDecoder to decode many outputs)."""
    return BeamDecoder(options, spec).decode(scores, frame_seconds=frame_seconds, valid_frames=valid_frames,
                                             duration=duration, speech=speech)
