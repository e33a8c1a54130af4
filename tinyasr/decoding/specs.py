"""What a manifest's ``decoder`` entry may say: one frozen dataclass per decoder type, read in one place.

:func:`decoder_spec` is the only reader of the entry.  It picks the class for ``entry["type"]`` from
DECODER_SPECS and checks every key strictly (unknown or missing keys, types, ranges), so the Recognizer,
the online stream, the VAD, ``tinyasr info`` and the converter (which writes ``spec.to_dict()``) all see
the same settings with the same defaults.  A new decoder (a transducer, say) is one class here, whose
fields carry their rules, plus one row of DECODER_SPECS.
"""

from __future__ import annotations

import os
from dataclasses import MISSING, dataclass, field, fields
from types import MappingProxyType
from typing import Any, ClassVar, Dict, Mapping, Optional, Sequence, Tuple, Type

from tinyasr.decoding.hotwords import parse_hotword
from tinyasr.decoding.confidence import OOV_SCORES
from tinyasr.audio.io import MIN_AUDIO_RATE
from tinyasr.audio.resample import MAX_SAMPLE_RATE
from tinyasr.decoding.scores import SCORE_KINDS
from tinyasr.errors import ModelFileError, TinyASRError
from tinyasr.format.values import is_int, is_real

WORD_START = "\u2581"  # sentencepiece's "▁": the piece starts a new word
WORDPIECE_CONTINUATION = "##"  # WordPiece: the piece continues the previous word
VOCABULARY_TYPES = ("chars", "subword", "words")
MIN_SECONDS, MAX_SECONDS = 1e-6, 86400.0  # the range of every seconds-valued decoder key


def vocabulary_type_of(vocabulary: Sequence[str]) -> str:
    """The vocabulary_type a token list implies: subword when a token carries a subword marker, chars when
    every token is one character at most, else words (what the converter writes when not told)."""
    if any(t.startswith((WORD_START, WORDPIECE_CONTINUATION)) for t in vocabulary):
        return "subword"
    return "chars" if all(len(t) <= 1 for t in vocabulary) else "words"


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


# Each field's rule: a check and what it expects, for the message that names the key.
def _rule(check, expected: str) -> Dict[str, Any]:
    return {"check": check, "expected": expected}


def _is_strings(value) -> bool:
    return isinstance(value, (list, tuple)) and len(value) > 0 and all(isinstance(x, str) for x in value)


_OUTPUT = _rule(lambda v: isinstance(v, str) and v != "", "a string (an output name)")
_LOGITS = _rule(lambda v: isinstance(v, str) and v in SCORE_KINDS, f"one of {', '.join(SCORE_KINDS)}")
_STRINGS = _rule(_is_strings, "a list of strings")
# Seconds per frame or of cover: below a microsecond a frame count overflows (5e-324 gave inf frames).
_SECONDS = _rule(lambda v: is_real(v) and MIN_SECONDS <= v <= MAX_SECONDS,
                 f"a number of seconds from {MIN_SECONDS:g} to {MAX_SECONDS:g}")
_SHARE = _rule(lambda v: is_real(v) and 0 <= v <= 1, "a number from 0 to 1")
_HERTZ = _rule(lambda v: is_int(v) and MIN_AUDIO_RATE <= v <= MAX_SAMPLE_RATE,
               f"an integer from {MIN_AUDIO_RATE} to {MAX_SAMPLE_RATE} (Hz)")


