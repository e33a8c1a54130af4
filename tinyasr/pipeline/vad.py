"""Voice activity detection: split long or live audio into utterances, then transcribe each.

Three detectors give a speech probability per 20 ms frame from audio fed in pieces:

* :class:`MarbleNetVAD`: a converted frame-VAD model (NVIDIA's Frame-VAD MarbleNet:
  int16 audio in, ``score_active`` per 20 ms out).  Its graph removes the mean of
  the whole input, so it cannot run frame by frame; it runs on windows of a few
  seconds with context on both sides (``context`` seconds of extra latency).
* :class:`SileroVAD`: Silero VAD v5 converted from its ONNX (``--sample-rate 16000``), 32 ms chunks with
  the LSTM state carried, spread onto the 20 ms frames.
* :class:`EnergyVAD`: frame energy against an adaptive noise floor; no model needed.

:class:`Segmenter` turns probabilities into utterances with hysteresis
(``VADConfig``), and tinyasr.pipeline.long_form runs the whole chain over a file read
block by block, so memory stays bounded whatever the file's length.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import List, Optional, Tuple

import numpy as np

from tinyasr.decoding.confidence import Speech
from tinyasr.decoding.results import Result
from tinyasr.decoding.specs import decoder_spec
from tinyasr.engine.offline import Model, load_model
from tinyasr.errors import InputError
from tinyasr.kernels.energy import HELD, ORDERED, energy_frames, release_frames, tonal_spans, windowed_spans
from tinyasr.kernels.fft import power_spectra
from tinyasr.pipeline.model_input import audio_tensor, sample_rate_of

FRAME_SECONDS = 0.02  # both detectors decide per 20 ms
MARBLENET_SAMPLE_RATE = 16000  # Frame-VAD MarbleNet's rate, for a converted file that does not state one


@dataclass(frozen=True)
class VADConfig:
    """Hysteresis: a segment opens after ``min_speech`` s of frames with probability >= ``threshold``, closes
    after ``min_silence`` s below it, is widened by ``speech_pad`` s on both sides and cut at ``max_segment`` s.

    Speech that goes on past ``max_segment`` (no pause long enough to close it) goes on in a new segment that
    starts ``cut_overlap`` s before the cut (at most half a segment), so a word at the cut is heard whole by one
    of the two; a long file's transcript keeps each word of the overlap once
    (tinyasr.pipeline.long_form.join_utterances).  The cap is what bounds a long file's memory for any model,
    a Conformer's attention (length squared) included."""

    threshold: float = 0.5
    min_speech: float = 0.06  # 3 frames: a quiet, tightly cut "six" (FSDD 6_theo_0) is 4 frames of voice
    min_silence: float = 0.5
    speech_pad: float = 0.2
    max_segment: float = 20.0
    cut_overlap: float = 1.0


@dataclass(frozen=True)
class Utterance:
    """One segment of a long recording: ``start`` / ``end`` in seconds from the file start; result times
    are seconds from ``start``."""

    start: float
    end: float
    result: Result


# ---------------------------------------------------------------------------
# Detectors


