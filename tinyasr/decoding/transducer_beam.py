"""Transducer beam search (RNN-T and TDT): k2 / sherpa-onnx's modified beam search, with LM shallow fusion
and hotwords, and the exact log-probability of a token sequence under the same search space.

Interface (what a Recognizer calls; the same inputs and output as tinyasr.decoding.transducer.greedy):
``TransducerBeamDecoder(model, options, pieces).decode(encoder_output, length)`` with ``model`` a
``Transducer`` (prediction network, joint, blank, TDT durations), ``encoder_output`` [D, T] for one
utterance (NeMo's layout, as greedy takes it) and ``length`` its valid frames, returns a ``Hypothesis``
(tokens, frames, TDT durations, last state) like greedy's, so one Result builder serves both.  ``options``
is a ``BeamSearch`` (beam, ARPA LM with alpha / beta, hotwords, beam_prune); ``pieces`` what each token
adds to the text (``tinyasr.decoding.beam.token_piece`` of the vocabulary), needed only with an LM or
hotwords.  Build the decoder once per settings: it reads the LM and builds the hotword tree.

Search space (one rule for both kinds): at a frame a hypothesis picks a class and, for TDT, a duration;
a blank moves ``max(duration, 1)`` frames (RNN-T: 1; a TDT blank of duration 0 counts as 1, as NeMo's
label-looping greedy does), a token stays on the frame while its duration is 0, unless it is the
frame's ``max_symbols_per_frame``-th symbol, which moves one frame (RNN-T tokens have duration 0).
``max_symbols_per_frame=1`` is modified beam search as k2 and sherpa-onnx run it (every symbol ends its
frame); with beam 1 the search is greedy decoding with ``max_symbols = max_symbols_per_frame``
(RNN-T: NeMo's GreedyRNNTInfer; TDT: its label-looping variant), which tests/test_transducer_beam.py checks.

The search: hypotheses wait in pools, one per (frame, symbols already emitted on that frame); the pools
are taken in frame order (TDT hypotheses jump ahead into later pools, as NeMo's BeamTDTInfer keeps each
hypothesis's next frame).  A pool keeps its best ``beam`` hypotheses (score = acoustic log-probability +
LM / hotword ``extra``; ``beam_prune`` below its best dropped); each tries its ``beam`` best
(class, duration) pairs, and the best ``beam`` of all those tries move on.  Equal token sequences meeting
in a pool merge by log-add, so a hypothesis's score is the probability of all its alignments the search
kept (k2's merge).  ``token_min_logp`` does not apply: every hypothesis tries its best ``beam`` classes.

Per frame the joint runs once for all of a pool's hypotheses (one matrix product over [hypotheses, J],
the encoder projection computed once per frame before the search), and the prediction network runs once
per new token sequence, batched over the round's new hypotheses; its output and LSTM states are cached by
sequence (a prefix-tree node), so hypotheses sharing a sequence share one step.

LM and hotwords: the CTC beam search's PrefixScorer (tinyasr.decoding.beam): ``extra`` = alpha * word LM
log-probability + beta per word + hotword boosts, fixed as words complete; the final score adds the last
word, </s> and the unfinished hotwords' take-back.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from tinyasr.decoding.beam import PrefixScorer
from tinyasr.decoding.specs import BeamSearch
from tinyasr.decoding.transducer import Hypothesis, State, Transducer, _encoder_frames
from tinyasr.errors import TinyASRError

DEFAULT_OPTIONS = BeamSearch(beam=4)
NEG_INF = -math.inf


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def _logaddexp(a: float, b: float) -> float:
    if a < b:
        a, b = b, a
    return a if b == NEG_INF else a + math.log1p(math.exp(b - a))


class _Layout:
    """A model's classes and durations as the search reads them: (class, duration) pairs per joint output."""

    def __init__(self, model: Transducer, max_symbols_per_frame: int):
        if not isinstance(max_symbols_per_frame, int) or max_symbols_per_frame < 1:
            raise TinyASRError(f"transducer beam search: max_symbols_per_frame must be a positive integer, got "
                               f"{max_symbols_per_frame!r}")
        self.classes, self.blank, self.max_symbols = model.token_classes, model.blank, max_symbols_per_frame
        self.tdt = bool(model.durations)
        self.durations = np.asarray(model.durations if self.tdt else (0,), np.int64)

    def log_probs(self, logits: np.ndarray) -> np.ndarray:
        """Joint outputs [..., K(+D)] -> log P(class, duration) [..., classes, durations] (TDT: the two
        heads normalised apart, as NeMo's TDT loss does; RNN-T: one duration of log-probability 0)."""
        tokens = _log_softmax(logits[..., :self.classes])
        if not self.tdt:
            return tokens[..., np.newaxis]
        return tokens[..., :, np.newaxis] + _log_softmax(logits[..., self.classes:])[..., np.newaxis, :]

    def destination(self, frame: int, symbols: int, token: bool, duration: int) -> Tuple[int, int]:
        """(frame, symbols emitted on it) after a token (else a blank) with ``duration`` on (frame, symbols)."""
        if token and duration == 0 and symbols + 1 < self.max_symbols:
            return frame, symbols + 1
        return frame + max(duration, 1), 0


