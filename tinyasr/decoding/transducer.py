"""Transducer decoding (RNN-T and TDT greedy) over an encoder output, token-identical to NeMo's greedy decoders.

A transducer is an encoder (a graph), a prediction network (token embedding, LSTM layers) and a joint
``out(act(enc(e_t) + pred(p_u)))``.  Decoding calls the prediction network once per emitted token and the
joint once per (frame, token) try, so both run here one vector at a time, not as a graph:

* the joint's encoder projection ``enc(e_t)`` runs for every frame at once (one matrix product) before the
  search; its prediction projection ``pred(p_u)`` runs once per emitted token and is kept with the
  hypothesis, with the LSTM states (a blank reuses both: NeMo's ``blank_as_pad``, the blank is also the
  start symbol, whose embedding row is zero);
* the LSTM step is tinyasr's recurrent kernel (tinyasr/kernels/recurrent.py), torch's ``proj_size`` included;
  R runs sparse where the file stores it ``csr`` or 8 x 1 ``bsr`` (the converter's choice for pruned layers).

Greedy search runs frame after frame in one compiled call (tinyasr/kernels/transducer.py: the joint, the argmax
and the prediction step per token, the same recurrent kernels); this module keeps the hypothesis between calls.
Beam search (transducer_beam.py) batches its hypotheses through ``PredictionNetwork.step`` and ``Joint.logits``.

Greedy rules (NeMo ``GreedyRNNTInfer`` / ``GreedyTDTInfer``, the loops ../shared/models/nemo-random's
``nemo2core.ref_greedy`` restates): RNN-T tries a frame up to ``max_symbols`` times and leaves it at a blank;
TDT reads a token and a duration from one joint output (token logits first, then one logit per entry of
``durations``), moves ``duration`` frames, stays while the duration is 0 for up to ``max_symbols`` tries, and
after ``max_symbols`` tries moves one frame more (NeMo does this even when the last duration was > 0).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import numpy as np

from tinyasr.errors import GraphError
from tinyasr.format.encodings.sparse import SPARSE_TYPES
from tinyasr.kernels.recurrent import EMPTY_DENSE, add_product, lstm_direction, recurrent_operands
from tinyasr.kernels.transducer import JOINT_ACTIVATION_CODES, greedy_frames, pack_layers

JOINT_ACTIVATIONS = {"relu": lambda x: np.maximum(x, 0, out=x), "tanh": lambda x: np.tanh(x, out=x),
                     "sigmoid": lambda x: np.divide(1.0, 1.0 + np.exp(-x), out=x)}
_NO_PEEPHOLE = np.zeros(0, np.float32)
_ONE_FRAME = np.ones(1, np.int64)


def _float32(array, what: str, ndim: int) -> np.ndarray:
    array = np.ascontiguousarray(array, np.float32)
    if array.ndim != ndim:
        raise GraphError(f"transducer: {what} must have rank {ndim}, got shape {array.shape}")
    return array


@dataclass(frozen=True)
class LSTMLayer:
    """One prediction-network layer, ONNX gate order (i, o, f, c): w [4H, I], r [4H, P] (each an array, or a
    CSRMatrix / BSRMatrix as the file stores a pruned one: the step then runs it sparse), bias [4H] (input and
    recurrent biases summed), projection [P, H] (torch ``proj_size``) or None (P = H)."""

    w: np.ndarray
    r: np.ndarray
    bias: np.ndarray
    projection: Optional[np.ndarray] = None

    def __post_init__(self):
        hidden = self.w.shape[0] // 4
        width = self.projection.shape[0] if self.projection is not None else hidden
        if (self.w.ndim != 2 or self.w.shape[0] != 4 * hidden or self.r.shape != (4 * hidden, width)
                or self.bias.shape != (4 * hidden,)
                or (self.projection is not None and self.projection.shape != (width, hidden))):
            raise GraphError(f"transducer: an LSTM layer has W {self.w.shape}, R {self.r.shape}, B {self.bias.shape}"
                             f", projection {None if self.projection is None else self.projection.shape}: they "
                             "do not fit one another")
        object.__setattr__(self, "input_operands", recurrent_operands(self.w, 0) if isinstance(self.w, SPARSE_TYPES)
                           else None)  # a dense W runs as one BLAS product over the batch (w_t)
        object.__setattr__(self, "w_t", None if self.input_operands else np.ascontiguousarray(self.w.T))
        object.__setattr__(self, "recurrent", recurrent_operands(self.r, 0))  # (R^T or empty, sparse arrays)
        object.__setattr__(self, "projection_t", EMPTY_DENSE if self.projection is None
                           else np.ascontiguousarray(self.projection.T))

    @property
    def hidden(self) -> int:
        return self.w.shape[0] // 4

    @property
    def width(self) -> int:
        """The size of h (and of the layer's output)."""
        return self.r.shape[1]


State = Tuple[Tuple[np.ndarray, np.ndarray], ...]  # per layer (h [1, P], c [1, H])


class PredictionNetwork:
    """Token -> prediction vector: an embedding row through the LSTM layers, one step."""

    def __init__(self, embedding: np.ndarray, layers: Sequence[LSTMLayer]):
        self.embedding = _float32(embedding, "the embedding", 2)
        self.layers = tuple(layers)
        if not self.layers:
            raise GraphError("transducer: the prediction network has no LSTM layer")
        inputs = [self.embedding.shape[1]] + [layer.width for layer in self.layers[:-1]]
        for i, (layer, size) in enumerate(zip(self.layers, inputs)):
            if layer.w.shape[1] != size:
                raise GraphError(f"transducer: prediction LSTM layer {i} takes {layer.w.shape[1]} inputs, "
                                 f"its input has {size}")

    @property
    def width(self) -> int:
        return self.layers[-1].width

    def initial_state(self) -> State:
        return tuple((np.zeros((1, layer.width), np.float32), np.zeros((1, layer.hidden), np.float32))
                     for layer in self.layers)

    def step(self, tokens, state: State) -> Tuple[np.ndarray, State]:
        """One step of B hypotheses at once (beam search batches them): ``tokens`` [B], or one int (B = 1),
        ``state`` per layer (h [B, P], c [B, H]) -> (the last layer's output [B, P], or [P] for one int; the
        new states).  ``state`` is left as it was (hypotheses share it)."""
        x = self.embedding[tokens]  # [E] or [B, E]
        batch = 1 if x.ndim == 1 else x.shape[0]
        rows = _ONE_FRAME if batch == 1 else np.ones(batch, np.int64)  # every row takes one frame
        new_state = []
        for layer, (h, c) in zip(self.layers, state):
            if layer.input_operands is None:
                pre = (x @ layer.w_t + layer.bias).reshape(1, batch, -1)
            else:  # pruned W: one sparse product per row
                pre = np.empty((1, batch, 4 * layer.hidden), np.float32)
                for b, row in enumerate(x.reshape(batch, -1)):
                    pre[0, b] = layer.bias
                    add_product(pre[0, b], row, *layer.input_operands)
            h, c = h.copy(), c.copy()
            y = np.empty((1, batch, layer.width), np.float32)
            lstm_direction(pre, *layer.recurrent, _NO_PEEPHOLE, layer.projection_t, h, c, rows, False,
                           np.float32(0), y)
            new_state.append((h, c))
            x = y[0, 0] if x.ndim == 1 else y[0]
        return x, tuple(new_state)


@dataclass(frozen=True)
class Joint:
    """``out(act(enc(e) + pred(p)))``: weights stored as x @ W (enc [D, J], pred [P, J], out [J, K])."""

    enc_w: np.ndarray
    enc_b: np.ndarray
    pred_w: np.ndarray
    pred_b: np.ndarray
    out_w: np.ndarray
    out_b: np.ndarray
    activation: str = "relu"

    def __post_init__(self):
        hidden = self.enc_w.shape[1]
        if (self.enc_b.shape != (hidden,) or self.pred_w.shape[1] != hidden or self.pred_b.shape != (hidden,)
                or self.out_w.shape[0] != hidden or self.out_b.shape != (self.out_w.shape[1],)):
            raise GraphError(f"transducer: joint weights enc {self.enc_w.shape}, pred {self.pred_w.shape}, "
                             f"out {self.out_w.shape} (biases {self.enc_b.shape}, {self.pred_b.shape}, "
                             f"{self.out_b.shape}) do not fit one another")
        if self.activation not in JOINT_ACTIVATIONS:
            raise GraphError(f"transducer: joint activation {self.activation!r} is not one of "
                             f"{', '.join(JOINT_ACTIVATIONS)}")

    @property
    def outputs(self) -> int:
        return self.out_w.shape[1]

    def project_encoder(self, frames: np.ndarray) -> np.ndarray:
        """[T, D] -> [T, J]: the encoder half of the joint for every frame, once."""
        if frames.ndim != 2 or frames.shape[1] != self.enc_w.shape[0]:
            raise GraphError(f"transducer: encoder frames of shape {frames.shape} do not fit the joint's "
                             f"{self.enc_w.shape[0]} inputs")
        return frames.astype(np.float32, copy=False) @ self.enc_w + self.enc_b

    def project_prediction(self, prediction: np.ndarray) -> np.ndarray:
        return prediction @ self.pred_w + self.pred_b

    def logits(self, encoder_projected: np.ndarray, prediction_projected: np.ndarray) -> np.ndarray:
        hidden = encoder_projected + prediction_projected
        return JOINT_ACTIVATIONS[self.activation](hidden) @ self.out_w + self.out_b


@dataclass
class Hypothesis:
    """A decoding path: its tokens, their frames (and TDT durations), and the prediction network's output
    for its last token (states and joint projection), computed once when the token was emitted."""

    tokens: List[int]
    frames: List[int]
    durations: List[int]
    state: State
    projected: np.ndarray  # the joint's prediction projection of the last token


class Transducer:
    """The prediction network and joint of one model, with its blank (NeMo: the last token class)."""

    def __init__(self, prediction: PredictionNetwork, joint: Joint, blank: int, durations: Sequence[int] = ()):
        self.prediction, self.joint, self.blank = prediction, joint, int(blank)
        self.durations = tuple(int(d) for d in durations)
        if prediction.width != joint.pred_w.shape[0]:
            raise GraphError(f"transducer: the prediction network gives {prediction.width} values, the joint "
                             f"takes {joint.pred_w.shape[0]}")
        self.token_classes = joint.outputs - len(self.durations)
        if not 0 <= self.blank < self.token_classes or self.token_classes > prediction.embedding.shape[0]:
            raise GraphError(f"transducer: blank {self.blank} and {self.token_classes} token classes do not fit "
                             f"the embedding's {prediction.embedding.shape[0]} rows")
        self._packed_layers = pack_layers(prediction.layers)  # for the compiled greedy loop
        self._joint_operands = tuple(np.ascontiguousarray(a, np.float32) for a in (joint.pred_w, joint.pred_b,
                                                                                   joint.out_w, joint.out_b))

    def start(self) -> Hypothesis:
        """The empty hypothesis: the blank fed as the start symbol into zero states."""
        return self._after(Hypothesis([], [], [], self.prediction.initial_state(), np.empty(0)), self.blank)

    def _after(self, hyp: Hypothesis, token: int) -> Hypothesis:
        output, state = self.prediction.step(token, hyp.state)
        return Hypothesis(hyp.tokens, hyp.frames, hyp.durations, state, self.joint.project_prediction(output))

    def emit(self, hyp: Hypothesis, token: int, frame: int, duration: Optional[int] = None) -> Hypothesis:
        hyp.tokens.append(token)
        hyp.frames.append(frame)
        if duration is not None:
            hyp.durations.append(duration)
        return self._after(hyp, token)


def _encoder_frames(encoder_output: np.ndarray, length: Optional[int]) -> np.ndarray:
    """[D, T] (one utterance, as NeMo's encoders give it) -> its first ``length`` frames as [T, D]."""
    if encoder_output.ndim != 2:
        raise GraphError(f"transducer: the encoder output of one utterance must be [features, frames], got "
                         f"shape {encoder_output.shape}")
    frames = encoder_output.shape[1] if length is None else min(int(length), encoder_output.shape[1])
    return np.ascontiguousarray(encoder_output[:, :frames].T)


class GreedySearch:
    """NeMo's greedy search (RNN-T, or TDT with ``tdt``, default: when the model has durations) over encoder
    frames that may arrive in pieces (an online stream): the hypothesis and the next frame to try carry over
    from one ``advance`` to the next, so frames given at once or chunk by chunk give the same tokens.
    ``confidences``: each emitted token's probability among the token classes where it was chosen."""

    def __init__(self, model: Transducer, max_symbols: int = 10, tdt: Optional[bool] = None):
        self.model, self.max_symbols = model, int(max_symbols)
        self.tdt = bool(model.durations) if tdt is None else tdt
        if self.tdt and not model.durations:
            raise GraphError("transducer: TDT decoding needs the model's durations")
        self.hyp = model.start()
        self.confidences: List[float] = []
        self.frame = 0  # the next frame to try (TDT may jump past the frames seen so far)
        self._first = 0  # the frame index of _pending[0]: frames before it are done with
        self._pending = np.zeros((0, model.joint.enc_w.shape[1]), np.float32)
        self._durations = np.array(model.durations if self.tdt else (), np.int64)  # none: RNN-T rules

    @property
    def frames_seen(self) -> int:
        return self._first + len(self._pending)

    def advance(self, frames: np.ndarray) -> Hypothesis:
        """Search the next encoder frames [T, D] (they follow those given before); returns the hypothesis."""
        self._pending = np.concatenate([self._pending, self.model.joint.project_encoder(frames)])
        if self.frame < self.frames_seen:
            self.frame = self._first + self._search(self.frame - self._first)
        done = min(self.frame, self.frames_seen) - self._first
        self._pending, self._first = self._pending[done:], self._first + done
        return self.hyp

    def _search(self, start: int) -> int:
        """Run the compiled loop (tinyasr.kernels.transducer) over the pending frames from index ``start``; keep
        what it emitted in the hypothesis.  -> the index of the next frame to try."""
        model, hyp = self.model, self.hyp
        capacity = (len(self._pending) - start) * self.max_symbols
        tokens, frames, durations = (np.empty(capacity, np.int64) for _ in range(3))
        confidences = np.empty(capacity, np.float32)
        h = np.concatenate([h.reshape(-1) for h, _ in hyp.state])
        c = np.concatenate([c.reshape(-1) for _, c in hyp.state])
        projected = np.array(hyp.projected, np.float32)
        count, following = greedy_frames(
            self._pending, start, self.max_symbols, model.blank, self._durations, model.prediction.embedding, *model._packed_layers, h, c, *model._joint_operands,
            JOINT_ACTIVATION_CODES[model.joint.activation], projected, tokens, frames, durations, confidences)
        if count:
            hyp.tokens.extend(tokens[:count].tolist())
            hyp.frames.extend((frames[:count] + self._first).tolist())
            if self.tdt:
                hyp.durations.extend(durations[:count].tolist())
            self.confidences.extend(confidences[:count].tolist())
            state, h_start, c_start = [], 0, 0
            for layer in model.prediction.layers:
                state.append((h[h_start:h_start + layer.width].reshape(1, -1),
                              c[c_start:c_start + layer.hidden].reshape(1, -1)))
                h_start, c_start = h_start + layer.width, c_start + layer.hidden
            self.hyp = Hypothesis(hyp.tokens, hyp.frames, hyp.durations, tuple(state), projected)
        return following


def rnnt_greedy(model: Transducer, encoder_output: np.ndarray, length: Optional[int] = None,
                max_symbols: int = 10) -> Hypothesis:
    """NeMo's greedy RNN-T: per frame up to ``max_symbols`` non-blank tokens; a blank moves to the next frame."""
    return GreedySearch(model, max_symbols, tdt=False).advance(_encoder_frames(encoder_output, length))


def tdt_greedy(model: Transducer, encoder_output: np.ndarray, length: Optional[int] = None,
               max_symbols: int = 10) -> Hypothesis:
    """NeMo's greedy TDT (``GreedyTDTInfer``): token and duration from one joint output per try."""
    return GreedySearch(model, max_symbols, tdt=True).advance(_encoder_frames(encoder_output, length))


def greedy(model: Transducer, encoder_output: np.ndarray, length: Optional[int] = None,
           max_symbols: int = 10) -> Hypothesis:
    """TDT greedy for a model with durations, else RNN-T greedy."""
    return GreedySearch(model, max_symbols).advance(_encoder_frames(encoder_output, length))
