"""The small public API: ``Recognizer(model_path).transcribe(audio) -> Result``.

A Recognizer holds one loaded model and nothing that changes per call, so one
instance may be shared by many threads (the runtime keeps its buffer plans per
thread).  Each call: load or accept audio, resample to the model's rate, compute
features (or feed raw audio to a model whose graph starts from audio), run the
graph, decode as the manifest's ``decoder`` says.
"""

from __future__ import annotations

import copy
import math
import os
from dataclasses import dataclass
from typing import Callable, Dict, Iterator, List, Optional, Union

import numpy as np
import soundfile

from tinyasr.audio.io import as_float32_mono, load_audio
from tinyasr.decoding.classification import classify_clip, classify_frames
from tinyasr.decoding.confidence import Speech
from tinyasr.decoding.beam import BeamDecoder
from tinyasr.decoding.ctc import ctc_greedy
from tinyasr.decoding.results import Classification, FrameClassification, Result
from tinyasr.decoding.scores import check_scores, output_frame_seconds
from tinyasr.decoding.specs import BeamSearch, DecoderSpec, Greedy, TransducerSpec, decoder_spec
from tinyasr.decoding.transducer_beam import TransducerBeamDecoder
from tinyasr.decoding.transducer_decoder import hypothesis_result, token_pieces, transducer_of, transducer_result
from tinyasr.engine.offline import load_model
from tinyasr.engine.threads import set_num_threads
from tinyasr.errors import InputError, ModelFileError
from tinyasr.features.frontend import compute_features
from tinyasr.model_cache import resolve_model_path
from tinyasr.pipeline.long_form import join_utterances, transcribe_utterances
from tinyasr.pipeline.model_input import audio_tensor, frontend_of, sample_rate_of
from tinyasr.pipeline.online import OnlineStream
from tinyasr.pipeline.vad import Utterance, speech_in

AudioInput = Union[str, os.PathLike, np.ndarray]
Decoding = Union[Greedy, BeamSearch, None]  # None: the Recognizer's choice (greedy unless it was given one)
# decoder type -> the Recognizer call that decodes it (every row of tinyasr.decoding.specs.DECODER_SPECS)
DECODER_CALLS = {"ctc": "transcribe", "classification": "classify", "frame_classification": "classify_frames",
                 "transducer": "transcribe"}
HEADS = ("transducer", "ctc")  # Recognizer(head=...) for a hybrid transducer + CTC model


# ---------------------------------------------------------------------------
# The Recognizer

LONG_FILE_SECONDS = 120.0  # longer files are transcribed utterance by utterance (Recognizer.transcribe)


def file_duration(audio_input) -> Optional[float]:
    """Seconds of audio in a readable sound file, else None (arrays, other inputs and unreadable files fail
    later, with the loader's message)."""
    if not isinstance(audio_input, (str, os.PathLike)) or not os.path.isfile(audio_input):
        return None
    try:
        return soundfile.info(os.fspath(audio_input)).duration
    except (RuntimeError, OSError, soundfile.LibsndfileError):
        return None



@dataclass(frozen=True)
class _Forward:
    """One run of the network: its outputs and the time base needed to decode them."""

    outputs: Dict[str, np.ndarray]
    duration: float  # seconds of audio
    input_frames: int  # time steps fed to the network (padded feature frames, or samples)
    valid_input_frames: int  # of those, how many carry audio (the rest is padding)
    input_seconds: float  # seconds per input time step (feature hop, or 1 / sample rate)
    samples: Optional[np.ndarray] = None  # the audio at the model's rate (None: features were given)
    lead_seconds: float = 0.0  # silence the front end put before the audio (its pad_seconds): input step 0 is there


