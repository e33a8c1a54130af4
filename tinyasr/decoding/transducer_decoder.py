"""The transducer decoder of a .tasr file: its tensors checked and built, and its search turned into a Result.

A transducer file's graph is the encoder; the prediction network and joint are stored tensors that no graph
node reads, named by the manifest's ``transducer`` decoder entry (tinyasr.decoding.specs.TransducerSpec).
The file is untrusted, so :func:`transducer_of` checks every name the entry gives (present, dense float32, finite;
an LSTM layer's W and R may be stored ``csr`` / ``bsr``, pruned), every shape against the others (LSTM gates,
projection, joint widths, the encoder's feature size), and the blank, vocabulary and durations against the joint's
output, before anything runs; a problem is a ModelFileError naming the manifest key.
The search itself is tinyasr.decoding.transducer's GreedySearch, which
the Recognizer runs over a whole utterance and an OnlineStream chunk by chunk.  Its Result goes behind the
speech gate CTC results go behind, and gets the same confidence and out-of-vocabulary flag
(tinyasr.decoding.confidence), so silence, noise and tones give no text whatever the model emits on them.
"""

from __future__ import annotations

from typing import Any, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from tinyasr.decoding.beam import token_piece
from tinyasr.decoding.confidence import COVER_SECONDS, Speech, coverage, in_speech, is_out_of_vocabulary
from tinyasr.decoding.ctc import id_to_text, is_wordpiece, tokens_to_words
from tinyasr.decoding.results import Result, Token
from tinyasr.decoding.scores import frame_span
from tinyasr.decoding.specs import TransducerSpec
from tinyasr.decoding.transducer import GreedySearch, Hypothesis, Joint, LSTMLayer, PredictionNetwork, Transducer
from tinyasr.errors import InputError, ModelFileError
from tinyasr.format.encodings.sparse import SPARSE_TYPES


class _Tensors:
    """Looks up the entry's tensor names, refusing (ModelFileError naming the key) what a decoder cannot use."""

    def __init__(self, tensors: Mapping[str, Any], where):
        self.tensors, self.where = tensors, where

    def fail(self, key: str, problem: str):
        raise ModelFileError(self.where, f"the transducer decoder entry: '{key}' {problem}")

    def get(self, key: str, name: str, shape: Sequence[Optional[int]]) -> np.ndarray:
        """The tensor ``name`` (at manifest key ``key``): float32, of rank len(shape), its dims equal to the
        ints of ``shape`` (None: any size from 1), finite."""
        value = self.tensors.get(name)
        if value is None:
            self.fail(key, f"names tensor {name!r}, which the file does not hold apart from the graph's tensors")
        if not isinstance(value, np.ndarray) or value.dtype != np.float32:
            kind = value.dtype if isinstance(value, np.ndarray) else f"a {type(value).__name__}"
            self.fail(key, f"names tensor {name!r}, which is {kind}; a decoder tensor must be dense float32 "
                           "(or float16 stored with upcast_to)")
        expected = tuple("any" if d is None else d for d in shape)
        if value.ndim != len(shape) or any(d == 0 or (e is not None and d != e) for d, e in zip(value.shape, shape)):
            self.fail(key, f"names tensor {name!r} of shape {list(value.shape)}, expected {list(expected)}")
        if not np.isfinite(value).all():
            self.fail(key, f"names tensor {name!r}, which holds NaN or infinite values")
        return value

    def get_gate_matrix(self, key: str, name: str, shape: Sequence[Optional[int]]):
        """An LSTM layer's W or R: as ``get``, or stored ``csr`` / ``bsr`` (pruned: the step runs it sparse; the
        encoding's indices were checked at load) of rank 2 with finite values."""
        value = self.tensors.get(name)
        if not isinstance(value, SPARSE_TYPES):
            return self.get(key, name, shape)
        if len(value.shape) != 2 or any(d == 0 or (e is not None and d != e) for d, e in zip(value.shape, shape)):
            expected = ["any" if d is None else d for d in shape]
            self.fail(key, f"names tensor {name!r} of shape {list(value.shape)}, expected {expected}")
        if not np.isfinite(value.values).all():
            self.fail(key, f"names tensor {name!r}, which holds NaN or infinite values")
        return value