@dataclass
class _Path:
    """A hypothesis in a pool: its sequence (a PrefixScorer node), the log-probability of its alignments
    merged so far, and the frames / durations of the best of them (with that one's log-probability)."""

    prefix: object
    log_prob: float
    best: float
    frames: Tuple[int, ...]
    durations: Tuple[int, ...]


class TransducerBeamDecoder:
    """Beam search over one model with one BeamSearch's settings (see the module docstring)."""

    def __init__(self, model: Transducer, options: BeamSearch = DEFAULT_OPTIONS,
                 pieces: Optional[Sequence[str]] = None, words_complete: bool = False,
                 max_symbols_per_frame: int = 1):
        if (options.lm or options.hotwords) and pieces is None:
            raise TinyASRError("transducer beam search: an LM or hotwords need the vocabulary's pieces (the text "
                               "each token adds)")
        needed = model.token_classes - (model.blank == model.token_classes - 1)  # a last blank needs no piece
        if pieces is not None and len(pieces) < needed:
            raise TinyASRError(f"transducer beam search: {len(pieces)} pieces for {needed} tokens")
        self.model, self.options = model, options
        self.pieces = pieces
        self.layout = _Layout(model, max_symbols_per_frame)
        self.scorer = PrefixScorer(options, words_complete)

    def decode(self, encoder_output: np.ndarray, length: Optional[int] = None) -> Hypothesis:
        """The best hypothesis (by acoustic log-probability + LM / hotword score)."""
        return self.search(encoder_output, length)[0][1]

    def search(self, encoder_output: np.ndarray, length: Optional[int] = None) -> List[Tuple[float, Hypothesis]]:
        """Every surviving hypothesis with its final score, best first."""
        return _Search(self).run(self.model.joint.project_encoder(_encoder_frames(encoder_output, length)))


