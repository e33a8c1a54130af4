"""The WebSocket server: one session per connection at ``/ws``, the browser page at ``/``.

The event loop only moves bytes and JSON; every call into the runtime (stream set-up, audio, the final
flush, file transcription) runs in a bounded thread pool.  A session has one call in the pool at a time;
the messages that arrive meanwhile (at most READ_AHEAD, then TCP holds the client back: backpressure) go
into its next call together, so a loaded server computes fewer, larger chunks instead of falling behind.
Limits and their outcomes: protocol.Limits, docs/serve.md.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Tuple

import numpy as np
from websockets.asyncio.server import serve
from websockets.exceptions import ConnectionClosed

from tinyasr.decoding.specs import BeamSearch
from tinyasr.serve.protocol import Limits, ProtocolError, parse_control, parse_start
from tinyasr.serve.session import FileSession, StreamSession

LOG = logging.getLogger("tinyasr.serve")

WS_PATH = "/ws"
PAGE_DIR = Path(__file__).parent / "page"
PAGE_FILES = {  # URL path -> (file in page/, content type)
    "/": ("index.html", "text/html; charset=utf-8"),
    "/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/capture-worklet.js": ("capture-worklet.js", "text/javascript; charset=utf-8"),
}


LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
WILDCARD_HOSTS = ("", "0.0.0.0", "::")  # listening on every address: any Host header may be right
READ_AHEAD = 8  # audio messages a session holds while its previous ones are computed; then TCP waits
_END, _STOP = object(), object()  # inbox markers: the client ended, the server stops


@dataclass(frozen=True)
class ServeConfig:
    """Where to listen and how hard to work; ``port`` 0 picks a free port (``SpeechServer.port``)."""

    host: str = "127.0.0.1"
    port: int = 8765
    workers: int = 2  # threads running the runtime
    allow_origins: Tuple[str, ...] = ()  # browser origins besides the page's own; "*" allows any
    limits: Limits = field(default_factory=Limits)


class SpeechServer:
    """Serves one Recognizer: ``await start()``, then ``await shutdown(grace)`` (finishes open sessions)."""

    def __init__(self, recognizer, config: ServeConfig = ServeConfig()):
        self.recognizer = recognizer
        self.config = config
        self.limits = config.limits
        self.sessions = 0  # open WebSocket sessions
        self._pool = ThreadPoolExecutor(config.workers, thread_name_prefix="tinyasr-serve")
        self._pages = {path: ((PAGE_DIR / name).read_text(encoding="utf-8"), kind)
                       for path, (name, kind) in PAGE_FILES.items()}
        self._server = None
        self._stopping: Optional[asyncio.Future] = None

    @property
    def port(self) -> int:
        return self._server.sockets[0].getsockname()[1]

    async def start(self) -> None:
        """Compile and plan the model on a throwaway stream (so the first client does not wait), then listen."""
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._pool, self._warm_up)
        self._stopping = loop.create_future()
        self._server = await serve(
            self._handle, self.config.host, self.config.port, process_request=self._http,
            max_size=self.limits.max_message_bytes, max_queue=READ_AHEAD, open_timeout=self.limits.open_timeout,
            # pings find clients that vanished without closing; a session's own idle_timeout is shorter
            ping_interval=20, ping_timeout=20, close_timeout=self.limits.close_timeout, logger=LOG)

    def _warm_up(self) -> None:
        session = StreamSession(self.recognizer, 16000, self.limits)
        session.accept([np.zeros(16000, "<i2").tobytes()])
        session.finish()

    async def shutdown(self, grace: float = 30.0) -> None:
        """Stop accepting; let open sessions end by themselves for ``grace`` s; then send each its final
        result and close it (1001)."""
        self._server.close(close_connections=False)
        try:
            await asyncio.wait_for(asyncio.shield(self._server.wait_closed()), grace)
        except asyncio.TimeoutError:
            self._stopping.set_result(None)
            await self._server.wait_closed()
        self._pool.shutdown(wait=True)

    # -- HTTP: the page, and the origin check of WebSocket requests ------------------

    def _http(self, connection, request):
        path = request.path.split("?", 1)[0]
        host = request.headers.get("Host", "")
        if not self._host_allowed(host):
            return connection.respond(403, f"this server answers to {self.config.host}, not to {host!r}\n")
        upgrade = request.headers.get("Upgrade", "").lower() == "websocket"
        if upgrade and path == WS_PATH:
            origin = request.headers.get("Origin")
            if origin is None or self._origin_allowed(origin, host):
                return None  # go on with the WebSocket handshake
            return connection.respond(403, f"origin {origin} may not connect (tinyasr serve --allow-origin)\n")
        if not upgrade and path in self._pages:
            text, kind = self._pages[path]
            response = connection.respond(200, text)
            del response.headers["Content-Type"]
            response.headers["Content-Type"] = kind
            response.headers["Cache-Control"] = "no-cache"
            return response
        return connection.respond(404, f"nothing at {path}: the page is at / and the WebSocket at {WS_PATH}\n")

    def _host_allowed(self, host: str) -> bool:
        """A server on a loopback or given address answers only to that name (or localhost): a page on a
        domain that an attacker points at 127.0.0.1 (DNS rebinding) would otherwise count as the server's own."""
        if self.config.host in WILDCARD_HOSTS:
            return True
        name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
        return name.strip("[]") in {self.config.host, *LOOPBACK_NAMES}

    def _origin_allowed(self, origin: str, host: str) -> bool:
        """A browser may connect from the page this server serves, or from an origin given with --allow-origin."""
        allowed = self.config.allow_origins
        return origin in (f"http://{host}", f"https://{host}") or "*" in allowed or origin in allowed

    # -- one WebSocket session --------------------------------------------------------

    async def _handle(self, connection) -> None:
        if self.sessions >= self.limits.max_sessions:
            await self._close_with(connection, ProtocolError(
                "busy", f"the server has its maximum of {self.limits.max_sessions} sessions open; try again later"))
            return
        self.sessions += 1
        try:
            await self._run_session(connection)
        except ProtocolError as exc:
            await self._close_with(connection, exc)
        except ConnectionClosed:
            pass  # the client went away (or sent a message over max_size: websockets closed with 1009)
        except Exception:  # a bug: this session ends with "internal", the others go on
            LOG.exception("session failed")
            await self._close_with(connection, ProtocolError("internal", "internal server error; see the server log"))
        finally:
            self.sessions -= 1

    async def _run_session(self, connection) -> None:
        first = await self._receive(connection)
        if first is None:
            raise ProtocolError("shutdown", "the server is shutting down")
        start = parse_start(first, self.limits)
        if start.hotwords and not isinstance(self.recognizer.decoding, BeamSearch):
            raise ProtocolError("bad_message", "this server decodes greedily, so it takes no hotwords (tinyasr serve "
                                "--beam N enables them)")
        if start.mode == "file":
            session = FileSession(self.recognizer, self.limits)
        else:
            session = await self._compute(StreamSession, self.recognizer, start.sample_rate, self.limits,
                                          start.hotwords)
        await self._send(connection, {"type": "ready", "mode": start.mode, "model": Path(self.recognizer.path).name,
                                      "model_sample_rate": self.recognizer.sample_rate,
                                      "limits": self.limits.to_dict()})
        inbox: asyncio.Queue = asyncio.Queue(READ_AHEAD)
        reader = asyncio.ensure_future(self._read(connection, inbox))
        try:
            while True:
                batch = [await inbox.get()]
                while isinstance(batch[-1], bytes) and not inbox.empty():
                    batch.append(inbox.get_nowait())
                audio = [item for item in batch if isinstance(item, bytes)]
                if audio:
                    for event in await self._compute(session.accept, audio):
                        await self._send(connection, event)
                last = batch[-1]
                if isinstance(last, bytes):
                    continue
                if isinstance(last, Exception):
                    raise last  # what went wrong, in its place among the messages
                for event in await self._compute(session.finish):
                    await self._send(connection, event)
                if last is _STOP:  # shutdown after the grace period: the client got what it said so far
                    await connection.close(1001, "server shutting down")
                else:
                    await connection.close(1000, "done")
                return
        finally:
            reader.cancel()

    async def _read(self, connection, inbox: asyncio.Queue) -> None:
        """Move messages into the inbox: audio, then _END or _STOP, or the exception that ended the reading.
        A full inbox stops the reading, and TCP then stops the client (backpressure)."""
        try:
            while True:
                message = await self._receive(connection)
                if message is None:
                    await inbox.put(_STOP)
                    return
                if isinstance(message, str):
                    parse_control(message)  # "end", or a ProtocolError
                    await inbox.put(_END)
                    return
                await inbox.put(message)
        except Exception as exc:  # a ProtocolError, the client gone, or a bug: the session loop raises it
            await inbox.put(exc)

    async def _compute(self, function, *args):
        return await asyncio.get_running_loop().run_in_executor(self._pool, function, *args)

    async def _receive(self, connection):
        """The next message; None when the server stops; ProtocolError after ``idle_timeout`` s without one."""
        receive = asyncio.ensure_future(connection.recv())
        done, _ = await asyncio.wait((receive, self._stopping), timeout=self.limits.idle_timeout,
                                     return_when=asyncio.FIRST_COMPLETED)
        if receive in done:
            return receive.result()
        receive.cancel()  # safe in websockets' asyncio API: no message is lost
        if self._stopping.done():
            return None
        raise ProtocolError("idle_timeout", f"no complete message for {self.limits.idle_timeout:g} s")

    async def _send(self, connection, event: dict) -> None:
        """Send one event; a client that has not read for ``send_timeout`` s is dropped."""
        try:
            await asyncio.wait_for(connection.send(json.dumps(event)), self.limits.send_timeout)
        except asyncio.TimeoutError:
            connection.transport.abort()
            raise ConnectionClosed(None, None) from None

    async def _close_with(self, connection, error: ProtocolError) -> None:
        """The error event, then a close with its code; nothing if the client is gone already."""
        try:
            await self._send(connection, error.event())
            await connection.close(error.close_code, error.code)
        except ConnectionClosed:
            pass