def _layers(t: _Tensors, spec: TransducerSpec, width: int) -> Tuple[LSTMLayer, ...]:
    layers = []
    for i, entry in enumerate(spec.prediction["layers"]):
        key = f"prediction.layers[{i}]"
        w = t.get_gate_matrix(f"{key}.w", entry["w"], (None, width))
        if w.shape[0] % 4:
            t.fail(f"{key}.w", f"has {w.shape[0]} rows, not 4 gates x hidden size")
        hidden = w.shape[0] // 4
        projection = None
        if "projection" in entry:
            projection = t.get(f"{key}.projection", entry["projection"], (None, hidden))
            if projection.shape[0] >= hidden:
                t.fail(f"{key}.projection", f"projects to {projection.shape[0]} values, not fewer than the hidden "
                                            f"size {hidden}")
        width = hidden if projection is None else projection.shape[0]
        r = t.get_gate_matrix(f"{key}.r", entry["r"], (4 * hidden, width))
        bias = t.get(f"{key}.bias", entry["bias"], (4 * hidden,))
        layers.append(LSTMLayer(w, r, bias, projection))
    return tuple(layers)


def transducer_of(spec: TransducerSpec, tensors: Mapping[str, Any], encoder_features: Any, where) -> Transducer:
    """The Transducer a checked entry describes, from the file's decoder tensors (Model.decoder_tensors);
    ``encoder_features``: the encoder output's feature dim (an int, or a symbolic name: not checked here)."""
    t = _Tensors(tensors, where)
    embedding = t.get("prediction.embedding", spec.prediction["embedding"], (None, None))
    layers = _layers(t, spec, embedding.shape[1])
    joint_names = spec.joint
    enc_w = t.get("joint.encoder_weight", joint_names["encoder_weight"],
                  (encoder_features if isinstance(encoder_features, int) else None, None))
    hidden = enc_w.shape[1]
    out_w = t.get("joint.output_weight", joint_names["output_weight"], (hidden, None))
    joint = Joint(enc_w, t.get("joint.encoder_bias", joint_names["encoder_bias"], (hidden,)),
                  t.get("joint.prediction_weight", joint_names["prediction_weight"], (layers[-1].width, hidden)),
                  t.get("joint.prediction_bias", joint_names["prediction_bias"], (hidden,)),
                  out_w, t.get("joint.output_bias", joint_names["output_bias"], (out_w.shape[1],)),
                  joint_names.get("activation", "relu"))
    durations = spec.durations or ()
    classes = joint.outputs - len(durations)
    if classes not in (len(spec.vocabulary), len(spec.vocabulary) + 1):
        t.fail("vocabulary", f"has {len(spec.vocabulary)} tokens, but the joint gives {joint.outputs} outputs"
                             + (f" of which {len(durations)} are durations" if durations else "")
                             + f": {classes} token classes (the vocabulary with or without the blank)")
    if not spec.blank < classes:
        t.fail("blank", f"is {spec.blank}, outside the joint's {classes} token classes")
    if embedding.shape[0] < classes:
        t.fail("prediction.embedding", f"has {embedding.shape[0]} rows, fewer than the {classes} token classes")
    return Transducer(PredictionNetwork(embedding, layers), joint, spec.blank, durations)


def token_pieces(model: Transducer, spec: TransducerSpec) -> List[str]:
    """What each token class adds to the text (tinyasr.decoding.beam.token_piece), for beam search's LM and
    hotwords."""
    texts = id_to_text(spec.vocabulary, spec.blank, model.token_classes, spec.output)
    return [token_piece(t, spec.vocabulary_type, is_wordpiece(texts)) for t in texts]