class _Search:
    """One utterance's search state: the pools, the prefix tree's children and the prediction cache."""

    def __init__(self, decoder: TransducerBeamDecoder):
        self.decoder, self.model, self.layout = decoder, decoder.model, decoder.layout
        self.beam, self.prune = decoder.options.beam, decoder.options.beam_prune
        self.children: Dict[Tuple[object, int], object] = {}  # (parent node, token) -> node: one per sequence
        self.predicted: Dict[object, Tuple[State, np.ndarray]] = {}  # node -> (states, joint projection)

    def _child(self, prefix, token: int):
        child = self.children.get((prefix, token))
        if child is None:
            piece = self.decoder.pieces[token] if self.decoder.pieces is not None else ""
            child = self.children[(prefix, token)] = self.decoder.scorer.extend(prefix, token, piece)
        return child

    def _predict(self, parents: Sequence[object], tokens: Sequence[int], children: Sequence[object]) -> None:
        """One batched prediction step for the children whose sequence has not been stepped yet."""
        todo = [(p, t, c) for p, t, c in zip(parents, tokens, children) if c not in self.predicted]
        todo = list({id(c): (p, t, c) for p, t, c in todo}.values())
        if not todo:
            return
        states = [self.predicted[p][0] for p, _, _ in todo]
        stacked = tuple((np.concatenate([s[i][0] for s in states]), np.concatenate([s[i][1] for s in states]))
                        for i in range(len(states[0])))
        output, new = self.model.prediction.step(np.array([t for _, t, _ in todo], np.int64), stacked)
        projected = self.model.joint.project_prediction(output)
        for row, (_, _, child) in enumerate(todo):
            self.predicted[child] = (tuple((h[row:row + 1], c[row:row + 1]) for h, c in new), projected[row])

    def run(self, encoder_projected: np.ndarray) -> List[Tuple[float, Hypothesis]]:
        layout, model = self.layout, self.model
        self.frames = encoder_projected.shape[0]
        root = self.decoder.scorer.root()
        start = model.start()
        self.predicted[root] = (start.state, start.projected)
        pools: Dict[Tuple[int, int], Dict[object, _Path]] = {(0, 0): {root: _Path(root, 0.0, 0.0, (), ())}}
        finished: Dict[object, _Path] = {}
        for frame in range(self.frames):
            for symbols in range(layout.max_symbols):
                pool = pools.pop((frame, symbols), None)
                if pool:
                    self._expand(frame, symbols, self._kept(pool), encoder_projected[frame], pools, finished)
        for pool in pools.values():  # never expanded: the empty hypothesis of an utterance with no frames
            for path in pool.values():
                _merge(finished, path)
        results = []
        for path in finished.values():
            node = path.prefix
            state, projected = self.predicted[node]
            hyp = Hypothesis(node.tokens(), list(path.frames), list(path.durations) if layout.tdt else [],
                             state, projected)
            results.append((path.log_prob + self.decoder.scorer.final_extra(node), hyp))
        results.sort(key=lambda pair: pair[0], reverse=True)
        return results

    def _kept(self, pool: Dict[object, _Path]) -> List[_Path]:
        ranked = heapq.nlargest(self.beam, pool.values(), key=lambda p: p.log_prob + p.prefix.extra)
        floor = ranked[0].log_prob + ranked[0].prefix.extra - self.prune
        return [p for p in ranked if p.log_prob + p.prefix.extra >= floor]

    def _expand(self, frame: int, symbols: int, paths: List[_Path], encoder_frame: np.ndarray,
                pools: Dict[Tuple[int, int], Dict[object, _Path]], finished: Dict[object, _Path]) -> None:
        """One round: the joint for all ``paths`` at once, the best ``beam`` tries, each into its next pool."""
        layout = self.layout
        projections = np.stack([self.predicted[p.prefix][1] for p in paths])
        log_probs = layout.log_probs(self.model.joint.logits(encoder_frame, projections))  # [n, classes, durations]
        steps = log_probs.reshape(len(paths), -1).astype(np.float64)
        scores = np.array([p.log_prob for p in paths])[:, np.newaxis] + steps
        if self.decoder.scorer.lm is None and self.decoder.scorer.hotwords is None:
            # extra stays 0: the best tries overall by acoustic score, k2's one top-k
            tries = min(self.beam, scores.size)
            flat = np.argpartition(-scores.ravel(), tries - 1)[:tries] if tries < scores.size else range(scores.size)
            chosen = [divmod(int(i), scores.shape[1]) for i in flat]
        else:  # a child's LM / hotword score counts: each path's best tries, ranked with their children's extra
            tries = min(self.beam, scores.shape[1])
            best = np.argpartition(-scores, tries - 1, axis=1)[:, :tries]
            ranked = []
            for row, (path, choices) in enumerate(zip(paths, best.tolist())):
                for choice in choices:
                    label = choice // len(layout.durations)
                    node = path.prefix if label == layout.blank else self._child(path.prefix, label)
                    ranked.append((scores[row, choice] + node.extra, row, choice))
            chosen = [(row, choice) for _, row, choice in heapq.nlargest(self.beam, ranked)]
        moves = []
        for row, choice in chosen:
            label, d = divmod(choice, len(layout.durations))
            path = paths[row]
            node = path.prefix if label == layout.blank else self._child(path.prefix, label)
            moves.append((path, node, label, int(layout.durations[d]), float(scores[row, choice]),
                          float(steps[row, choice])))
        emitted = [m for m in moves if m[2] != layout.blank]
        self._predict([m[0].prefix for m in emitted], [m[2] for m in emitted], [m[1] for m in emitted])
        for path, node, label, duration, score, step in moves:
            if label == layout.blank:
                moved = _Path(node, score, path.best + step, path.frames, path.durations)
            else:
                moved = _Path(node, score, path.best + step, path.frames + (frame,), path.durations + (duration,))
            where = layout.destination(frame, symbols, label != layout.blank, duration)
            _merge(finished if where[0] >= self.frames else pools.setdefault(where, {}), moved)


