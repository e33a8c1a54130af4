"""The compute side of one connection: audio in, protocol events out.  Runs in the server's worker pool.

Each session owns its OnlineStream (or its file bytes); only the Recognizer, which is immutable and
thread-safe, is shared.  A session is called by one worker at a time (the server awaits each call) with
the audio messages that arrived since its last call.
"""

from __future__ import annotations

import io
from typing import List

import numpy as np

from tinyasr.errors import TinyASRError
from tinyasr.serve.protocol import Limits, ProtocolError, result_event


class StreamSession:
    """Stream mode: little-endian 16-bit mono PCM at ``sample_rate`` through ``recognizer.stream()``, decoded as
    the recognizer decodes (greedy, or its beam search with ``hotwords`` added: the session's own)."""

    def __init__(self, recognizer, sample_rate: int, limits: Limits, hotwords=()):
        self.stream = recognizer.stream(hotwords=hotwords)
        self.sample_rate = sample_rate
        self.max_samples = int(limits.max_session_seconds * sample_rate)
        self.samples = 0  # received, at the client's rate
        self._partial = ""

    def accept(self, messages: List[bytes]) -> List[dict]:
        """Events after the audio messages that have arrived (one or, when the server is behind, several,
        computed as one chunk): the partial text when it changed, an endpoint and its final."""
        for pcm in messages:
            if len(pcm) % 2:
                raise ProtocolError("bad_audio", f"audio messages are 16-bit PCM, so an even number of bytes; "
                                    f"got {len(pcm)}")
        pcm = b"".join(messages)
        count = len(pcm) // 2
        if self.samples + count > self.max_samples:
            raise ProtocolError("limit", f"the session passed its limit of {self.max_samples / self.sample_rate:g} "
                                "s of audio")
        self.samples += count
        self.stream.accept_waveform(np.frombuffer(pcm, "<i2"), self.sample_rate)
        events = []
        partial = self.stream.partial
        if partial != self._partial:
            self._partial = partial
            events.append({"type": "partial", "text": partial, "start": round(self.stream.utterance_start, 4)})
        if self.stream.is_endpoint:
            events.append({"type": "endpoint", "time": round(self.samples / self.sample_rate, 4)})
            events += self._final(endpoint=True)
        return events

    def finish(self) -> List[dict]:
        """The last utterance's final (when it has text) and ``done``."""
        return self._final(endpoint=False) + [{"type": "done", "duration": round(self.samples / self.sample_rate, 4)}]

    def _final(self, endpoint: bool) -> List[dict]:
        start = self.stream.utterance_start
        result = self.stream.finalize()
        self._partial = ""
        return [result_event(result, start, endpoint)] if result.text else []


class FileSession:
    """File mode: the bytes of an audio file in any format soundfile reads, transcribed whole at the end."""

    def __init__(self, recognizer, limits: Limits):
        self.recognizer = recognizer
        self.limits = limits
        self._parts: List[bytes] = []
        self.size = 0

    def accept(self, messages: List[bytes]) -> List[dict]:
        """Keep pieces of the file (no events until the end)."""
        size = sum(map(len, messages))
        if self.size + size > self.limits.max_file_bytes:
            raise ProtocolError("limit", f"the file passed the limit of {self.limits.max_file_bytes} bytes")
        self._parts += messages
        self.size += size
        return []

    def finish(self) -> List[dict]:
        """Decode the file, transcribe it offline, and return its ``final`` and ``done``."""
        import soundfile

        data, self._parts = b"".join(self._parts), []
        if not data:
            raise ProtocolError("bad_audio", "file mode ended before any file bytes arrived")
        try:
            with soundfile.SoundFile(io.BytesIO(data)) as handle:
                if handle.frames / handle.samplerate > self.limits.max_session_seconds:
                    raise ProtocolError("limit", f"the file lasts {handle.frames / handle.samplerate:.1f} s, more "
                                        f"than the limit of {self.limits.max_session_seconds:g} s")
                samples = handle.read(dtype="float32", always_2d=True)
                rate = handle.samplerate
        except (RuntimeError, OSError, soundfile.LibsndfileError) as exc:
            reason = getattr(exc, "error_string", None) or str(exc)
            raise ProtocolError("bad_audio", f"not a readable audio file ({reason})") from None
        try:
            result = self.recognizer.transcribe(samples, sample_rate=rate)
        except TinyASRError as exc:  # e.g. no samples, a non-finite sample
            raise ProtocolError("bad_audio", str(exc)) from None
        return [result_event(result, 0.0, endpoint=False), {"type": "done", "duration": round(result.duration, 4)}]
