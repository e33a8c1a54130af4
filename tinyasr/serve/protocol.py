"""The wire protocol of ``tinyasr serve``: client messages, server events, errors and limits (docs/serve.md).

Kept free of websockets and of the runtime, so the protocol can be read (and tested) on its own.

Client -> server: a JSON ``start`` message, then binary audio messages, then a JSON ``end`` message.
Server -> client: JSON events (``ready``, ``partial``, ``endpoint``, ``final``, ``done``, ``error``).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Optional, Tuple

MODES = ("stream", "file")  # stream: 16-bit PCM at a given rate; file: the bytes of an audio file

# error code -> WebSocket close code sent after the error event
CLOSE_CODES = {
    "bad_message": 1008,  # not the message the protocol expects here (policy violation)
    "bad_audio": 1008,  # PCM of odd length, a file that is not audio
    "limit": 1008,  # session length, file size
    "idle_timeout": 1008,
    "busy": 1013,  # the server has max_sessions open: try again later
    "shutdown": 1001,  # going away
    "internal": 1011,  # a bug in the server: the session ends, the others go on
}


class ProtocolError(Exception):
    """A client broke the protocol or a limit: ``code`` (a CLOSE_CODES key) and a one-line message."""

    def __init__(self, code: str, message: str):
        assert code in CLOSE_CODES, code
        super().__init__(message)
        self.code = code
        self.close_code = CLOSE_CODES[code]

    def event(self) -> dict:
        return {"type": "error", "code": self.code, "message": str(self)}


@dataclass(frozen=True)
class Limits:
    """Per-server and per-session limits; each broken limit has its documented outcome (docs/serve.md)."""

    max_sessions: int = 32  # open WebSocket sessions; one more is refused with "busy"
    max_message_bytes: int = 256 * 1024  # one message (websockets closes with 1009 above it)
    max_session_seconds: float = 3600.0  # audio per session (stream) or per file
    max_file_bytes: int = 16 * 1024 * 1024  # file mode: the whole file
    idle_timeout: float = 15.0  # seconds without a complete message
    min_sample_rate: int = 8000
    max_sample_rate: int = 192000
    send_timeout: float = 10.0  # a client that does not read its events for this long is dropped
    open_timeout: float = 10.0  # the WebSocket handshake
    close_timeout: float = 5.0  # a closed session waits this long for the client's close frame
    max_hotwords: int = 100  # a stream session's own hotwords (its start message), on a beam-search server
    max_hotword_chars: int = 100  # characters in one hotword phrase
    max_hotword_boost: float = 20.0  # |boost| of a session's hotword (natural log)

    def to_dict(self) -> dict:
        return {"max_message_bytes": self.max_message_bytes, "max_session_seconds": self.max_session_seconds,
                "max_file_bytes": self.max_file_bytes, "idle_timeout": self.idle_timeout,
                "sample_rates": [self.min_sample_rate, self.max_sample_rate], "max_hotwords": self.max_hotwords}


@dataclass(frozen=True)
class Start:
    """A parsed ``start`` message."""

    mode: str
    sample_rate: Optional[int]  # stream mode only
    hotwords: Tuple[Tuple[str, float], ...] = ()  # stream mode only: (phrase, boost) for this session


def parse_message(text: str) -> dict:
    """A client's JSON text message as a dict with a string ``type``."""
    try:
        message = json.loads(text)
    except ValueError:
        raise ProtocolError("bad_message", f"text messages must be JSON objects, got {_excerpt(text)}") from None
    if not isinstance(message, dict) or not isinstance(message.get("type"), str):
        raise ProtocolError("bad_message", f"a message needs a string 'type', got {_excerpt(text)}")
    return message


def parse_start(message, limits: Limits) -> Start:
    """The first message: ``{"type": "start", "sample_rate": HZ}`` (optionally ``"hotwords": ["phrase:boost",
    ...]``) or ``{"type": "start", "mode": "file"}``."""
    if isinstance(message, bytes):
        raise ProtocolError("bad_message", "the first message must be a JSON 'start' message, got binary data")
    message = parse_message(message)
    if message["type"] != "start":
        raise ProtocolError("bad_message", f"the first message must be 'start', got {message['type']!r}")
    mode = message.get("mode", "stream")
    if mode not in MODES:
        raise ProtocolError("bad_message", f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    hotwords = _hotwords(message.get("hotwords", []), limits)
    if mode == "file":
        if hotwords:
            raise ProtocolError("bad_message", "'hotwords' apply to stream mode only")
        return Start(mode, None)
    rate = message.get("sample_rate")
    if isinstance(rate, float) and rate.is_integer():
        rate = int(rate)  # JavaScript's AudioContext.sampleRate is a float such as 48000.0
    if isinstance(rate, bool) or not isinstance(rate, int):
        raise ProtocolError("bad_message", f"'sample_rate' must be an integer number of Hz, got {rate!r}")
    if not limits.min_sample_rate <= rate <= limits.max_sample_rate:
        raise ProtocolError("bad_message", f"sample rate {rate} Hz is outside {limits.min_sample_rate}-"
                            f"{limits.max_sample_rate} Hz")
    return Start(mode, rate, hotwords)


def _hotwords(items, limits: Limits) -> Tuple[Tuple[str, float], ...]:
    """A start message's ``hotwords``: at most max_hotwords strings "phrase" or "phrase:boost", each at most
    max_hotword_chars long, |boost| at most max_hotword_boost; only text, never a file name."""
    from tinyasr.decoding.hotwords import parse_hotword  # pure Python, no runtime
    from tinyasr.errors import TinyASRError

    if not isinstance(items, list) or len(items) > limits.max_hotwords:
        raise ProtocolError("bad_message", f"'hotwords' must be a list of at most {limits.max_hotwords} strings")
    pairs = []
    for item in items:
        if not isinstance(item, str) or not 0 < len(item) <= limits.max_hotword_chars:
            raise ProtocolError("bad_message", f"a hotword must be a string of 1 to {limits.max_hotword_chars} "
                                f"characters, 'phrase' or 'phrase:boost', got {_excerpt(str(item))}")
        try:
            phrase, boost = parse_hotword(item)
        except TinyASRError as exc:
            raise ProtocolError("bad_message", str(exc)) from None
        if abs(boost) > limits.max_hotword_boost:
            raise ProtocolError("bad_message", f"hotword {_excerpt(item)}: the boost must be within "
                                f"+-{limits.max_hotword_boost:g}")
        pairs.append((phrase, boost))
    return tuple(pairs)


def parse_control(text: str) -> None:
    """A text message after ``start``: only ``{"type": "end"}`` is allowed (flush, final result, close)."""
    message = parse_message(text)
    if message["type"] != "end":
        raise ProtocolError("bad_message", f"after 'start' only audio and 'end' are allowed, got {message['type']!r}")


def result_event(result, start: float, endpoint: bool) -> dict:
    """A ``final`` event: text and words with times in seconds from the start of the session's audio."""
    words = [{"text": w.text, "start": _round(start + w.start), "end": _round(start + w.end),
              "confidence": _round(w.confidence)} for w in result.words]
    return {"type": "final", "text": result.text, "start": _round(start), "end": _round(start + result.duration),
            "words": words, "endpoint": endpoint}


def _round(seconds: float) -> float:
    return round(float(seconds), 4) if math.isfinite(seconds) else 0.0


def _excerpt(text: str, size: int = 40) -> str:
    return repr(text if len(text) <= size else text[:size] + "...")