class Recognizer:
    """Speech recognition and audio classification with one .tasr model.

    ``model_path``: a path, a model name (bundled or in the cache, see
    :func:`resolve_model_path`) or None for the bundled digits model.
    ``num_threads``: Numba / BLAS threads (process-wide), None leaves them as they are.
    ``head``: for a hybrid transducer + CTC model (NeMo's EncDecHybridRNNTCTC), "ctc" decodes its CTC head
    instead of the transducer (the default, "transducer"); then everything CTC offers (beam search, LMs) applies.
    """

    def __init__(self, model_path: Union[str, os.PathLike, None] = None, *, num_threads: Optional[int] = None,
                 decoding: Decoding = None, head: Optional[str] = None):
        if num_threads is not None:
            set_num_threads(num_threads)
        self.decoding = _checked_decoding(decoding)  # None: greedy
        self._beam_decoders: Dict[BeamSearch, BeamDecoder] = {}  # LM read and hotword tree built once per options
        self.path = resolve_model_path(model_path)
        self.model = load_model(self.path)
        self.decoder: Optional[DecoderSpec] = _head(decoder_spec(self.model.decoder, self.path), head, self.path)
        self._transducer = None
        if self.decoder is not None:
            encoder = self.decoder.output_of(self.model.outputs, self.path)
            if isinstance(self.decoder, TransducerSpec):
                if len(encoder.shape) != 3:
                    raise ModelFileError(self.path, f"the transducer reads encoder output {encoder.name!r} of shape "
                                                    f"{list(encoder.shape)}; expected [batch, features, frames]")
                if self.decoder.lengths is not None and self.decoder.lengths not in {v.name for v in
                                                                                     self.model.outputs}:
                    raise ModelFileError(self.path, f"the transducer decoder entry: 'lengths' names output "
                                                    f"{self.decoder.lengths!r}, which the graph does not have")
                self._transducer = transducer_of(self.decoder, self.model.decoder_tensors, encoder.shape[1],
                                                 self.path)
        self.frontend = frontend_of(self.model, self.path)
        if self.frontend is not None and self.frontend.pad_samples and self.decoder is not None \
                and self.decoder.type == "frame_classification":
            raise ModelFileError(self.path, "frontend 'pad_seconds' is supported for ctc and classification "
                                            "decoders, not frame_classification (its frame times would be shifted)")
        self._signal, self._length = self._split_inputs(self.model.inputs)
        self._sample_mask = next((v for v in self.model.inputs if _is_sample_mask(v)), None)
        self.sample_rate = sample_rate_of(self.model, self.frontend, self.decoder, self._signal, self.path)
        if isinstance(self.decoding, BeamSearch):
            self._beam_decoder(self.decoding)  # a bad LM or a model that is not CTC fails here, not per file

    def __repr__(self) -> str:
        kind = self.decoder.type if self.decoder else "no decoder"
        return f"Recognizer({str(self.path)!r}, {kind})"

    # -- public calls ------------------------------------------------------

    def stream(self, **options) -> OnlineStream:
        """A new online stream on this model (own state; many may run at once): see tinyasr.pipeline.online.OnlineStream."""
        return OnlineStream(self, **options)

    def transcribe(self, audio_input: AudioInput, sample_rate: Optional[int] = None, *,
                   decoding: Decoding = None, progress: Optional[Callable[[float], None]] = None) -> Result:
        """Text, tokens and words with times of a file path or a sample array (then give ``sample_rate``).

        ``decoding``: Greedy() or BeamSearch(...) for this call (default: the Recognizer's ``decoding``, greedy
        unless given).
        ``progress``: called with the seconds of audio done since its last call (per utterance of a long file).

        A file (or array) longer than LONG_FILE_SECONDS is read block by block and cut into utterances by voice
        activity (tinyasr.pipeline.long_form.transcribe_utterances, energy detector), so its memory does not grow
        with its length, nor with its square in a Conformer's attention; the utterances' words are joined into
        one Result with times from the file's start.
        """
        duration = file_duration(audio_input)
        if isinstance(audio_input, np.ndarray) and isinstance(sample_rate, (int, np.integer)) and sample_rate > 0:
            duration = len(audio_input) / sample_rate
        if duration is not None and duration > LONG_FILE_SECONDS and self.decoder and self.decoder.type in (
                "ctc", "transducer"):
            utterances = transcribe_utterances(audio_input, self.with_decoding(decoding), sample_rate=sample_rate)
            return join_utterances(_reported(utterances, progress), duration)
        if self._transducer is not None:
            forward = self._forward(audio_input, sample_rate)
            speech = speech_in(forward.samples, self.sample_rate, forward.lead_seconds)
            result = self._decode_transducer(decoding, forward, forward.duration + 2 * forward.lead_seconds, speech)
            if forward.lead_seconds:
                result = result.shifted(-forward.lead_seconds, forward.duration)
            if progress is not None:
                progress(result.duration)
            return result
        decoder, forward, scores = self._scores("ctc", "transcribe", audio_input, sample_rate)
        frame_seconds, valid = self._time_base(forward, scores.shape[-2])
        lead = forward.lead_seconds  # decoded with the front end's silence at both ends, reported without it
        result = self._decode_ctc(decoding, scores, frame_seconds=frame_seconds, valid_frames=valid,
                                  duration=forward.duration + 2 * lead,
                                  speech=speech_in(forward.samples, self.sample_rate, lead))
        if lead:
            result = result.shifted(-lead, forward.duration)
        if progress is not None:
            progress(result.duration)
        return result

    def transcribe_features(self, features: np.ndarray, length: Optional[int] = None, *,
                            decoding: Decoding = None) -> Result:
        """Greedy transcript (CTC or transducer) of features computed elsewhere (e.g. NeMo's preprocessor):
        ``features`` [n_features, T] as the encoder takes them, ``length`` the valid frames (default T).  Frames
        from ``length`` on are padding: the model masks them as NeMo does (through its length input) and they
        are not decoded.  ``Result.tokens`` carry vocabulary ids; times count from the first frame.
        ``decoding``: Greedy() (the default here, whatever the Recognizer's) or BeamSearch(...)."""
        decoding = _checked_decoding(decoding) or Greedy()
        if self._transducer is not None:
            forward = self._forward_features(features, length)
            return self._decode_transducer(decoding, forward, forward.duration)
        decoder = self._decoder_for("ctc", "transcribe_features")
        forward = self._forward_features(features, length)
        scores = self._output(forward, decoder)
        frame_seconds, valid = self._time_base(forward, scores.shape[-2])
        return self._decode_ctc(decoding, scores, frame_seconds=frame_seconds, valid_frames=valid,
                                duration=forward.duration)

    def classify(self, audio_input: AudioInput, sample_rate: Optional[int] = None, top_k: int = 5) -> Classification:
        """The ``top_k`` most probable labels of a clip, for a classification model."""
        decoder, forward, scores = self._scores("classification", "classify", audio_input, sample_rate)
        return classify_clip(scores, decoder, top_k=top_k, duration=forward.duration)

    def classify_frames(self, audio_input: AudioInput, sample_rate: Optional[int] = None) -> FrameClassification:
        """Per-frame labels and merged segments, for a frame classification model (e.g. frame VAD)."""
        decoder, forward, scores = self._scores("frame_classification", "classify_frames", audio_input, sample_rate)
        frame_seconds, valid = self._time_base(forward, scores.shape[-2])
        return classify_frames(scores, decoder, frame_seconds=frame_seconds, valid_frames=valid,
                               duration=forward.duration)

    def _scores(self, kind: str, method: str, audio_input: AudioInput, sample_rate: Optional[int]):
        """(decoder entry, forward pass, the decoder's output) for a call that needs a ``kind`` decoder."""
        decoder = self._decoder_for(kind, method)
        forward = self._forward(audio_input, sample_rate)
        return decoder, forward, self._output(forward, decoder)

    # -- setup ---------------------------------------------------------------

    def _split_inputs(self, inputs: List) -> tuple:
        """The signal input (features or audio) and the optional length input ([batch] integers)."""
        lengths = [v for v in inputs if len(v.shape) == 1 and np.dtype(v.dtype).kind in "iu"]
        signals = [v for v in inputs if v not in lengths and not _is_sample_mask(v)]
        if len(signals) != 1 or len(lengths) > 1:
            described = "; ".join(v.describe() for v in inputs)
            raise InputError(
                f"{self.path}: the Recognizer feeds one signal input and an optional length input, "
                f"but the model's inputs are: {described}; use tinyasr.engine.offline.load_model(...).run instead"
            )
        signal = signals[0]
        if self.frontend is not None and len(signal.shape) != 3:
            raise InputError(
                f"{self.path}: feature input {signal.name!r} has shape {list(signal.shape)}; "
                "expected [batch, features, time]"
            )
        return signal, (lengths[0] if lengths else None)

    def _decode_transducer(self, decoding: Decoding, forward: _Forward, duration: float,
                           speech: Optional[Speech] = None) -> Result:
        """The transducer's search over the encoder output of one run: valid frames from the encoder's own
        lengths output when the entry names one (an LSTM encoder's stacking rounds as NeMo does), else measured;
        ``speech`` gates its tokens and gives its confidence as for CTC (hypothesis_result)."""
        decoding = _checked_decoding(decoding) or self.decoding
        encoder = forward.outputs[self.decoder.output]
        check_scores(encoder, "logits", self.path, self.decoder.output)
        if encoder.ndim != 3 or encoder.shape[0] != 1:
            raise InputError(f"{self.path}: output {self.decoder.output!r} has shape {encoder.shape}; expected "
                             "[1, features, frames]")
        frame_seconds, valid = self._time_base(forward, encoder.shape[2])
        if self.decoder.lengths is not None:
            lengths = np.asarray(forward.outputs[self.decoder.lengths]).reshape(-1)
            if lengths.size != 1 or lengths.dtype.kind not in "iu":
                raise InputError(f"{self.path}: output {self.decoder.lengths!r} must hold one integer frame count, "
                                 f"got {lengths.dtype} of shape {lengths.shape}")
            valid = max(0, min(int(lengths[0]), encoder.shape[2]))
        if isinstance(decoding, BeamSearch):  # modified beam search (tinyasr.decoding.transducer_beam)
            hyp = self._beam_decoder(decoding).decode(encoder[0], valid)
            return hypothesis_result(self._transducer, hyp, encoder[0], self.decoder, frame_seconds=frame_seconds,
                                     duration=duration, speech=speech)
        return transducer_result(self._transducer, self.decoder, encoder[0], valid, frame_seconds=frame_seconds,
                                 duration=duration, speech=speech)

    def _decode_ctc(self, decoding: Decoding, scores: np.ndarray, **times) -> Result:
        """Greedy, or beam search with ``decoding`` (else the Recognizer's) by a BeamDecoder built once."""
        decoding = _checked_decoding(decoding) or self.decoding
        if decoding is None or isinstance(decoding, Greedy):
            return ctc_greedy(scores, self.decoder, **times)
        return self._beam_decoder(decoding).decode(scores, **times)

    def _beam_decoder(self, decoding: BeamSearch) -> BeamDecoder:
        beam = self._beam_decoders.get(decoding)
        if beam is None and self._transducer is not None:
            beam = self._beam_decoders[decoding] = TransducerBeamDecoder(
                self._transducer, decoding, token_pieces(self._transducer, self.decoder),
                words_complete=self.decoder.vocabulary_type == "words")
        if beam is None:
            if not self.decoder or self.decoder.type != "ctc":
                raise InputError(f"{self.path}: beam search needs a CTC model, but this model's decoder is "
                                 f"{self.decoder.type if self.decoder else 'missing'}")
            beam = self._beam_decoders[decoding] = BeamDecoder(decoding, self.decoder)
        return beam

    def with_decoding(self, decoding: Decoding) -> "Recognizer":
        """This Recognizer (the same loaded model) with ``decoding`` as its default; its LM is read now."""
        decoding = _checked_decoding(decoding)
        if decoding is None:
            return self
        view = copy.copy(self)
        view.decoding = None if isinstance(decoding, Greedy) else self._beam_decoder(decoding).options
        return view

    def _decoder_for(self, kind: str, call: str) -> DecoderSpec:
        if not self.decoder:
            raise InputError(
                f"{self.path}: the model has no decoder, so {call}() cannot interpret its outputs; "
                "use tinyasr.engine.offline.load_model(...).run for raw outputs"
            )
        actual = self.decoder.type
        if actual != kind:
            raise InputError(
                f"{self.path}: {call}() needs a {kind} model, but this model's decoder is {actual!r}; "
                f"use {DECODER_CALLS[actual]}()"
            )
        return self.decoder

    # -- one run ---------------------------------------------------------------

    def _load_samples(self, audio_input: AudioInput, sample_rate: Optional[int]) -> np.ndarray:
        if isinstance(audio_input, np.ndarray):
            if sample_rate is None:
                raise InputError("an audio array needs its sample_rate (e.g. transcribe(samples, sample_rate=16000))")
            return as_float32_mono(audio_input, sample_rate, self.sample_rate)
        if isinstance(audio_input, (bytes, bytearray, memoryview)):
            raise InputError(f"audio given as {len(audio_input)} bytes: pass a file path, or decoded samples with "
                             "their sample_rate (e.g. soundfile.read(io.BytesIO(data)))")
        if not isinstance(audio_input, (str, os.PathLike)):
            raise InputError(f"audio must be a file path or a numpy array of samples, got {type(audio_input).__name__}")
        samples, _ = load_audio(audio_input, sample_rate=self.sample_rate)
        return samples

    def _forward(self, audio_input: AudioInput, sample_rate: Optional[int]) -> _Forward:
        samples = self._load_samples(audio_input, sample_rate)
        duration = len(samples) / self.sample_rate
        if self.frontend is not None:
            features, valid = compute_features(samples, self.frontend)
            signal = features[np.newaxis].astype(self._signal.dtype, copy=False)
            steps, step_seconds = features.shape[1], self.frontend.hop_length / self.sample_rate
        else:
            signal = audio_tensor(samples, self._signal)
            valid = steps = len(samples)
            step_seconds = 1.0 / self.sample_rate
        inputs = {self._signal.name: signal}
        if self._sample_mask is not None:  # one utterance: every sample is valid
            inputs[self._sample_mask.name] = np.ones(signal.shape, self._sample_mask.dtype)
        if self._length is not None:
            inputs[self._length.name] = np.array([valid], dtype=self._length.dtype)
        lead = self.frontend.pad_samples / self.sample_rate if self.frontend is not None else 0.0
        return _Forward(self.model.run(inputs), duration, steps, valid, step_seconds, samples, lead)

    def _forward_features(self, features, length: Optional[int]) -> _Forward:
        """One run on given features [n_features, T] with ``length`` valid frames (InputError when they do not fit)."""
        if self.frontend is None:
            raise InputError(f"{self.path}: the model takes raw audio ({self._signal.describe()}), not features; "
                             "use transcribe()")
        features = np.asarray(features)
        n_features = self._signal.shape[1]
        if features.ndim != 2 or features.dtype.kind not in "fiu" or features.shape[1] < 1 or (
                isinstance(n_features, int) and features.shape[0] != n_features):
            raise InputError(f"features must be a numeric array [n_features, T] with n_features = {n_features} and "
                             f"T >= 1, got dtype {features.dtype} shape {features.shape}")
        frames = features.shape[1]
        valid = frames if length is None else length
        if isinstance(valid, (bool, np.bool_)) or not isinstance(valid, (int, np.integer)) or not 1 <= valid <= frames:
            raise InputError(f"length must be an integer from 1 to the {frames} feature frames, got {length!r}")
        inputs = {self._signal.name: features[np.newaxis].astype(self._signal.dtype, copy=False)}
        if self._length is not None:
            inputs[self._length.name] = np.array([valid], dtype=self._length.dtype)
        hop = self.frontend.hop_length / self.sample_rate
        return _Forward(self.model.run(inputs), int(valid) * hop, frames, int(valid), hop)

    def _output(self, forward: _Forward, decoder: DecoderSpec) -> np.ndarray:
        name = decoder.output  # one of the model's outputs: checked at load
        scores = forward.outputs[name]
        check_scores(scores, decoder.logits, self.path, name)
        if decoder.type != "classification" and np.ndim(scores) < 2:
            raise InputError(
                f"{self.path}: output {name!r} has shape {np.shape(scores)}; expected [1, frames, classes]"
            )
        return scores

    def _time_base(self, forward: _Forward, output_frames: int):
        """Seconds per output frame and the number of output frames that carry audio.

        The network's time stride is the ratio of input steps to output frames
        (see output_frame_seconds) unless the decoder states
        ``frame_seconds`` (useful for audio-input graphs, whose stride the
        sample count does not pin down exactly); output frames past
        ``ceil(valid input steps / stride)`` come from padding and are not decoded.
        """
        frame_seconds = self.decoder.frame_seconds or output_frame_seconds(
            forward.input_seconds, forward.input_frames, output_frames
        )
        stride = frame_seconds / forward.input_seconds
        valid = min(output_frames, math.ceil(forward.valid_input_frames / stride - 1e-9))
        return frame_seconds, valid


