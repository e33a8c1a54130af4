"""The small public API: ``Recognizer(model_path).transcribe(audio) -> Result``.

A Recognizer holds one loaded model and nothing that changes per call, so one
instance may be shared by many threads (the runtime keeps its buffer plans per
thread).  Each call: load or accept audio, resample to the model's rate, compute
features (or feed raw audio to a model whose graph starts from audio), run the
graph, decode as the manifest's ``decoder`` says.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Union

import numpy as np
import soundfile

from tinyasr.audio.io import as_float32_mono, load_audio
from tinyasr.audio.resample import MAX_SAMPLE_RATE
from tinyasr.decoding.classification import classify_clip, classify_frames
from tinyasr.decoding.ctc import VOCABULARY_TYPES, ctc_greedy
from tinyasr.decoding.results import Classification, FrameClassification, Result
from tinyasr.decoding.scores import SCORE_KINDS, output_frame_seconds
from tinyasr.engine.offline import load_model
from tinyasr.engine.threads import set_num_threads
from tinyasr.errors import InputError, ModelFileError, TinyASRError
from tinyasr.features.frontend import FrontendConfig, compute_features
from tinyasr.model_cache import resolve_model_path

BUNDLED_MODELS = Path(__file__).parent / "models"
DEFAULT_MODEL = "digits"
MODEL_SUFFIX = ".tasr"

AudioInput = Union[str, os.PathLike, np.ndarray]
# decoder type -> the manifest keys decoding needs, and the Recognizer call that decodes it
DECODER_KEYS = {"ctc": ("output", "blank", "vocabulary"), "classification": ("output", "labels"),
                "frame_classification": ("output", "labels")}
DECODER_CALLS = {"ctc": "transcribe", "classification": "classify", "frame_classification": "classify_frames"}


# ---------------------------------------------------------------------------
# The Recognizer

LONG_FILE_SECONDS = 120.0  # longer files are transcribed utterance by utterance (Recognizer.transcribe)


def _file_duration(audio_input) -> Optional[float]:
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


class Recognizer:
    """Speech recognition and audio classification with one .tasr model.

    ``model_path``: a path, a model name (bundled or in the cache, see
    :func:`resolve_model_path`) or None for the bundled digits model.
    ``num_threads``: Numba / BLAS threads (process-wide), None leaves them as they are.
    """

    def __init__(self, model_path: Union[str, os.PathLike, None] = None, *, num_threads: Optional[int] = None):
        if num_threads is not None:
            set_num_threads(num_threads)
        self.path = resolve_model_path(model_path)
        self.model = load_model(self.path)
        self.decoder = self._checked_decoder(self.model.decoder)
        try:
            self.frontend = FrontendConfig.from_dict(self.model.frontend) if self.model.frontend else None
        except TinyASRError as exc:
            raise ModelFileError(self.path, str(exc)) from None
        self._signal, self._length = self._split_inputs(self.model.inputs)
        self.sample_rate = self._sample_rate()

    def __repr__(self) -> str:
        kind = self.decoder["type"] if self.decoder else "no decoder"
        return f"Recognizer({str(self.path)!r}, {kind})"

    # -- public calls ------------------------------------------------------

    def stream(self, **options):
        """A new online stream on this model (own state; many may run at once): see tinyasr.pipeline.online.OnlineStream."""
        from tinyasr.pipeline.online import OnlineStream

        return OnlineStream(self, **options)

    def transcribe(self, audio_input: AudioInput, sample_rate: Optional[int] = None) -> Result:
        """Text, tokens and words with times of a file path or a sample array (then give ``sample_rate``).

        A file longer than LONG_FILE_SECONDS is read block by block and cut into utterances by voice
        activity (tinyasr.pipeline.long_form.transcribe_long, energy detector), so its memory does not grow with its
        length; the utterances' words are joined into one Result with times from the file's start.
        """
        duration = _file_duration(audio_input)
        if duration is not None and duration > LONG_FILE_SECONDS and (self.decoder or {}).get("type") == "ctc":
            from tinyasr.pipeline.long_form import join_utterances, transcribe_long

            return join_utterances(transcribe_long(audio_input, self), duration)
        decoder, forward, scores = self._scores("ctc", "transcribe", audio_input, sample_rate)
        frame_seconds, valid = self._time_base(forward, scores.shape[-2])
        return ctc_greedy(
            scores,
            vocabulary=decoder["vocabulary"],
            blank=int(decoder["blank"]),
            vocabulary_type=decoder.get("vocabulary_type", "chars"),
            kind=decoder.get("logits", "log_probs"),
            frame_seconds=frame_seconds,
            valid_frames=valid,
            duration=forward.duration,
            output=decoder["output"],
        )

    def classify(self, audio_input: AudioInput, sample_rate: Optional[int] = None, top_k: int = 5) -> Classification:
        """The ``top_k`` most probable labels of a clip, for a classification model."""
        decoder, forward, scores = self._scores("classification", "classify", audio_input, sample_rate)
        return classify_clip(
            scores,
            labels=decoder["labels"],
            kind=decoder.get("logits", "logits"),
            top_k=top_k,
            duration=forward.duration,
            output=decoder["output"],
        )

    def classify_frames(self, audio_input: AudioInput, sample_rate: Optional[int] = None) -> FrameClassification:
        """Per-frame labels and merged segments, for a frame classification model (e.g. frame VAD)."""
        decoder, forward, scores = self._scores("frame_classification", "classify_frames", audio_input, sample_rate)
        frame_seconds, valid = self._time_base(forward, scores.shape[-2])
        return classify_frames(
            scores,
            labels=decoder["labels"],
            kind=decoder.get("logits", "logits"),
            frame_seconds=frame_seconds,
            valid_frames=valid,
            duration=forward.duration,
            output=decoder["output"],
        )

    def _scores(self, kind: str, method: str, audio_input: AudioInput, sample_rate: Optional[int]):
        """(decoder entry, forward pass, the decoder's output) for a call that needs a ``kind`` decoder."""
        decoder = self._decoder_for(kind, method)
        forward = self._forward(audio_input, sample_rate)
        return decoder, forward, self._output(forward, decoder)

    # -- setup ---------------------------------------------------------------

    def _split_inputs(self, inputs: List) -> tuple:
        """The signal input (features or audio) and the optional length input ([batch] integers)."""
        lengths = [v for v in inputs if len(v.shape) == 1 and np.dtype(v.dtype).kind in "iu"]
        signals = [v for v in inputs if v not in lengths]
        if len(signals) != 1 or len(lengths) > 1:
            described = ", ".join(_format_value(v) for v in inputs)
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

    def _checked_decoder(self, decoder: Optional[dict]) -> Optional[dict]:
        """The manifest's decoder entry, refused early (naming the key) when it lacks what decoding needs."""
        if decoder is None:
            return None
        kind = decoder.get("type") if isinstance(decoder, dict) else None
        if kind not in DECODER_KEYS:
            raise ModelFileError(self.path, f"decoder type {kind!r} is not one of {', '.join(DECODER_KEYS)}")
        missing = [key for key in DECODER_KEYS[kind] if key not in decoder]
        if missing:
            raise ModelFileError(self.path, f"the {kind} decoder entry lacks {', '.join(map(repr, missing))}")
        problem = _decoder_problem(decoder)
        if problem:
            raise ModelFileError(self.path, f"the {kind} decoder entry: {problem}")
        outputs = [v.name for v in self.model.outputs]
        if decoder["output"] not in outputs:
            raise ModelFileError(self.path, f"decoder output {decoder['output']!r} is not among the model's "
                                            f"outputs {sorted(outputs)}")
        return decoder

    def _sample_rate(self) -> int:
        """The rate audio is resampled to: the frontend's, or for an audio-input graph the manifest's."""
        if self.frontend is not None:
            return int(self.frontend.sample_rate)
        rate = self.model.manifest.get("sample_rate") or (self.decoder or {}).get("sample_rate")
        if not rate and len(self._signal.shape) == 3 and self._signal.shape[1] != 1:
            raise ModelFileError(
                self.path, f"the model's input {_format_value(self._signal)} takes features, but the manifest has "
                "no front end to compute them; convert the model again with --config (NeMo exports) or --frontend-json"
            )
        if not rate:
            raise ModelFileError(
                self.path, "the model takes raw audio but its manifest gives no 'sample_rate' to resample to"
            )
        if not _is_int(rate) or not 0 < rate <= MAX_SAMPLE_RATE:
            raise ModelFileError(self.path, f"'sample_rate' must be an integer from 1 to {MAX_SAMPLE_RATE}, "
                                            f"got {rate!r}")
        return rate

    def _decoder_for(self, kind: str, call: str) -> dict:
        if not self.decoder:
            raise InputError(
                f"{self.path}: the model has no decoder, so {call}() cannot interpret its outputs; "
                "use tinyasr.engine.offline.load_model(...).run for raw outputs"
            )
        actual = self.decoder["type"]
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
        if not isinstance(audio_input, (str, bytes, os.PathLike)):
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
            signal = _audio_tensor(samples, self._signal)
            valid = steps = len(samples)
            step_seconds = 1.0 / self.sample_rate
        inputs = {self._signal.name: signal}
        if self._length is not None:
            inputs[self._length.name] = np.array([valid], dtype=self._length.dtype)
        return _Forward(self.model.run(inputs), duration, steps, valid, step_seconds)

    def _output(self, forward: _Forward, decoder: dict) -> np.ndarray:
        name = decoder["output"]  # one of the model's outputs: checked at load
        scores = forward.outputs[name]
        if decoder["type"] != "classification" and np.ndim(scores) < 2:
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
        frame_seconds = self.decoder.get("frame_seconds") or output_frame_seconds(
            forward.input_seconds, forward.input_frames, output_frames
        )
        stride = frame_seconds / forward.input_seconds
        valid = min(output_frames, math.ceil(forward.valid_input_frames / stride - 1e-9))
        return frame_seconds, valid


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _format_value(info) -> str:
    return f"{info.name!r} {info.dtype}{list(info.shape)}"


def _decoder_problem(decoder: dict) -> Optional[str]:
    """What is wrong with the values of a decoder entry whose keys are all there, or None."""
    def is_strings(value):
        return isinstance(value, list) and all(isinstance(x, str) for x in value)

    frame_seconds = decoder.get("frame_seconds")
    checks = [
        ("output", isinstance(decoder["output"], str), "a string (an output name)"),
        ("blank", _is_int(decoder.get("blank", 0)), "an integer"),
        ("vocabulary", is_strings(decoder.get("vocabulary", [])), "a list of strings"),
        ("labels", is_strings(decoder.get("labels", [])), "a list of strings"),
        ("logits", decoder.get("logits", "logits") in SCORE_KINDS,
         f"one of {', '.join(SCORE_KINDS)}"),
        ("vocabulary_type", decoder.get("vocabulary_type", "chars") in VOCABULARY_TYPES,
         f"one of {', '.join(VOCABULARY_TYPES)}"),
        ("frame_seconds", frame_seconds is None or (isinstance(frame_seconds, (int, float))
                                                    and not isinstance(frame_seconds, bool)
                                                    and 0 < frame_seconds < math.inf), "a positive number"),
    ]
    return next((f"{key!r} must be {expected}, got {str(decoder.get(key))[:80]!r}"
                 for key, ok, expected in checks if not ok), None)


def _audio_tensor(samples: np.ndarray, signal) -> np.ndarray:
    """Float samples in [-1, 1] shaped and typed for an audio-input graph ([T], [1, T] or [1, 1, T])."""
    dtype = np.dtype(signal.dtype)
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        samples = np.clip(np.round(samples * (info.max + 1.0)), info.min, info.max)
    return samples.astype(dtype).reshape((1,) * (len(signal.shape) - 1) + (-1,))
