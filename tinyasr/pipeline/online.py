"""Online recognition: feed audio as it arrives, read partial text, detect endpoints.

    stream = OnlineStream(Recognizer())          # or a Model, or a model path
    for chunk in microphone_chunks():
        stream.accept_waveform(chunk, 16000)
        print(stream.partial, end="\\r")
        if stream.is_endpoint:
            print(stream.finalize().text)        # and the stream is ready for the next utterance

The pipeline is the offline one made stateful: StreamResampler -> StreamingFeatures
(tinyasr/features/streaming.py) -> GraphStream (tinyasr/engine/streaming.py, every frame
computed once) -> CTC decoding of the frames so far: greedy, or prefix beam search (with an LM and hotwords)
carried on frame by frame, the partial text its best prefix.  A model whose
front end does not normalise over the utterance gives exactly the offline
transcript; the algorithmic latency is ``OnlineStream.latency`` (the graph's
right receptive field plus the STFT's half window, plus the input frames a model
that looks ahead lets wait so that its graph runs on several frames per call).  Many streams may share one
model across threads: the plan is immutable and each stream owns its state.
"""

from __future__ import annotations

import functools
import math
import os
import threading
import weakref
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple, Union

import numpy as np

from tinyasr.audio.io import as_float32_mono
from tinyasr.audio.resample import StreamResampler
from tinyasr.decoding.beam import BeamDecoder, token_piece
from tinyasr.decoding.ctc import ctc_frames, ctc_greedy
from tinyasr.decoding.ctc_partial import GreedyPartial
from tinyasr.decoding.results import Result
from tinyasr.decoding.scores import check_scores
from tinyasr.decoding.specs import BeamSearch, CTCSpec, DecoderSpec, Greedy, TransducerSpec, decoder_spec
from tinyasr.decoding.transducer import GreedySearch
from tinyasr.decoding.transducer_decoder import search_result, transducer_of
from tinyasr.engine.offline import Model, load_model
from tinyasr.engine.streaming import GraphStream, StreamPlan
from tinyasr.errors import InputError, ModelFileError
from tinyasr.features.frontend import FrontendConfig, valid_frame_count
from tinyasr.features.streaming import (
    FixedNormalizer,
    RunningNormalizer,
    StreamingFeatures,
)
from tinyasr.model_cache import resolve_model_path
from tinyasr.pipeline.model_input import audio_tensor, frontend_of, sample_rate_of
from tinyasr.pipeline.vad import SpeechGate

NORMALIZATION_MODES = ("auto", "fixed", "running")


# ---------------------------------------------------------------------------
# Endpointing


@dataclass(frozen=True)
class EndpointRule:
    """Fires when all hold: speech was decoded (if ``must_contain_nonsilence``), the utterance ends in at
    least ``min_trailing_silence`` s of CTC blanks, and it lasts at least ``min_utterance_length`` s."""

    must_contain_nonsilence: bool
    min_trailing_silence: float
    min_utterance_length: float

    def fires(self, has_speech: bool, trailing_silence: float, utterance_length: float) -> bool:
        return ((has_speech or not self.must_contain_nonsilence) and trailing_silence >= self.min_trailing_silence
                and utterance_length >= self.min_utterance_length)


@dataclass(frozen=True)
class EndpointConfig:
    """sherpa-onnx's three default rules: silence with no speech, silence after speech, maximum length."""

    rules: Tuple[EndpointRule, ...] = (
        EndpointRule(False, 2.4, 0.0),
        EndpointRule(True, 1.2, 0.0),
        EndpointRule(False, 0.0, 20.0),
    )

    @staticmethod
    def simple(silence_after_speech: float = 1.2, silence_only: float = 2.4, max_utterance: float = 20.0):
        return EndpointConfig((EndpointRule(False, silence_only, 0.0), EndpointRule(True, silence_after_speech, 0.0),
                               EndpointRule(False, 0.0, max_utterance)))


# ---------------------------------------------------------------------------
# Shared per-model plans

_PLANS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
_PLANS_LOCK = threading.Lock()