def _is_sample_mask(value) -> bool:
    """Hugging Face's ``attention_mask`` [batch, samples] of a raw-audio export (1: a valid sample)."""
    return value.name == "attention_mask" and len(value.shape) == 2 and np.dtype(value.dtype).kind in "biu"


def _reported(utterances: Iterator[Utterance], progress: Optional[Callable[[float], None]]):
    done = 0.0
    for utterance in utterances:
        if progress is not None:
            progress(utterance.end - done)
            done = utterance.end
        yield utterance


def _head(spec: Optional[DecoderSpec], head: Optional[str], path) -> Optional[DecoderSpec]:
    """The decoder a Recognizer uses: the model's, or with head="ctc" a hybrid transducer's CTC head."""
    if head is None or head == "transducer" and isinstance(spec, TransducerSpec):
        return spec
    if head not in HEADS:
        raise InputError(f"head must be one of {', '.join(HEADS)}, got {head!r}")
    if head == "ctc" and isinstance(spec, TransducerSpec) and spec.ctc is not None:
        return spec.ctc
    kind = spec.type if spec is not None else "no decoder"
    needed = "a hybrid transducer + CTC model" if head == "ctc" else "a transducer model"
    raise InputError(f"{path}: head={head!r} needs {needed}, but this model's decoder is {kind!r}"
                     + (" without a CTC head" if isinstance(spec, TransducerSpec) else ""))


def _checked_decoding(decoding: Decoding) -> Decoding:
    if decoding is not None and not isinstance(decoding, (Greedy, BeamSearch)):
        raise InputError(f"decoding must be tinyasr.Greedy() or tinyasr.BeamSearch(...), got {type(decoding).__name__}")
    return decoding


def transcribe_long(path, recognizer: Optional[Recognizer] = None, **options) -> Iterator[Utterance]:
    """``tinyasr.transcribe_long``: the utterances of a long file with their times, by
    tinyasr.pipeline.long_form.transcribe_utterances (``options``: vad, config, block_seconds); the
    recognizer defaults to the bundled model."""
    return transcribe_utterances(path, recognizer if recognizer is not None else Recognizer(), **options)