@dataclass(frozen=True, kw_only=True)
class DecoderSpec:
    """Settings every decoder has.

    output: the graph output the decoder reads.
    logits: what that output holds: "log_probs", "logits" (softmax applied when decoding) or "probs".
      Default "logits"; CTCSpec's is "log_probs" (what CTC exports end in).
    frame_seconds: seconds per output frame.  Default: measured as the input step times the ratio of input
      steps to output frames (scores.output_frame_seconds); state it for a graph on raw audio, whose stride
      the sample count does not pin down exactly.
    sample_rate: the rate to resample audio to for a graph that takes raw audio (no front end); read
      only through tinyasr.pipeline.model_input.sample_rate_of.
    """

    type: ClassVar[str]  # the manifest's "type"; the key of DECODER_SPECS

    output: str = field(metadata=_OUTPUT)
    logits: str = field(default="logits", metadata=_LOGITS)
    frame_seconds: Optional[float] = field(default=None, metadata=_SECONDS)
    sample_rate: Optional[int] = field(default=None, metadata=_HERTZ)

    def __post_init__(self):
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None and f.default is None:
                continue  # an optional setting left out
            if not f.metadata["check"](value):
                raise TinyASRError(f"the {self.type} decoder entry: {f.name!r} must be {f.metadata['expected']}, "
                                   f"got {_shown(value)}")
            if isinstance(value, list):
                object.__setattr__(self, f.name, tuple(value))  # frozen all the way down
        problem = self._problem()
        if problem:
            raise TinyASRError(f"the {self.type} decoder entry: {problem}")

    def _problem(self) -> Optional[str]:
        """What is wrong between fields that are each valid (a subclass's cross-field rules), or None."""
        return None

    @property
    def classes(self) -> Tuple[str, ...]:
        """The names of the output's classes as the entry lists them."""
        raise NotImplementedError

    def fits(self, classes: int) -> bool:
        """Whether an output with ``classes`` classes is one this decoder can read."""
        return classes == len(self.classes)

    def to_dict(self) -> Dict[str, Any]:
        """The manifest entry: the type and every setting that is not None (defaults written out)."""
        entry: Dict[str, Any] = {"type": self.type}
        for f in fields(self):
            value = getattr(self, f.name)
            if value is not None:
                entry[f.name] = list(value) if isinstance(value, tuple) else value
        return entry

    @classmethod
    def from_dict(cls, entry: Mapping[str, Any], where) -> "DecoderSpec":
        """Strict inverse of to_dict: an unknown, missing or bad key is a ModelFileError(where, ...) naming it."""
        if not isinstance(entry, Mapping):
            raise ModelFileError(where, f"the decoder entry must be an object, got {type(entry).__name__}")
        if entry.get("type") != cls.type:
            raise ModelFileError(where, f"a {cls.type} decoder entry has 'type' {_shown(entry.get('type'))}")
        settings = {k: v for k, v in entry.items() if k != "type"}
        known = [f.name for f in fields(cls)]
        unknown = [k for k in settings if k not in known]
        if unknown:
            raise ModelFileError(where, f"the {cls.type} decoder entry has unknown key(s) "
                                        f"{', '.join(map(_shown, unknown))}; its keys are type, {', '.join(known)}")
        missing = [f.name for f in fields(cls) if f.default is MISSING and f.name not in settings]
        if missing:
            raise ModelFileError(where, f"the {cls.type} decoder entry lacks {', '.join(map(repr, missing))}")
        try:
            return cls(**settings)
        except TinyASRError as exc:
            raise ModelFileError(where, str(exc)) from None

    def output_of(self, outputs: Sequence, where):
        """The graph output (a ValueInfo among ``outputs``) this decoder reads; ModelFileError when none is."""
        named = {v.name: v for v in outputs}
        if self.output not in named:
            raise ModelFileError(where, f"the decoder reads output {self.output!r}, but the model's outputs are "
                                        f"{sorted(named)}")
        return named[self.output]


@dataclass(frozen=True, kw_only=True)
class CTCSpec(DecoderSpec):
    """CTC: one class per token plus a blank.

    blank: the blank's class index.  vocabulary: the token texts in class order, with or without the blank
    (without: the blank's class is inserted at ``blank``, NeMo's convention puts it last).
    vocabulary_type: how tokens make words: "chars" (a whitespace token ends a word), "subword"
    (sentencepiece "▁" starts a word, or WordPiece "##" continues one), "words" (a token is a word).
    oov_score, oov_threshold, oov_min_speech, cover_seconds: Result.confidence and the out-of-vocabulary
    rule (tinyasr.decoding.confidence): flagged when at least oov_min_speech s of speech and the score under
    oov_threshold; left out, that module's defaults.
    """

    type: ClassVar[str] = "ctc"

    blank: int = field(metadata=_rule(is_int, "an integer"))
    vocabulary: Tuple[str, ...] = field(metadata=_STRINGS)
    vocabulary_type: str = field(default="chars", metadata=_rule(lambda v: isinstance(v, str) and v in VOCABULARY_TYPES,
                                                                  f"one of {', '.join(VOCABULARY_TYPES)}"))
    logits: str = field(default="log_probs", metadata=_LOGITS)
    oov_score: Optional[str] = field(default=None, metadata=_rule(lambda v: isinstance(v, str) and v in OOV_SCORES,
                                                                   f"one of {', '.join(OOV_SCORES)}"))
    cover_seconds: Optional[float] = field(default=None, metadata=_SECONDS)
    oov_threshold: Optional[float] = field(default=None, metadata=_SHARE)
    oov_min_speech: Optional[float] = field(default=None, metadata=_rule(
        lambda v: is_real(v) and 0 <= v <= MAX_SECONDS,
        f"a number of seconds from 0 to {MAX_SECONDS:g}"))

    def _problem(self) -> Optional[str]:
        if not 0 <= self.blank <= len(self.vocabulary):
            return (f"'blank' must be from 0 to {len(self.vocabulary)} (a class of the {len(self.vocabulary)} "
                    f"vocabulary entries, or one more when they leave the blank out), got {self.blank}")
        return None

    @property
    def classes(self) -> Tuple[str, ...]:
        return self.vocabulary

    def fits(self, classes: int) -> bool:
        return classes in (len(self.vocabulary), len(self.vocabulary) + 1) and self.blank < classes