def _merge(pool: Dict[object, _Path], path: _Path) -> None:
    """Add ``path`` to a pool, log-adding it to a path of the same sequence (keeping the better one's frames)."""
    known = pool.get(path.prefix)
    if known is None:
        pool[path.prefix] = path
        return
    total = _logaddexp(known.log_prob, path.log_prob)
    if path.best > known.best:
        known.best, known.frames, known.durations = path.best, path.frames, path.durations
    known.log_prob = total


def beam_search(model: Transducer, encoder_output: np.ndarray, length: Optional[int] = None,
                options: BeamSearch = DEFAULT_OPTIONS, pieces: Optional[Sequence[str]] = None,
                max_symbols_per_frame: int = 1) -> Hypothesis:
    """One-off beam search (reads the LM each call; keep a TransducerBeamDecoder to decode many outputs)."""
    return TransducerBeamDecoder(model, options, pieces, max_symbols_per_frame=max_symbols_per_frame).decode(
        encoder_output, length)


def sequence_log_prob(model: Transducer, encoder_output: np.ndarray, tokens: Sequence[int],
                      length: Optional[int] = None, max_symbols_per_frame: int = 1) -> float:
    """log P(tokens | audio) summed over every alignment of the search space above (the forward algorithm
    over frames x symbols-on-frame x tokens emitted): one score for any decoder's output, so greedy and
    beam search results compare on one scale (-inf when the sequence does not fit the frames)."""
    layout = _Layout(model, max_symbols_per_frame)
    frames = model.joint.project_encoder(_encoder_frames(encoder_output, length))
    tokens = [int(t) for t in tokens]
    if any(not 0 <= t < layout.classes or t == layout.blank for t in tokens):
        raise TinyASRError(f"sequence_log_prob: token ids must be non-blank classes below {layout.classes}")
    hyp = model.start()
    projections = [hyp.projected]
    for token in tokens:
        hyp = model.emit(hyp, token, 0)
        projections.append(hyp.projected)
    lattice = layout.log_probs(model.joint.logits(frames[:, np.newaxis], np.stack(projections)[np.newaxis]))
    count, steps = frames.shape[0], len(tokens)  # lattice [T, U + 1, classes, durations]
    moves = [max(int(d), 1) for d in layout.durations]
    alpha = np.full((count + max(moves) + 1, layout.max_symbols, steps + 1), -np.inf)
    alpha[0, 0, 0] = 0.0
    next_tokens = np.asarray(tokens, np.int64)
    u = np.arange(steps)
    for t in range(count):
        for r in range(layout.max_symbols):
            a = alpha[t, r]
            if np.all(a == -np.inf):
                continue
            for i, duration in enumerate(layout.durations.tolist()):
                blank = a + lattice[t, :, layout.blank, i]
                alpha[t + moves[i], 0] = np.logaddexp(alpha[t + moves[i], 0], blank)
                if steps:
                    emit = a[:-1] + lattice[t, u, next_tokens, i]
                    where = layout.destination(t, r, True, duration)
                    target = alpha[where[0], where[1], 1:]
                    alpha[where[0], where[1], 1:] = np.logaddexp(target, emit)
    return float(np.logaddexp.reduce(alpha[count:, 0, steps]))