class EnergyVAD:
    """Speech probability per 20 ms frame from its energy in dB over the noise floor.

    The floor is the ``floor_percentile`` of the frame levels of the last
    ``floor_seconds`` (a quiet stretch, or the gaps between words, sets it); a
    frame is speech when it is ``snr_db`` above the floor and louder than
    ``min_db`` dBFS (the logistic ramp is 2 dB wide).  Before the stream has
    filled that window, ``prior_frames`` frames at ``prior_db`` stand for the
    quiet it has not heard: a file cut tight around a word (FSDD) starts at
    speech level and would otherwise set the floor itself, while a steady sound
    from the first sample outweighs the prior within ~0.4 s.  A frame inside a
    100 ms span that puts >= ``tone_share`` of its power in 5 adjacent FFT bins
    (about 50 Hz) is a steady tone, never speech: measured, such spans of the
    FSDD and shared English clips' speech reach 0.992 at most, pure tones 0.9995
    at least.  A span whose power is provably spread too wide for that (three
    autocorrelations: tinyasr.kernels.energy.broadband_spans, 99 % of speech's
    spans) skips the FFT.  Judging a frame needs the spans that start at it, so its
    probability comes 4 frames (80 ms) after it, the last ones from finish().
    """

    TONE_FRAMES = 5  # the tone check looks at the last 100 ms
    TONE_BINS = 5
    TONE_BATCH = 32  # spans per FFT batch

    def __init__(self, sample_rate: int = 16000, snr_db: float = 6.0, min_db: float = -50.0,
                 floor_seconds: float = 3.0, floor_percentile: float = 10.0, prior_db: float = -60.0,
                 prior_frames: int = 3, tone_share: float = 0.995):
        self.sample_rate = int(sample_rate)
        self.frame = int(round(FRAME_SECONDS * self.sample_rate))
        self.snr_db, self.min_db, self.percentile = snr_db, min_db, floor_percentile
        self.prior_db, self.prior_frames, self.tone_share = prior_db, prior_frames, tone_share
        self.floor_frames = max(1, int(floor_seconds / FRAME_SECONDS))
        self._window = np.hanning(self.TONE_FRAMES * self.frame).astype(np.float32)  # as the audio
        self.reset()

    def reset(self) -> None:
        self._rest = np.zeros(self.frame, np.float32)  # an unfinished frame's samples (counts[REST] of them)
        self._tail = np.zeros((self.TONE_FRAMES - 1) * self.frame, np.float32)  # the samples before the next frame
        # levels of the last floor_frames - 1 frames: before the stream has filled them, empty slots (NaN), then
        # the prior's (the latest prior_frames of them); and those levels sorted, NaNs left out
        prior = min(self.prior_frames, self.floor_frames - 1)
        self._history = np.concatenate([np.full(self.floor_frames - 1 - prior, np.nan), np.full(prior, self.prior_db)])
        self._sorted = np.full(self.floor_frames, self.prior_db)
        self._held = np.zeros(self.TONE_FRAMES - 1)  # probabilities of the last frames, not yet judged for tone
        self._held_tonal = np.zeros(self.TONE_FRAMES - 1, bool)  # whether the spans ending at those frames are tonal
        self._counts = np.zeros(3, np.int64)  # energy.REST, ORDERED, HELD
        self._counts[ORDERED] = prior

    def accept(self, samples: np.ndarray) -> np.ndarray:
        """Probabilities of the frames completed by ``samples`` (float at sample_rate).  Spans ending in a loud
        frame (>= min_db) are checked for a tone: the frames of any span that could matter are covered by one of
        those.  A span's FFT is taken only where its power is not proven too spread for a tone (speech: ~1 %)."""
        x = np.asarray(samples, np.float32).reshape(-1)
        probs, tonal, unclear, audio = energy_frames(
            x, self._rest, self._tail, self._history, self._sorted, self._held, self._held_tonal, self._counts,
            self.percentile, self.snr_db, self.min_db, self._window, self.TONE_BINS, self.tone_share, self.TONE_BATCH)
        held = probs.size - (audio.size - self._tail.size) // self.frame  # frames before the new ones
        for first in range(0, unclear.size, self.TONE_BATCH):  # in batches: a long block's spectra stay small
            rows = unclear[first:first + self.TONE_BATCH]
            spans = windowed_spans(audio, rows, self.frame, self._window)
            tonal[held + rows] = tonal_spans(power_spectra(spans), self.TONE_BINS, self.tone_share)
        return release_frames(probs, tonal, self._held, self._held_tonal, self._counts)

    def finish(self) -> np.ndarray:
        """The held frames' probabilities; a partial frame is dropped."""
        held, after = self._counts[HELD], self.TONE_FRAMES - 1  # no span ends after the last frame
        probs = release_frames(np.concatenate([self._held[:held], np.zeros(after)]),
                               np.concatenate([self._held_tonal[:held], np.zeros(after, bool)]),
                               self._held, self._held_tonal, self._counts)
        self.reset()
        return probs


