"""A small Python client for ``tinyasr serve`` (needs the ``serve`` extra).

    finals = asyncio.run(stream_file("ws://127.0.0.1:8765/ws", "talk.wav", realtime=True))
    final = asyncio.run(transcribe_file("ws://127.0.0.1:8765/ws", "talk.wav"))   # offline mode

or from a shell: ``python -m tinyasr.serve.client talk.wav [--url URL] [--realtime | --file-mode]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Callable, Iterable, List, Optional, Sequence, Tuple

import numpy as np
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

DEFAULT_URL = "ws://127.0.0.1:8765/ws"
Chunks = Iterable[Tuple[np.ndarray, int]]  # (int16 mono samples, sample rate)


class ServerError(Exception):
    """The server answered with an ``error`` event: ``code`` and the server's message."""

    def __init__(self, event: dict):
        super().__init__(f"{event.get('code')}: {event.get('message')}")
        self.code = event.get("code")


def file_chunks(path, chunk_ms: int = 100) -> Chunks:
    """A file's audio as int16 mono pieces of ``chunk_ms``, at the file's own rate (the server resamples)."""
    import soundfile

    with soundfile.SoundFile(str(path)) as handle:
        rate = handle.samplerate
        for block in handle.blocks(blocksize=max(1, rate * chunk_ms // 1000), dtype="int16", always_2d=True):
            yield block.mean(axis=1).round().astype("<i2") if block.shape[1] > 1 else block[:, 0], rate


async def stream_chunks(url: str, chunks: Chunks, *, realtime: bool = False,
                        on_event: Optional[Callable[[dict], None]] = None, hotwords: Sequence[str] = ()) -> List[dict]:
    """Stream PCM pieces (all at one rate) to the server; returns its ``final`` events.

    ``realtime`` paces the pieces as a microphone would; ``on_event`` sees every event as it arrives;
    ``hotwords``: "phrase" or "phrase:boost" strings for this session (a server running beam search).
    """
    finals: List[dict] = []
    async with connect(url) as socket:
        receiver = None
        started = time.monotonic()
        sent = 0.0  # seconds of audio
        for samples, rate in chunks:
            if receiver is None:
                start = {"type": "start", "sample_rate": int(rate)}
                await socket.send(json.dumps({**start, "hotwords": list(hotwords)} if hotwords else start))
                await _expect_ready(socket)
                receiver = asyncio.ensure_future(_receive(socket, finals, on_event))
            if realtime:
                await asyncio.sleep(max(0.0, started + sent - time.monotonic()))
            if receiver.done():  # an error event ended the session early
                break
            try:
                await socket.send(np.ascontiguousarray(samples, "<i2").tobytes())
            except ConnectionClosed:
                break  # the receiver has the server's reason
            sent += len(samples) / rate
        if receiver is None:
            raise ValueError("no audio to stream")
        if not receiver.done():
            try:
                await socket.send(json.dumps({"type": "end"}))
            except ConnectionClosed:
                pass
        await receiver
    return finals


async def stream_file(url: str, path, *, realtime: bool = False, chunk_ms: int = 100,
                      on_event: Optional[Callable[[dict], None]] = None) -> List[dict]:
    """Stream an audio file as PCM (see stream_chunks)."""
    return await stream_chunks(url, file_chunks(path, chunk_ms), realtime=realtime, on_event=on_event)


async def transcribe_file(url: str, path, *, piece_bytes: int = 64 * 1024) -> dict:
    """Offline mode: send the file's bytes as they are; returns the server's one ``final`` event."""
    data = Path(path).read_bytes()
    finals: List[dict] = []
    async with connect(url) as socket:
        await socket.send(json.dumps({"type": "start", "mode": "file"}))
        await _expect_ready(socket)
        for offset in range(0, len(data), piece_bytes):
            await socket.send(data[offset:offset + piece_bytes])
        await socket.send(json.dumps({"type": "end"}))
        await _receive(socket, finals, None)
    return finals[0]


async def _expect_ready(socket) -> dict:
    event = json.loads(await socket.recv())
    if event["type"] == "error":
        raise ServerError(event)
    return event


async def _receive(socket, finals: List[dict], on_event) -> None:
    """Events until ``done``; an ``error`` event raises ServerError."""
    async for message in socket:
        event = json.loads(message)
        if on_event is not None:
            on_event(event)
        if event["type"] == "final":
            finals.append(event)
        elif event["type"] == "error":
            raise ServerError(event)
        elif event["type"] == "done":
            return
    raise ConnectionError(f"the server closed the session before 'done' (code {socket.close_code})")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tinyasr.serve.client",
                                     description="Send an audio file to a tinyasr serve server.")
    parser.add_argument("audio", help="an audio file (any format soundfile reads)")
    parser.add_argument("--url", default=DEFAULT_URL, help=f"the server's WebSocket URL (default: {DEFAULT_URL})")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--realtime", action="store_true", help="stream at real-time pace, as a microphone")
    mode.add_argument("--file-mode", action="store_true", help="send the file whole (offline transcript)")
    args = parser.parse_args(argv)

    def show(event):
        if event["type"] == "partial":
            print("\r" + event["text"], end="", file=sys.stderr, flush=True)
        elif event["type"] == "final":
            print(f"\r[{event['start']:8.2f} - {event['end']:8.2f}] {event['text']}", flush=True)

    try:
        if args.file_mode:
            show(asyncio.run(transcribe_file(args.url, args.audio)))
        else:
            asyncio.run(stream_file(args.url, args.audio, realtime=args.realtime, on_event=show))
    except (ServerError, OSError, RuntimeError) as exc:
        print(f"tinyasr client: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