# A model that looks ahead anyway lets its graph wait for a batch of input frames: each weight read from memory then
# serves the whole batch.  QuartzNet 5x5 (14.7 s of look-ahead, 7.4 MB of weights) at 80 ms chunks, end to end
# against offline: batches of 0.32 s 1.48x, 0.64 s 1.34x, 1.28 s 1.26-1.34x, the partials 1 s later in 16 and the
# largest chunk ~9 ms (AMD EPYC Zen 1, benchmarks/bench_latency.py).
BATCH_SHARE = 1 / 8  # of a stream's latency that its graph runs may wait for input frames ...
BATCH_SECONDS = 1.28  # ... up to this


def stream_plan(model) -> StreamPlan:
    """The model's StreamPlan, built on first use and shared by all its streams."""
    with _PLANS_LOCK:
        plan = _PLANS.get(model)
        if plan is None:
            plan = _PLANS[model] = StreamPlan.from_model(model)
        return plan


def _as_model(recognizer_or_model):
    """A runtime Model from a Recognizer, a Model, or a model path / name."""
    model = getattr(recognizer_or_model, "model", recognizer_or_model)
    if isinstance(model, Model):
        return model
    if isinstance(model, (str, os.PathLike)):
        return load_model(resolve_model_path(model))
    raise InputError(f"OnlineStream needs a Recognizer, a Model or a model path, got {type(model).__name__}")


def _normalizer(mode, config: Optional[FrontendConfig], manifest: dict, label: str):
    """The normaliser for a front end that normalises over the utterance (None when it does not)."""
    if config is None or config.normalize is None:
        return None
    if not isinstance(mode, str):
        return mode  # a FixedNormalizer / RunningNormalizer given by the caller
    if mode not in NORMALIZATION_MODES:
        raise InputError(f"normalization {mode!r} is not one of {', '.join(NORMALIZATION_MODES)}")
    stats = manifest.get("streaming") or {}
    fixed = None
    if "feature_mean" in stats and "feature_std" in stats:
        fixed = FixedNormalizer(stats["feature_mean"], stats["feature_std"])
    if mode == "fixed" and fixed is None:
        raise ModelFileError(label, "normalization='fixed' needs 'streaming': {'feature_mean', 'feature_std'} "
                             "in the manifest (see tinyasr.features.streaming.estimate_feature_stats)")
    if mode == "fixed" or (mode == "auto" and fixed is not None):
        return fixed
    if config.normalize != "per_feature":
        raise InputError(f"{label}: running statistics need normalize='per_feature', not {config.normalize!r}; "
                         "give fixed statistics in the manifest")
    return RunningNormalizer(prior=fixed)


def _beam_decoder(recognizer_or_model, decoding, spec: CTCSpec) -> Optional[BeamDecoder]:
    """The BeamDecoder a stream searches with, or None for greedy: ``decoding``, else the Recognizer's; a
    Recognizer's decoders are shared (its LM is read once for all its streams)."""
    if decoding is None:
        decoding = getattr(recognizer_or_model, "decoding", None)
    if decoding is None or isinstance(decoding, Greedy):
        return None
    if not isinstance(decoding, BeamSearch):
        raise InputError(f"decoding must be tinyasr.Greedy() or tinyasr.BeamSearch(...), got {type(decoding).__name__}")
    shared = getattr(recognizer_or_model, "_beam_decoder", None)
    return shared(decoding) if shared is not None else BeamDecoder(decoding, spec)


@functools.cache
def _moved_axes(ndim: int, source: int, destination: int) -> Tuple[int, ...]:
    """The transpose that np.moveaxis(array, source, destination) makes of an ``ndim``-axis array.  A chunk's
    outputs are moved with it: np.moveaxis, Python around two C calls, took ~37 us a chunk after the graph had
    pushed its code and data out of the caches (causal QuartzNet 5x5 at 80 ms, AMD EPYC Zen 1)."""
    order = [axis for axis in range(ndim) if axis != source % ndim]
    order.insert(destination % ndim, source % ndim)
    return tuple(order)