def token_confidences(model: Transducer, encoder_output: np.ndarray, hyp: Hypothesis) -> List[float]:
    """Each token's probability among the token classes at its frame after the tokens before it (a beam
    search's hypothesis carries none): its path replayed, one prediction step and one joint per token."""
    replay, confidences = model.start(), []
    frames = model.joint.project_encoder(np.ascontiguousarray(encoder_output[:, hyp.frames].T))
    for token, frame, projected in zip(hyp.tokens, hyp.frames, frames):
        logits = model.joint.logits(projected, replay.projected)[:model.token_classes]
        shifted = np.exp(logits - logits.max())
        confidences.append(float(shifted[token] / shifted.sum()))
        replay = model.emit(replay, token, frame)
    return confidences


def hypothesis_result(model: Transducer, hyp: Hypothesis, encoder_output: np.ndarray, spec: TransducerSpec, *,
                      frame_seconds: float, duration: float, confidences: Optional[Sequence[float]] = None,
                      speech: Optional[Speech] = None) -> Result:
    """The Result of a hypothesis (greedy's or beam search's): tokens carry vocabulary ids, times from their
    frames (a TDT token spans its duration, at least one frame), confidences the token's probability where it
    was chosen (replayed when not given); words as spec.vocabulary_type groups them.  ``speech``: what the voice
    activity detector heard, as for CTC (tinyasr.decoding.ctc.ctc_result): tokens outside it are dropped, the
    Result's confidence is the coverage score of all the hypothesis's token frames and the out-of-vocabulary
    flag follows the default rule (tinyasr.decoding.confidence); without it, 1.0 and not flagged."""
    if confidences is None:
        confidences = token_confidences(model, encoder_output, hyp)
    texts = id_to_text(spec.vocabulary, spec.blank, model.token_classes, spec.output)
    spans = [max(1, d) for d in hyp.durations] if hyp.durations else [1] * len(hyp.tokens)
    tokens = []
    for token, frame, span, confidence in zip(hyp.tokens, hyp.frames, spans, confidences):
        start, end = frame_span(frame, frame + span, frame_seconds, duration)
        tokens.append(Token(text=texts[token], id=int(token), start=start, end=end, confidence=confidence))
    score, out_of_vocabulary = 1.0, False
    if speech is not None:
        tokens = in_speech(tokens, speech, COVER_SECONDS)
        frames = np.unique(np.concatenate([np.arange(f, f + n) for f, n in zip(hyp.frames, spans)] or [[]]))
        score = coverage((frames + 0.5) * frame_seconds, speech, COVER_SECONDS)
        out_of_vocabulary = is_out_of_vocabulary(score, speech, None, None)
    words = tokens_to_words(tokens, spec.vocabulary_type, is_wordpiece(texts))
    return Result(text=" ".join(w.text for w in words), tokens=tuple(tokens), words=words, duration=float(duration),
                  confidence=score, out_of_vocabulary=out_of_vocabulary)


def search_result(search: GreedySearch, spec: TransducerSpec, *, frame_seconds: float, duration: float,
                  speech: Optional[Speech] = None) -> Result:
    """The Result of a greedy search so far (its confidences recorded as it went)."""
    return hypothesis_result(search.model, search.hyp, None, spec, frame_seconds=frame_seconds, duration=duration,
                             confidences=search.confidences, speech=speech)


def transducer_result(model: Transducer, spec: TransducerSpec, encoder_output: np.ndarray, valid_frames: int, *,
                      frame_seconds: float, duration: float, speech: Optional[Speech] = None) -> Result:
    """Greedy decoding of one utterance's encoder output [D, T] (its first ``valid_frames`` frames) to a Result."""
    if encoder_output.ndim != 2:
        raise InputError(f"transducer: the encoder output must be [features, frames] for one utterance, got shape "
                         f"{encoder_output.shape}")
    search = GreedySearch(model, spec.max_symbols)
    search.advance(np.ascontiguousarray(encoder_output[:, :valid_frames].T))
    return search_result(search, spec, frame_seconds=frame_seconds, duration=duration, speech=speech)