@dataclass(frozen=True, kw_only=True)
class ClassificationSpec(DecoderSpec):
    """A clip classifier: one score per label for the whole input (frame_seconds is not used)."""

    type: ClassVar[str] = "classification"

    labels: Tuple[str, ...] = field(metadata=_STRINGS)

    @property
    def classes(self) -> Tuple[str, ...]:
        return self.labels


@dataclass(frozen=True, kw_only=True)
class FrameClassificationSpec(ClassificationSpec):
    """A frame classifier (e.g. a frame VAD): one score per label for every output frame."""

    type: ClassVar[str] = "frame_classification"


_TENSOR_NAME = "a tensor name (a string of 1 to 1024 characters)"
PREDICTION_KEYS, LSTM_KEYS = ("embedding", "layers"), ("w", "r", "bias")  # required; a layer may add "projection"
JOINT_KEYS = ("encoder_weight", "encoder_bias", "prediction_weight", "prediction_bias", "output_weight", "output_bias")
JOINT_ACTIVATION_NAMES = ("relu", "tanh", "sigmoid")
MAX_PREDICTION_LAYERS, MAX_DURATIONS, MAX_DURATION, MAX_SYMBOLS = 16, 64, 1024, 1000


def _is_tensor_name(value) -> bool:
    return isinstance(value, str) and 1 <= len(value) <= 1024


def _object_problem(value, key: str, required: Sequence[str], optional: Sequence[str] = ()) -> Optional[str]:
    """What is wrong with an object of tensor names at ``key`` (unknown, missing or non-name values), or None."""
    if not isinstance(value, Mapping):
        return f"{key!r} must be an object, got {_shown(value)}"
    unknown = [k for k in value if k not in (*required, *optional)]
    missing = [k for k in required if k not in value]
    if unknown or missing:
        return (f"{key!r} has unknown key(s) {unknown} and lacks {missing}; its keys are "
                f"{', '.join(required)}" + (f" and optionally {', '.join(optional)}" if optional else ""))
    for name in (*required, *optional):
        if name in value and name not in ("layers", "activation") and not _is_tensor_name(value[name]):
            return f"'{key}.{name}' must be {_TENSOR_NAME}, got {_shown(value[name])}"
    return None


def _frozen(value):
    """JSON objects and arrays as read-only mappings and tuples (a spec is shared between threads)."""
    if isinstance(value, Mapping):
        return MappingProxyType({k: _frozen(v) for k, v in value.items()})
    if isinstance(value, (list, tuple)):
        return tuple(_frozen(v) for v in value)
    return value