# ---------------------------------------------------------------------------
# The stream


class OnlineStream:
    """One audio stream on a shared model; see the module docstring.

    ``normalization`` (models trained with per-utterance feature normalisation
    only): "fixed" = the manifest's ``streaming`` statistics (feature_mean,
    feature_std), "running" = statistics of the utterance so far (starting from
    the manifest's when present), "auto" = fixed when the manifest has them,
    else running; or a normaliser object (one per stream: it keeps state).
    Measured on the digits model (docs/streaming.md): fixed matches offline
    WER, running loses a few points.  Result times are seconds from the start
    of the utterance; ``utterance_start`` says where it began in the stream.

    ``decoding``: Greedy() or BeamSearch(...) as for Recognizer.transcribe; default: the Recognizer's own
    (greedy for a Model or a path).  With beam search the search goes on frame by frame as audio arrives,
    the partial result is its best prefix so far, and the final result is what Recognizer.transcribe's
    beam search gives on the same frames.  ``hotwords``: [(phrase, boost), ...] added to the beam search's
    own for this stream only (a server session's; the LM is shared, not read again).
    """

    def __init__(self, recognizer_or_model, *, endpoint: EndpointConfig = EndpointConfig(),
                 normalization: Union[str, object] = "auto", decoding: Union[Greedy, BeamSearch, None] = None,
                 hotwords: Sequence[Tuple[str, float]] = ()):
        self.model = _as_model(recognizer_or_model)
        label = self._label = self.model.label  # names the model in errors, at load and per chunk
        given = getattr(recognizer_or_model, "decoder", None)  # a Recognizer's (a hybrid's CTC head if it chose it)
        self.decoder = given if isinstance(given, DecoderSpec) else decoder_spec(self.model.decoder, label)
        self._transducer = None  # a transducer's prediction network and joint: greedy search carried across chunks
        if isinstance(self.decoder, TransducerSpec):
            encoder = self.decoder.output_of(self.model.outputs, label)
            self._transducer = getattr(recognizer_or_model, "_transducer", None) or transducer_of(
                self.decoder, self.model.decoder_tensors, encoder.shape[1] if len(encoder.shape) == 3 else None, label)
            if isinstance(decoding or getattr(recognizer_or_model, "decoding", None), BeamSearch):
                raise InputError(f"{label}: beam search over a streamed transducer is not available; use greedy")
        elif not isinstance(self.decoder, CTCSpec):
            kind = self.decoder.type if self.decoder else None
            raise InputError(f"{label}: streaming recognition needs a CTC or transducer model; this model's decoder "
                             f"is {kind!r}")
        self.decoder.output_of(self.model.outputs, label)
        self._beam = None if self._transducer else _beam_decoder(recognizer_or_model, decoding, self.decoder)
        if hotwords:
            if self._beam is None:
                raise InputError("hotwords need beam search: give decoding=BeamSearch(...) (tinyasr serve --beam N)")
            self._beam = self._beam.with_hotwords(hotwords)
        self._pieces = None  # each class's text as the beam search reads it (known from the first frames)
        self.plan = stream_plan(self.model)
        self.endpoint = endpoint
        self.frontend = frontend_of(self.model, label)
        self.sample_rate = sample_rate_of(self.model, self.frontend, self.decoder, self.plan.input, label)
        if self.frontend is not None:
            self.normalizer = _normalizer(normalization, self.frontend, self.model.manifest, label)
            self._features = StreamingFeatures(self.frontend, self.normalizer)
            input_seconds = self.frontend.hop_length / self.sample_rate
            lookahead = self.frontend.n_fft // 2
            self._lead = self.frontend.pad_samples / self.sample_rate  # silence the front end puts before the audio
        else:
            self._features, self.normalizer = None, None
            input_seconds, lookahead, self._lead = 1.0 / self.sample_rate, 0, 0.0
        field = self.plan.receptive_field
        self.frame_seconds = self.decoder.frame_seconds or input_seconds * field.stride
        self._input_seconds = input_seconds
        self.latency = field.right * input_seconds + lookahead / self.sample_rate
        # A model that looks ahead anyway runs its graph on batches of input frames: up to BATCH_SHARE of its
        # latency, at most BATCH_SECONDS (QuartzNet 5x5: 1.28 s, 16 chunks of 80 ms; the digits model: 0.18 s)
        # and the partials' delay grows by the batch; a causal model (latency a few frames) computes every chunk.
        self._batch_inputs = max(1, int(min(BATCH_SECONDS, BATCH_SHARE * self.latency) / input_seconds))
        self.latency += (self._batch_inputs - 1) * input_seconds
        self._input_hop = self.frontend.hop_length if self.frontend is not None else 1  # samples per input frame
        self._output_axis = dict(self.plan.outputs)[self.decoder.output].axis
        self._graph = GraphStream(self.plan)
        self._resampler: Optional[StreamResampler] = None
        self._input_rate: Optional[int] = None
        self._gate = SpeechGate(self.sample_rate)  # tokens count only inside speech, as in Recognizer.transcribe
        self.samples_seen = 0  # at the model's rate, whole stream
        self.utterance_start = 0.0  # seconds in the stream
        self._new_utterance()

    # -- input ---------------------------------------------------------------------

    def accept_waveform(self, samples, sample_rate: int) -> None:
        """Append audio: [N] or [N, channels], float in [-1, 1] or integer PCM, at ``sample_rate`` Hz."""
        array = np.asarray(samples)
        if array.size == 0:
            return
        mono = as_float32_mono(array, sample_rate)  # checks the rate and the samples
        if self._input_rate is None:
            self._input_rate = int(sample_rate)
            self._resampler = StreamResampler(self._input_rate, self.sample_rate)
        elif int(sample_rate) != self._input_rate:
            raise InputError(f"sample rate changed from {self._input_rate} to {sample_rate} Hz within one stream")
        self._feed(mono)

    def _feed(self, samples: np.ndarray) -> None:
        """Hold ``samples`` (at the input's rate) until the samples they resample to may complete the graph's next
        batch of input frames, then run the resampler, the gate, the front end and the graph on everything held.

        Between the graph's runs nothing reads what those stages computed, so they run when the graph does, on
        the same samples, and give the same samples, frames and decisions (each is exact whatever the pieces:
        tests/test_vad.py, tests/test_streaming.py).  Their cost is mostly per call: QuartzNet 5x5 (0.32 s
        batches) at 80 ms chunks, the gate and the front end 83 us a chunk fed chunk by chunk, 37 us fed four
        chunks at a time (Zen 4); the digits model's resampler (16 -> 8 kHz) ~22 us a chunk on Zen 1."""
        if samples.size == 0:
            return
        count = self._resampler.announce(samples.size)  # the samples these resample to
        self.samples_seen += count
        self._utterance_samples += count
        self._held.append(samples)
        self._held_samples += count
        # m more input frames need more than (m - 1) hops of new samples: flushing at that point is never later
        # than the chunk whose frames would have completed the batch
        missing = max(1, self._batch_inputs - self._waiting_inputs)
        if self._held_samples > (missing - 1) * self._input_hop:
            self._flush()

    def _flush(self) -> None:
        """The held samples through the resampler, the gate and the front end into the graph."""
        if not self._held:
            return
        held = self._held[0] if len(self._held) == 1 else np.concatenate(self._held)
        self._held, self._held_samples = [], 0
        self._process(self._resampler.accept(held))

    def _process(self, samples: np.ndarray) -> None:
        """Samples at the model's rate through the gate and the front end into the graph."""
        if not samples.size:
            return
        self._gate.accept(samples)
        if self._features is not None:
            self._run_graph(self._features.accept(samples)[np.newaxis])
        else:  # a graph on raw audio, fed as the Recognizer feeds it
            self._run_graph(audio_tensor(samples, self.plan.input))

    def _run_graph(self, signal: np.ndarray, final: bool = False) -> None:
        """Feed the graph once ``_batch_inputs`` input frames are waiting, and at the end."""
        if signal is not None and signal.shape[-1]:
            self._waiting.append(signal)
            self._waiting_inputs += signal.shape[-1]
        if self._waiting and (final or self._waiting_inputs >= self._batch_inputs):
            batch = self._waiting[0] if len(self._waiting) == 1 else np.concatenate(self._waiting, axis=-1)
            self._waiting, self._waiting_inputs = [], 0
            self._collect(self._graph.accept(batch))
        if final:
            self._collect(self._graph.finish())

    def _collect(self, outputs) -> None:
        if self._transducer is not None:
            return self._collect_encoder(outputs)
        scores = outputs.get(self.decoder.output)
        if scores is None:
            return
        check_scores(scores, self.decoder.logits, self._label, self.decoder.output)
        scores = scores.transpose(_moved_axes(scores.ndim, self._output_axis, -2))
        # kept as the model gave them, [frames, classes]: decoded (the partial, the final result) in float64
        scores = np.array(scores.reshape(-1, scores.shape[-1]))
        self._scores.append(scores)
        if self._greedy_partial is not None:
            last_token = self._greedy_partial.extend(scores)
        else:
            tokens = (scores.argmax(axis=1) != self.decoder.blank).nonzero()[0]  # log-softmax keeps the best
            last_token = self._frames + int(tokens[-1]) if tokens.size else -1
        if last_token >= 0:
            self._has_speech = True
            self._last_speech_frame = last_token
        self._frames += len(scores)
        self._partial = None

    def _collect_encoder(self, outputs) -> None:
        """A transducer's encoder frames: the greedy search goes on over them (hypothesis, prediction-network
        states and the next frame to try carried from chunk to chunk); its tokens mark the endpoint's speech."""
        frames = outputs.get(self.decoder.output)
        if frames is None:
            return
        check_scores(frames, "logits", self._label, self.decoder.output)
        frames = frames.transpose(_moved_axes(frames.ndim, self._output_axis, 0))
        frames = np.ascontiguousarray(frames.reshape(frames.shape[0], -1), np.float32)  # [t, D] (batch 1)
        self._encoder_frames.append(frames)
        emitted = len(self._greedy.hyp.tokens)
        self._greedy.advance(frames)
        if len(self._greedy.hyp.tokens) > emitted:
            self._has_speech = True
            self._last_speech_frame = self._greedy.hyp.frames[-1]
        self._frames += frames.shape[0]
        self._partial = None

    def _transducer_decode(self, valid_frames: Optional[int], *, frame_seconds: float, duration: float,
                           speech) -> Result:
        if valid_frames is not None and valid_frames < self._greedy.frames_seen:  # finalize: padding frames it saw
            self._greedy = GreedySearch(self._transducer, self.decoder.max_symbols)
            self._greedy.advance(np.concatenate(self._encoder_frames)[:valid_frames])
        return search_result(self._greedy, self.decoder, frame_seconds=frame_seconds, duration=duration,
                             speech=speech)

    # -- results ---------------------------------------------------------------------

    def _decode(self, valid_frames: Optional[int] = None, final: bool = False) -> Result:
        seconds = self._utterance_samples / self.sample_rate
        if not self._scores and not self._encoder_frames:
            return Result("", (), (), seconds)
        lead = self._lead  # as Recognizer.transcribe: decoded with the front end's silence, reported without it
        times = dict(frame_seconds=self.frame_seconds, valid_frames=valid_frames, duration=seconds + 2 * lead,
                     speech=self._gate.speech(self.utterance_start, lead))
        if self._transducer is not None:
            result = self._transducer_decode(**times)
        elif self._beam is None:
            result = ctc_greedy(np.concatenate(self._scores), self.decoder, **times)
        else:
            result = self._beam_decode(final, **times)
        return result.shifted(-lead, seconds) if lead else result

    def _beam_decode(self, final: bool, *, frame_seconds: float, valid_frames: Optional[int], duration: float,
                     speech) -> Result:
        """The search carried on over the frames that arrived since the last call: its best prefix, or with
        ``final`` its best final hypothesis (BeamDecoder.decode's result on the same frames)."""
        log_probs, texts, wordpiece, duration = ctc_frames(np.concatenate(self._scores), self.decoder,
                                                           frame_seconds, valid_frames, duration)
        if self._pieces is None:
            self._pieces = [token_piece(t, self.decoder.vocabulary_type, wordpiece) for t in texts]
        if self._search is None or self._search.frames > len(log_probs):  # finalize cut padding frames it saw
            self._search = self._beam.start(self.decoder.blank, self._pieces)
        self._search.advance(log_probs[self._search.frames:])
        if final:
            ids = self._search.finish(log_probs)[0][1].tokens() if len(log_probs) else []
        else:
            ids = self._search.best().tokens()
        return self._beam.result(ids, log_probs, texts, wordpiece, frame_seconds=frame_seconds, duration=duration,
                                 speech=speech)

    @property
    def partial_result(self) -> Result:
        """The current utterance decoded so far (times from the utterance start).  Greedy decoding carries on
        from the last partial (GreedyPartial: time linear in the audio); it equals ``_decode()``."""
        if self._partial is None:
            if self._greedy_partial is not None and self._scores:
                since, lead = self.utterance_start, self._lead
                held = self._gate.held_through(since)
                self._partial = self._greedy_partial.result(
                    self._utterance_samples / self.sample_rate, self._gate.speech(since, lead),
                    self._gate.undecided_from(since) + lead, None if held is None else held + lead)
            else:
                self._partial = self._decode()
        return self._partial

    @property
    def partial(self) -> str:
        """The text of the current utterance so far."""
        return self.partial_result.text

    @property
    def trailing_silence(self) -> float:
        """Seconds of decoded frames since the last non-blank one (or since the utterance start)."""
        return (self._frames - self._last_speech_frame - 1) * self.frame_seconds

    @property
    def is_endpoint(self) -> bool:
        """True when an endpoint rule fires for the current utterance."""
        length = self._frames * self.frame_seconds - self._lead
        return any(rule.fires(self._has_speech, self.trailing_silence, length) for rule in self.endpoint.rules)

    def finalize(self) -> Result:
        """End the utterance: flush every stage, decode as offline, and start the next utterance."""
        self._flush()
        if self._resampler is not None:
            tail = self._resampler.finish()  # the samples the filter's right half still owed
            self.samples_seen += tail.size
            self._utterance_samples += tail.size
            self._process(tail)
        if self._features is not None:
            if not self._utterance_samples or valid_frame_count(self._utterance_samples, self.frontend) < 1:
                self._utterance_samples = 0
            else:
                self._run_graph(self._features.finish()[np.newaxis], final=True)
            valid_inputs = valid_frame_count(self._utterance_samples, self.frontend)
        else:
            self._run_graph(None, final=self._utterance_samples > 0)
            valid_inputs = self._utterance_samples
        stride = self.frame_seconds / self._input_seconds
        result = self._decode(valid_frames=math.ceil(valid_inputs / stride - 1e-9), final=True)
        self.utterance_start = self.samples_seen / self.sample_rate
        self._gate.forget(self.utterance_start)
        self._new_utterance()
        return result

    def _new_utterance(self) -> None:
        self._graph.reset()
        self._waiting, self._waiting_inputs = [], 0  # input frames the graph has not been given yet
        self._held, self._held_samples = [], 0  # input not yet resampled (_feed) and the samples it resamples to
        if self._features is not None:
            self._features.reset()
        self._scores = []  # this utterance's output frames as the model gave them
        self._encoder_frames = []  # a transducer's, this utterance's
        self._greedy = GreedySearch(self._transducer, self.decoder.max_symbols) if self._transducer else None
        self._search = None  # the beam search over this utterance's frames (beam decoding only)
        self._greedy_partial = (GreedyPartial(self.decoder, self.frame_seconds, self._lead)
                                if self._beam is None and self._transducer is None else None)
        self._frames = 0
        self._last_speech_frame = -1
        self._has_speech = False
        self._partial: Optional[Result] = None
        self._utterance_samples = 0