class ServerThread:
    """A SpeechServer on its own event loop in a background thread, for programs without asyncio (and tests):

        with ServerThread(Recognizer(), ServeConfig(port=0)) as running:
            print(running.url)          # ws://127.0.0.1:PORT/ws; the page is running.page_url
    """

    def __init__(self, recognizer, config: ServeConfig = ServeConfig(), grace: float = 5.0):
        self.server = SpeechServer(recognizer, config)
        self.grace = grace
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._stop: Optional[asyncio.Event] = None
        self._started = threading.Event()
        self._error: Optional[BaseException] = None
        self._thread = threading.Thread(target=asyncio.run, args=(self._main(),), name="tinyasr-serve-loop",
                                        daemon=True)

    @property
    def url(self) -> str:
        return f"ws://{self._host}:{self.server.port}{WS_PATH}"

    @property
    def page_url(self) -> str:
        return f"http://{self._host}:{self.server.port}/"

    @property
    def _host(self) -> str:
        host = self.server.config.host
        return f"[{host}]" if ":" in host else host

    async def _main(self) -> None:
        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        try:
            await self.server.start()
        except BaseException as exc:  # reported by __enter__ in the caller's thread
            self._error = exc
            self._started.set()
            return
        self._started.set()
        await self._stop.wait()
        await self.server.shutdown(self.grace)

    def __enter__(self) -> "ServerThread":
        self._thread.start()
        self._started.wait()
        if self._error is not None:
            self._thread.join()
            raise self._error
        return self

    def __exit__(self, *exc_info) -> None:
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join()