class MarbleNetVAD:
    """A converted frame-VAD .tasr (int16 [1, 1, N] audio in, ``score_active`` [1, frames, 1] out), run on
    windows of ``window`` s with ``context`` s of audio on each side."""

    def __init__(self, model, window: float = 2.0, context: float = 0.5, output: str = "score_active"):
        self.model = model if isinstance(model, Model) else load_model(model)
        (signal,) = self.model.inputs
        names = [v.name for v in self.model.outputs]
        if output not in names or np.dtype(signal.dtype) != np.int16 or len(signal.shape) != 3:
            raise InputError(f"{self.model.label}: not a frame VAD like Frame-VAD MarbleNet (int16 [1, 1, N] "
                             f"audio in, {output!r} out); inputs {[v.name for v in self.model.inputs]}, "
                             f"outputs {names}")
        label = self.model.label
        frontend = None  # the graph takes the audio itself (checked above)
        self.sample_rate = sample_rate_of(self.model, frontend, decoder_spec(self.model.decoder, label), signal, label,
                                          default=MARBLENET_SAMPLE_RATE)
        self.frame = int(round(FRAME_SECONDS * self.sample_rate))
        self.window = int(window / FRAME_SECONDS) * self.frame
        self.context = int(context / FRAME_SECONDS) * self.frame
        self.output = output
        self.reset()

    def reset(self) -> None:
        self._buffer = np.zeros(0, np.float32)
        self._buffer_start = 0  # sample index of _buffer[0]
        self._done = 0  # frames emitted

    def _scores(self, stop: int, final: bool) -> np.ndarray:
        """Probabilities of frames [done, stop) from the buffered audio (with its context)."""
        begin = self._done * self.frame
        lo = max(begin - self.context, self._buffer_start)
        chunk = self._buffer[lo - self._buffer_start:]
        if not final:
            chunk = chunk[:stop * self.frame + self.context - lo]
        signal = self.model.inputs[0]
        scores = self.model.run({signal.name: audio_tensor(chunk, signal)})[self.output].reshape(-1)
        first = (begin - lo) // self.frame
        probs = scores[first:first + stop - self._done]
        self._done = stop
        keep = max(self._buffer_start, self._done * self.frame - self.context)
        self._buffer = self._buffer[keep - self._buffer_start:]
        self._buffer_start = keep
        return probs.astype(np.float64)

    def accept(self, samples: np.ndarray) -> np.ndarray:
        self._buffer = np.concatenate([self._buffer, np.asarray(samples, np.float32)])
        end = self._buffer_start + self._buffer.size
        ready = (end - self.context) // self.frame  # frames with their right context in
        if ready - self._done < self.window // self.frame:
            return np.zeros(0)
        return self._scores(ready, final=False)

    def finish(self) -> np.ndarray:
        end = self._buffer_start + self._buffer.size
        probs = self._scores(end // self.frame, final=True) if end // self.frame > self._done else np.zeros(0)
        self.reset()
        return probs


class SileroVAD:
    """Silero VAD (v5, its ONNX converted with ``--sample-rate 16000`` or 8000: float ``input`` [1, N] and LSTM
    ``state`` [2, 1, 128] in, ``output`` [1, 1] and ``stateN`` out), run as its own wrapper runs it: chunks of
    512 samples (256 at 8 kHz), each with the 64 (32) samples before it as context, the state carried.  One
    probability per chunk (32 ms), given per 20 ms frame as the chunk's that holds the frame's middle."""

    STATE_SHAPE = (2, 1, 128)

    def __init__(self, model):
        self.model = model if isinstance(model, Model) else load_model(model)
        inputs = {v.name: v for v in self.model.inputs}
        outputs = [v.name for v in self.model.outputs]
        if set(inputs) != {"input", "state"} or not {"output", "stateN"} <= set(outputs):
            raise InputError(f"{self.model.label}: not a Silero VAD (inputs input and state, outputs output and "
                             f"stateN); inputs {sorted(inputs)}, outputs {outputs}")
        label = self.model.label
        self.sample_rate = sample_rate_of(self.model, None, decoder_spec(self.model.decoder, label),
                                          inputs["input"], label)
        if self.sample_rate not in (8000, 16000):
            raise InputError(f"{label}: Silero VAD runs at 8000 or 16000 Hz, this file was converted for "
                             f"{self.sample_rate}")
        self.chunk = 512 if self.sample_rate == 16000 else 256
        self.context = self.chunk // 8
        self.frame = int(round(FRAME_SECONDS * self.sample_rate))
        self.reset()

    def reset(self) -> None:
        self._state = np.zeros(self.STATE_SHAPE, np.float32)
        self._audio = np.zeros(self.context, np.float32)  # the context, then samples not yet in a chunk
        self._chunk_probs = np.zeros(0)  # probabilities of chunks that frames still read
        self._first_chunk = 0  # chunk index of _chunk_probs[0]
        self._frames = 0  # 20 ms frames given out
        self._samples = 0  # samples accepted

    def chunk_probabilities(self, samples: np.ndarray, final: bool = False) -> np.ndarray:
        """Probabilities of the 512-sample chunks that ``samples`` complete (with ``final``, the last part
        chunk padded with zeros, as Silero's wrapper pads it)."""
        audio = np.concatenate([self._audio, np.asarray(samples, np.float32).reshape(-1)])
        self._samples += audio.size - self._audio.size
        count = (audio.size - self.context) // self.chunk
        if final and (audio.size - self.context) % self.chunk:
            count += 1
            audio = np.concatenate([audio, np.zeros(count * self.chunk + self.context - audio.size, np.float32)])
        probs = np.empty(count)
        for i in range(count):
            window = audio[i * self.chunk:(i + 1) * self.chunk + self.context].reshape(1, -1)
            out = self.model.run({"input": window, "state": self._state})
            self._state = out["stateN"]
            probs[i] = float(out["output"].reshape(-1)[0])
        self._audio = audio[count * self.chunk:]
        return probs

    def _frame_probs(self, probs: np.ndarray, frames: int) -> np.ndarray:
        """Per 20 ms frame up to ``frames`` (those whose middle a computed chunk holds): its chunk's probability."""
        self._chunk_probs = np.concatenate([self._chunk_probs, probs])
        last = self._first_chunk + self._chunk_probs.size  # chunks computed
        middles = (np.arange(self._frames, frames) + 0.5) * self.frame
        chunk_of = (middles // self.chunk).astype(int)
        ready = chunk_of < last
        out = self._chunk_probs[chunk_of[ready] - self._first_chunk]
        self._frames += int(ready.sum())
        drop = max(0, int((self._frames + 0.5) * self.frame // self.chunk) - self._first_chunk)
        self._chunk_probs, self._first_chunk = self._chunk_probs[drop:], self._first_chunk + drop
        return out

    def accept(self, samples: np.ndarray) -> np.ndarray:
        """Probabilities of the 20 ms frames completed by ``samples`` (float at sample_rate)."""
        probs = self.chunk_probabilities(samples)
        return self._frame_probs(probs, self._samples // self.frame)

    def finish(self) -> np.ndarray:
        probs = self.chunk_probabilities(np.zeros(0, np.float32), final=True)
        out = self._frame_probs(probs, self._samples // self.frame)
        self.reset()
        return out


def make_vad(vad=None, sample_rate: int = 16000):
    """A detector: None -> EnergyVAD; a path or Model -> SileroVAD (a graph with a ``state`` input) or
    MarbleNetVAD; a detector is returned as is."""
    if vad is None:
        return EnergyVAD(sample_rate)
    if isinstance(vad, (str, os.PathLike, Model)):
        model = vad if isinstance(vad, Model) else load_model(vad)
        return SileroVAD(model) if "state" in {v.name for v in model.inputs} else MarbleNetVAD(model)
    return vad


# ---------------------------------------------------------------------------
# Segmentation


class Segmenter:
    """Frame probabilities in, closed (start, end) segments out, in seconds; streaming."""

    def __init__(self, config: VADConfig = VADConfig()):
        self.config = config
        self._open_after = max(1, round(config.min_speech / FRAME_SECONDS))
        self._close_after = max(1, round(config.min_silence / FRAME_SECONDS))
        self._longest = max(1, int(config.max_segment / FRAME_SECONDS))
        self._overlap = max(0, min(round(config.cut_overlap / FRAME_SECONDS), self._longest // 2))
        self.reset()

    @property
    def frames_seen(self) -> int:
        return self._frame

    def reset(self) -> None:
        self._frame = 0  # index of the next frame
        self._start: Optional[int] = None  # first speech frame of the open segment
        self._run = 0  # current run of speech frames (closed) or non-speech frames (open)
        self._last_speech: Optional[int] = None  # end of the open segment's last speech frame

    @property
    def open_since(self) -> Optional[float]:
        """Start (seconds, padded) of a segment that may still be opening or open; None when idle."""
        if self._start is not None:
            return max(0.0, self._start * FRAME_SECONDS - self.config.speech_pad)
        if self._run:
            return max(0.0, (self._frame - self._run) * FRAME_SECONDS - self.config.speech_pad)
        return None

    @property
    def open_until(self) -> Optional[float]:
        """End (seconds, padded) the open segment reaches whatever comes: its last speech frame so far; None when
        no segment is open, or no speech came since a max_segment cut (the cut's new segment may come to nothing)."""
        if self._start is None or self._last_speech is None:
            return None
        return self._last_speech * FRAME_SECONDS + self.config.speech_pad

    def _padded(self, start: int, end_frame: Optional[int]) -> Optional[Tuple[float, float]]:
        """The padded segment [start, end_frame), or None when no speech followed a max_segment cut."""
        if end_frame is None:
            return None
        pad = self.config.speech_pad
        return max(0.0, start * FRAME_SECONDS - pad), end_frame * FRAME_SECONDS + pad

    def accept(self, probs: np.ndarray) -> List[Tuple[float, float]]:
        """The segments that frames ``probs`` close.  The state in locals while the frames go by (a minute of
        audio is 3000 frames; attribute reads and numpy scalars made it ~4 ms a minute)."""
        closed = []
        frame, start, run, last_speech = self._frame, self._start, self._run, self._last_speech
        for speech in (np.asarray(probs) >= self.config.threshold).tolist():
            if start is None:
                run = run + 1 if speech else 0
                if run >= self._open_after:
                    start, run, last_speech = frame - run + 1, 0, frame + 1
            else:
                if speech:
                    run, last_speech = 0, frame + 1
                else:
                    run += 1
                if run >= self._close_after:
                    closed.append(self._padded(start, last_speech))
                    start, run = None, 0
                elif frame + 1 - start >= self._longest:
                    closed.append(self._padded(start, frame + 1))
                    # speech may go on: a new segment, from cut_overlap before the cut
                    start, run, last_speech = frame + 1 - self._overlap, 0, None
            frame += 1
        self._frame, self._start, self._run, self._last_speech = frame, start, run, last_speech
        return [segment for segment in closed if segment is not None]

    def finish(self) -> List[Tuple[float, float]]:
        """End of audio: close an open segment (its end is clipped to the audio by the caller)."""
        segment = self._padded(self._start, self._last_speech) if self._start is not None else None
        self.reset()
        return [] if segment is None else [segment]


# ---------------------------------------------------------------------------
# The speech / no-speech decision in front of decoding


class SpeechGate:
    """Where audio fed in pieces holds speech, judged as a long file's utterances are (EnergyVAD + Segmenter
    with ``config``), so a short file, a stream and a long file get the same speech / no-speech decision:
    decoding keeps only the tokens inside its segments (tinyasr.decoding.ctc.ctc_greedy's ``speech``), and
    silence, steady noise or a tone give no text whatever their length.  Times: seconds from the first sample.
    """

    def __init__(self, sample_rate: int, config: VADConfig = VADConfig()):
        self.detector = EnergyVAD(sample_rate)
        self.segmenter = Segmenter(config)
        self.threshold = config.threshold
        self._segments: List[Tuple[float, float]] = []  # closed, padded
        self._frames = np.zeros(0, bool)  # speech flags from frame _first on
        self._first = 0

    def accept(self, samples: np.ndarray) -> None:
        self._judge(self.detector.accept(samples))

    def finish(self) -> None:
        """End of the audio: judge the frames the detector holds back and close an open segment."""
        self._judge(self.detector.finish())
        self._segments += self.segmenter.finish()

    def _judge(self, probs: np.ndarray) -> None:
        self._frames = np.concatenate([self._frames, probs >= self.threshold])
        self._segments += self.segmenter.accept(probs)

    def speech(self, since: float = 0.0, lead: float = 0.0) -> Speech:
        """What was heard from ``since`` s on, with times from there; a segment still open ends at inf.  ``lead``:
        seconds of silence put before it (the front end's pad_seconds), to the nearest detector frame."""
        segments = list(self._segments)
        if self.segmenter.open_since is not None:
            segments.append((self.segmenter.open_since, math.inf))
        frames = self._frames[max(0, int(round(since / FRAME_SECONDS)) - self._first):]
        silence = int(round(lead / FRAME_SECONDS))
        if silence > 0:
            frames = np.concatenate([np.zeros(silence, bool), frames])
        else:
            lead = 0.0
        return Speech(frames, FRAME_SECONDS, tuple((max(0.0, a - since) + lead, b - since + lead)
                                                   for a, b in segments if b > since))

    def undecided_from(self, since: float = 0.0) -> float:
        """Seconds from ``since`` before which no segment of speech(since) can start any more (closed segments
        stay as they are; one still opening or open, and any to come, start from here on): whether a span that
        ends before it meets a segment is known for good."""
        start = self.segmenter.open_since
        if start is None:
            start = max(0.0, self.segmenter.frames_seen * FRAME_SECONDS - self.segmenter.config.speech_pad)
        return max(0.0, start - since)

    def held_through(self, since: float = 0.0) -> Optional[float]:
        """Seconds from ``since`` up to which the open segment of speech(since) holds for good (None: none open):
        a span that meets it from its start to here meets a segment whatever comes."""
        end = self.segmenter.open_until
        return None if end is None else end - since

    def forget(self, before: float) -> None:
        """Drop what lies before ``before`` s (a stream's finished utterances), keeping the detector's state."""
        drop = max(0, int(round(before / FRAME_SECONDS)) - self._first)
        self._frames, self._first = self._frames[drop:], self._first + drop
        self._segments = [(a, b) for a, b in self._segments if b > before]


def speech_in(samples: np.ndarray, sample_rate: int, lead: float = 0.0) -> Speech:
    """What a SpeechGate hears in a whole recording (float samples at ``sample_rate``), after ``lead`` s of
    silence (SpeechGate.speech)."""
    gate = SpeechGate(sample_rate)
    gate.accept(samples)
    gate.finish()
    return gate.speech(lead=lead)