def _thawed(value):
    if isinstance(value, Mapping):
        return {k: _thawed(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return [_thawed(v) for v in value]
    return value


def _is_durations(value) -> bool:
    return (isinstance(value, (list, tuple)) and 0 < len(value) <= MAX_DURATIONS
            and all(is_int(d) and 0 <= d <= MAX_DURATION for d in value) and any(d > 0 for d in value))


@dataclass(frozen=True, kw_only=True)
class TransducerSpec(DecoderSpec):
    """A transducer (RNN-T or TDT): the graph is the encoder; the prediction network and joint are stored
    tensors this entry names, run one step at a time by tinyasr.decoding.transducer.

    output: the encoder output [1, D, frames] (NeMo's ``outputs``).  lengths: optional graph output [1] with the
    encoder's valid frames (NeMo's ``encoded_lengths``); without it they are measured as for CTC.
    blank: the blank's token class (NeMo: len(vocabulary), the last); vocabulary / vocabulary_type: as CTCSpec's.
    prediction: {"embedding": [classes, E], "layers": [{"w": [4H, I], "r": [4H, P], "bias": [4H],
    "projection"?: [P, H]}, ...]}: LSTM layers in ONNX gate order (i, o, f, c), the two biases summed.
    joint: {"encoder_weight": [D, J], "encoder_bias": [J], "prediction_weight": [P, J], "prediction_bias": [J],
    "output_weight": [J, K], "output_bias": [K], "activation": "relu" | "tanh" | "sigmoid"}: weights as x @ W.
    max_symbols: NeMo's max_symbols_per_step.  durations: TDT's frame advances, one duration logit each after
    the K - len(durations) token logits; absent for RNN-T.
    ctc: a hybrid model's CTC head, a whole "ctc" decoder entry (Recognizer(..., head="ctc") decodes with it).
    The tensors' existence, dtypes and shapes are checked when the Recognizer loads the model
    (tinyasr.decoding.transducer.transducer_of).
    """

    type: ClassVar[str] = "transducer"

    blank: int = field(metadata=_rule(is_int, "an integer"))
    vocabulary: Tuple[str, ...] = field(metadata=_STRINGS)
    prediction: Mapping[str, Any] = field(metadata=_rule(lambda v: isinstance(v, Mapping), "an object"))
    joint: Mapping[str, Any] = field(metadata=_rule(lambda v: isinstance(v, Mapping), "an object"))
    vocabulary_type: str = field(default="chars", metadata=_rule(lambda v: isinstance(v, str) and v in VOCABULARY_TYPES,
                                                                  f"one of {', '.join(VOCABULARY_TYPES)}"))
    lengths: Optional[str] = field(default=None, metadata=_OUTPUT)
    max_symbols: int = field(default=10, metadata=_rule(lambda v: is_int(v) and 1 <= v <= MAX_SYMBOLS,
                                                        f"an integer from 1 to {MAX_SYMBOLS}"))
    durations: Optional[Tuple[int, ...]] = field(default=None, metadata=_rule(
        _is_durations, f"a list of 1 to {MAX_DURATIONS} integers from 0 to {MAX_DURATION}, one of them > 0"))
    ctc: Optional[CTCSpec] = field(default=None, metadata=_rule(lambda v: isinstance(v, (Mapping, CTCSpec)),
                                                                "a ctc decoder entry (an object)"))

    def _problem(self) -> Optional[str]:
        if not 0 <= self.blank <= len(self.vocabulary):
            return (f"'blank' must be from 0 to {len(self.vocabulary)} (a class of the {len(self.vocabulary)} "
                    f"vocabulary entries, or one more when they leave the blank out), got {self.blank}")
        problem = _object_problem(self.prediction, "prediction", PREDICTION_KEYS)
        if problem:
            return problem
        layers = self.prediction["layers"]
        if not isinstance(layers, (list, tuple)) or not 1 <= len(layers) <= MAX_PREDICTION_LAYERS:
            return f"'prediction.layers' must be a list of 1 to {MAX_PREDICTION_LAYERS} objects, got {_shown(layers)}"
        for i, layer in enumerate(layers):
            problem = _object_problem(layer, f"prediction.layers[{i}]", LSTM_KEYS, ("projection",))
            if problem:
                return problem
        problem = _object_problem(self.joint, "joint", JOINT_KEYS, ("activation",))
        if problem:
            return problem
        if self.joint.get("activation", "relu") not in JOINT_ACTIVATION_NAMES:
            return (f"'joint.activation' must be one of {', '.join(JOINT_ACTIVATION_NAMES)}, got "
                    f"{_shown(self.joint.get('activation'))}")
        object.__setattr__(self, "prediction", _frozen(self.prediction))
        object.__setattr__(self, "joint", _frozen(self.joint))
        if isinstance(self.ctc, Mapping):
            try:
                object.__setattr__(self, "ctc", CTCSpec.from_dict(self.ctc, "the transducer's ctc entry"))
            except ModelFileError as exc:
                return f"'ctc': {exc.problem}"
        return None

    @property
    def classes(self) -> Tuple[str, ...]:
        return self.vocabulary

    def fits(self, classes: int) -> bool:
        return True  # the encoder output's last axis is time: the joint's shapes are checked at load

    @property
    def tensor_names(self) -> Tuple[str, ...]:
        """Every stored tensor the entry names (the prediction network's and the joint's)."""
        names = [self.prediction["embedding"]]
        for layer in self.prediction["layers"]:
            names += [layer[k] for k in (*LSTM_KEYS, "projection") if k in layer]
        return tuple(names + [self.joint[k] for k in JOINT_KEYS])

    def to_dict(self) -> Dict[str, Any]:
        entry = super().to_dict()
        entry.update(prediction=_thawed(self.prediction), joint=_thawed(self.joint))
        if self.ctc is not None:
            entry["ctc"] = self.ctc.to_dict()
        return entry


DECODER_SPECS: Dict[str, Type[DecoderSpec]] = {
    spec.type: spec for spec in (CTCSpec, ClassificationSpec, FrameClassificationSpec, TransducerSpec)
}


def decoder_spec(entry: Optional[Mapping[str, Any]], where) -> Optional[DecoderSpec]:
    """The spec of a manifest's decoder entry (None for none); ModelFileError(where, ...) naming the bad key."""
    if entry is None:
        return None
    if not isinstance(entry, Mapping):
        raise ModelFileError(where, f"the decoder entry must be an object, got {type(entry).__name__}")
    kind = entry.get("type")
    if not isinstance(kind, str):
        raise ModelFileError(where, f"the decoder entry's 'type' must be one of {', '.join(DECODER_SPECS)}, "
                                    f"got {_shown(kind)}")
    if kind not in DECODER_SPECS:
        raise ModelFileError(where, f"the decoder entry's type {_shown(kind)} is unknown to this tinyasr (it knows "
                                    f"{', '.join(DECODER_SPECS)}); the file may need a newer tinyasr")
    return DECODER_SPECS[kind].from_dict(entry, where)


# ---------------------------------------------------------------------------
# Decoding options (how to search a CTC output, chosen per Recognizer or per call, not stored in the model)


def _hotword_pairs(hotwords) -> Tuple[Tuple[str, float], ...]:
    pairs = []
    for item in hotwords:
        if isinstance(item, str):
            pairs.append(parse_hotword(item))
        elif (isinstance(item, (tuple, list)) and len(item) == 2 and isinstance(item[0], str)
              and isinstance(item[1], (int, float)) and not isinstance(item[1], bool)):
            pairs.append(parse_hotword(f"{item[0]}:{float(item[1])!r}"))
        else:
            raise TinyASRError(f"BeamSearch: a hotword must be 'phrase', 'phrase:boost' or (phrase, boost), "
                               f"got {_shown(item)}")
    return tuple(pairs)


@dataclass(frozen=True)
class Greedy:
    """Best-path decoding (tinyasr.decoding.ctc.ctc_greedy): what a Recognizer does unless told otherwise."""


@dataclass(frozen=True)
class BeamSearch:
    """CTC prefix beam search (tinyasr.decoding.beam), optionally with a word n-gram LM and hotwords.

    beam: hypotheses kept per frame.  lm: an ARPA file (plain or .gz), or a KenLM binary file (needs the
    ``kenlm`` package), scored per word with weight ``alpha``
    (natural-log LM score times alpha) plus ``beta`` per word (both only with an LM).  hotwords: phrases
    ("word", "word:boost" or (phrase, boost)) whose completed match adds boost (natural log) to a
    hypothesis (tinyasr.decoding.hotwords).  token_min_logp: tokens below this log-probability at a frame
    are not tried there; beam_prune: hypotheses this far below the best are dropped.
    """

    beam: int = 8
    lm: Optional[str] = None
    alpha: float = 0.5
    beta: float = 1.0
    hotwords: Tuple[Tuple[str, float], ...] = ()
    token_min_logp: float = -10.0
    beam_prune: float = 20.0

    def __post_init__(self):
        if not is_int(self.beam) or not 1 <= self.beam <= 10_000:
            raise TinyASRError(f"BeamSearch: beam must be an integer from 1 to 10000, got {_shown(self.beam)}")
        if self.lm is not None:
            if not isinstance(self.lm, (str, bytes)) and not hasattr(self.lm, "__fspath__"):
                raise TinyASRError(f"BeamSearch: lm must be the path of an ARPA or KenLM file, got {_shown(self.lm)}")
            object.__setattr__(self, "lm", str(self.lm if isinstance(self.lm, str) else os.fsdecode(self.lm)))
        for name in ("alpha", "beta", "token_min_logp", "beam_prune"):
            value = getattr(self, name)
            if not is_real(value):
                raise TinyASRError(f"BeamSearch: {name} must be a finite number, got {_shown(value)}")
        if self.beam_prune <= 0:
            raise TinyASRError(f"BeamSearch: beam_prune must be positive, got {self.beam_prune}")
        if isinstance(self.hotwords, str):
            raise TinyASRError("BeamSearch: hotwords must be a list of phrases, not one string")
        object.__setattr__(self, "hotwords", _hotword_pairs(self.hotwords))
