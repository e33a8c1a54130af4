"""Voice activity detection: split long or live audio into utterances, then transcribe each.

Two detectors give a speech probability per 20 ms frame from audio fed in pieces:

* :class:`MarbleNetVAD`: a converted frame-VAD model (NVIDIA's Frame-VAD MarbleNet:
  int16 audio in, ``score_active`` per 20 ms out).  Its graph removes the mean of
  the whole input, so it cannot run frame by frame; it runs on windows of a few
  seconds with context on both sides (``context`` seconds of extra latency).
* :class:`EnergyVAD`: frame energy against an adaptive noise floor; no model needed.

:class:`Segmenter` turns probabilities into utterances with hysteresis
(``VADConfig``), and :func:`transcribe_long` runs the whole chain over a file read
block by block, so memory stays bounded whatever the file's length.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import List, Optional, Tuple

import numpy as np

from tinyasr.decoding.results import Result
from tinyasr.engine.offline import Model, load_model
from tinyasr.errors import InputError

FRAME_SECONDS = 0.02  # both detectors decide per 20 ms


@dataclass(frozen=True)
class VADConfig:
    """Hysteresis: a segment opens after ``min_speech`` s of frames with probability >= ``threshold``, closes
    after ``min_silence`` s below it, is widened by ``speech_pad`` s on both sides and cut at ``max_segment`` s."""

    threshold: float = 0.5
    min_speech: float = 0.1
    min_silence: float = 0.5
    speech_pad: float = 0.2
    max_segment: float = 20.0


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
    ``min_db`` dBFS (the logistic ramp is 2 dB wide).
    """

    def __init__(self, sample_rate: int = 16000, snr_db: float = 6.0, min_db: float = -50.0,
                 floor_seconds: float = 3.0, floor_percentile: float = 10.0):
        self.sample_rate = int(sample_rate)
        self.frame = int(round(FRAME_SECONDS * self.sample_rate))
        self.snr_db, self.min_db, self.percentile = snr_db, min_db, floor_percentile
        self.floor_frames = max(1, int(floor_seconds / FRAME_SECONDS))
        self.reset()

    def reset(self) -> None:
        self._rest = np.zeros(0, np.float32)
        self._history = np.zeros(0)  # levels of the last floor_frames - 1 frames

    def accept(self, samples: np.ndarray) -> np.ndarray:
        """Probabilities of the frames completed by ``samples`` (float at sample_rate)."""
        x = np.concatenate([self._rest, np.asarray(samples, np.float32)])
        count = x.size // self.frame
        self._rest = x[count * self.frame:]
        if count == 0:
            return np.zeros(0)
        frames = x[:count * self.frame].reshape(count, self.frame).astype(np.float64)
        level = 10.0 * np.log10((frames**2).mean(axis=1) + 1e-10)
        history = np.concatenate([self._history, level])
        # floor of frame i: over the window of levels ending at it (at the very start, the first level repeated)
        padded = np.concatenate([np.full(self.floor_frames - 1 - self._history.size, history[0]), history])
        windows = np.lib.stride_tricks.sliding_window_view(padded, self.floor_frames)
        floor = np.percentile(windows, self.percentile, axis=1)
        self._history = history[-(self.floor_frames - 1):] if self.floor_frames > 1 else np.zeros(0)
        margin = level - np.maximum(floor + self.snr_db, self.min_db)
        return 1.0 / (1.0 + np.exp(-margin / 2.0))

    def finish(self) -> np.ndarray:
        """Nothing is held back but a partial frame, which is dropped."""
        self.reset()
        return np.zeros(0)


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
        self.sample_rate = int(self.model.manifest.get("sample_rate") or 16000)
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
        pcm = np.clip(np.round(chunk * 32768.0), -32768, 32767).astype(np.int16)[None, None, :]
        scores = self.model.run({self.model.inputs[0].name: pcm})[self.output].reshape(-1)
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


def make_vad(vad=None, sample_rate: int = 16000):
    """A detector: None -> EnergyVAD; a path or Model -> MarbleNetVAD; a detector is returned as is."""
    if vad is None:
        return EnergyVAD(sample_rate)
    if isinstance(vad, (str, os.PathLike, Model)):
        return MarbleNetVAD(vad)
    return vad


# ---------------------------------------------------------------------------
# Segmentation


class Segmenter:
    """Frame probabilities in, closed (start, end) segments out, in seconds; streaming."""

    def __init__(self, config: VADConfig = VADConfig()):
        self.config = config
        self._open_after = max(1, round(config.min_speech / FRAME_SECONDS))
        self._close_after = max(1, round(config.min_silence / FRAME_SECONDS))
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

    def _close(self, end_frame: Optional[int]) -> List[Tuple[float, float]]:
        """The padded segment [start, end_frame), or none when no speech followed a max_segment cut."""
        pad = self.config.speech_pad
        start, self._start, self._run = self._start, None, 0
        if end_frame is None:
            return []
        return [(max(0.0, start * FRAME_SECONDS - pad), end_frame * FRAME_SECONDS + pad)]

    def accept(self, probs: np.ndarray) -> List[Tuple[float, float]]:
        closed = []
        longest = int(self.config.max_segment / FRAME_SECONDS)
        for p in probs:
            speech = p >= self.config.threshold
            if self._start is None:
                self._run = self._run + 1 if speech else 0
                if self._run >= self._open_after:
                    self._start, self._run, self._last_speech = self._frame - self._run + 1, 0, self._frame + 1
            else:
                if speech:
                    self._run, self._last_speech = 0, self._frame + 1
                else:
                    self._run += 1
                if self._run >= self._close_after:
                    closed += self._close(self._last_speech)
                elif self._frame + 1 - self._start >= longest:
                    closed += self._close(self._frame + 1)
                    self._start, self._last_speech = self._frame + 1, None  # speech may go on: a new segment
            self._frame += 1
        return closed

    def finish(self) -> List[Tuple[float, float]]:
        """End of audio: close an open segment (its end is clipped to the audio by the caller)."""
        segments = self._close(self._last_speech) if self._start is not None else []
        self.reset()
        return segments
