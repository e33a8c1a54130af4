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

import heapq
import math
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from tinyasr.decoding.confidence import Speech
from tinyasr.decoding.ctc import ctc_frames, ctc_result
from tinyasr.decoding.hotwords import START, HotwordState, HotwordTree
from tinyasr.decoding.lm import EOS, ARPALanguageModel
from tinyasr.decoding.results import Result, Token
from tinyasr.decoding.scores import frame_span
from tinyasr.decoding.specs import WORD_START, WORDPIECE_CONTINUATION, BeamSearch, CTCSpec
from tinyasr.kernels.ctc_align import viterbi_states

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


class BeamDecoder:
    """A BeamSearch's settings with its LM read and hotword tree built once, for many decodes."""

    def __init__(self, options: BeamSearch, spec: CTCSpec):
        self.options, self.spec = options, spec
        self.lm = ARPALanguageModel(options.lm) if options.lm else None
        self.hotwords = HotwordTree(options.hotwords) if options.hotwords else None
        self._words_complete = spec.vocabulary_type == "words"

    # -- what a prefix fixes -------------------------------------------------

    def _complete(self, context, word: str) -> Tuple[object, float]:
        """The LM context after ``word`` and its score alpha * log P + beta (0 without an LM)."""
        if self.lm is None:
            return context, 0.0
        logp, context = self.lm.score(context, word)
        return context, self.options.alpha * logp + self.options.beta

    def _extend(self, parent: _Prefix, token: int, piece: str) -> _Prefix:
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

    def _final_extra(self, prefix: _Prefix) -> float:
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

    # -- the search ------------------------------------------------------------

    def search(self, log_probs: np.ndarray, blank: int, pieces: Sequence[str]) -> List[Tuple[float, _Prefix]]:
        """Final (score, prefix) pairs, best first, of natural-log probabilities [frames, classes]."""
        options = self.options
        root = _Prefix(None, -1, self.lm.start() if self.lm else (), "", START, 0.0)
        beams: Dict[_Prefix, Tuple[float, float]] = {root: (0.0, NEG_INF)}  # prefix -> (blank, non-blank)
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
                        child = known[(id(prefix), token)] = self._extend(prefix, token, pieces[token])
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
        final = [(_logaddexp(*p) + self._final_extra(prefix), prefix) for prefix, p in beams.items()]
        return sorted(final, key=lambda pair: pair[0], reverse=True)

    def decode(self, scores: np.ndarray, *, frame_seconds: float, valid_frames: Optional[int] = None,
               duration: Optional[float] = None, speech: Optional[Speech] = None) -> Result:
        """Like tinyasr.decoding.ctc.ctc_greedy, by beam search: the best hypothesis with token and word times.

        A token's times are its frames on the best (Viterbi) alignment of the chosen tokens, its confidence
        the geometric mean of its probability over those frames, as in greedy decoding; ``speech`` as there.
        """
        spec = self.spec
        log_probs, texts, wordpiece, duration = ctc_frames(scores, spec, frame_seconds, valid_frames, duration)
        pieces = [token_piece(t, spec.vocabulary_type, wordpiece) for t in texts]
        tokens: List[Token] = []
        if len(log_probs):
            ids = self.search(log_probs, spec.blank, pieces)[0][1].tokens()
            for token, (first, stop) in zip(ids, ctc_align(log_probs, ids, spec.blank)):
                start, end = frame_span(first, stop, frame_seconds, duration)
                confidence = float(np.exp(log_probs[first:stop, token].mean()))
                tokens.append(Token(text=texts[token], id=token, start=start, end=end, confidence=confidence))
        return ctc_result(tokens, log_probs, spec, wordpiece, frame_seconds=frame_seconds, duration=duration,
                          speech=speech)


def ctc_align(log_probs: np.ndarray, ids: Sequence[int], blank: int) -> List[Tuple[int, int]]:
    """(first, stop) frames of each of ``ids`` on the most probable CTC alignment (Viterbi) of log-probs
    [frames, classes]; the ids must fit the frames (a repeated token needs a blank between)."""
    labels = np.full(2 * len(ids) + 1, blank, dtype=np.int64)
    labels[1::2] = ids
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
