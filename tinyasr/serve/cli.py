"""``tinyasr serve``: the command's options and its run; building the parser imports neither websockets
nor Numba (they load when the command runs)."""

from __future__ import annotations

import sys

from tinyasr.cli.stream import positive_int, positive_seconds
from tinyasr.cli.transcribe import add_decoding_arguments, decoding_of
from tinyasr.errors import TinyASRError
from tinyasr.serve.protocol import Limits

DEFAULTS = Limits()


def add_arguments(parser) -> None:
    """The options of ``tinyasr serve``."""
    parser.add_argument("-m", "--model", help="a .tasr file, or the name of a bundled or downloaded model "
                        "(default: digits)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default: 127.0.0.1, this machine only)")
    parser.add_argument("--port", type=int, default=8765, help="TCP port (default: 8765; 0 picks a free one)")
    parser.add_argument("--allow-origin", action="append", default=[], metavar="ORIGIN",
                        help="a web origin (e.g. https://example.org) whose pages may connect, besides the "
                        "server's own page; '*' allows any; repeatable")
    parser.add_argument("--workers", type=positive_int, default=2, metavar="N",
                        help="threads running recognition (default: 2)")
    parser.add_argument("--max-sessions", type=positive_int, default=DEFAULTS.max_sessions, metavar="N",
                        help=f"open sessions at most; more are refused (default: {DEFAULTS.max_sessions})")
    parser.add_argument("--max-message-bytes", type=positive_int, default=DEFAULTS.max_message_bytes,
                        metavar="B", help=f"largest message (default: {DEFAULTS.max_message_bytes})")
    parser.add_argument("--max-session-seconds", type=positive_seconds, default=DEFAULTS.max_session_seconds,
                        metavar="S", help=f"audio per session (default: {DEFAULTS.max_session_seconds:g})")
    parser.add_argument("--max-file-bytes", type=positive_int, default=DEFAULTS.max_file_bytes, metavar="B",
                        help=f"largest file in file mode (default: {DEFAULTS.max_file_bytes})")
    parser.add_argument("--idle-timeout", type=positive_seconds, default=DEFAULTS.idle_timeout, metavar="S",
                        help=f"close a session silent this long (default: {DEFAULTS.idle_timeout:g})")
    parser.add_argument("--shutdown-grace", type=positive_seconds, default=30.0, metavar="S",
                        help="on Ctrl-C / SIGTERM, let open sessions finish this long (default: 30)")
    parser.add_argument("--threads", type=positive_int, default=None, metavar="N",
                        help="compute threads per call (default: $TINYASR_NUM_THREADS, else 1)")
    add_decoding_arguments(parser)  # files named here are the server's own: clients never name a file


def run(args) -> int:
    """Serve until SIGINT / SIGTERM, then finish open sessions."""
    try:
        import websockets  # noqa: F401  (the serve extra)
    except ImportError:
        print("tinyasr: 'tinyasr serve' needs the serve extra (websockets is missing): "
              "pip install 'tinyasr[serve]'", file=sys.stderr)
        return 1
    import asyncio

    from tinyasr.pipeline.recognizer import Recognizer
    from tinyasr.serve.server import ServeConfig

    try:
        recognizer = Recognizer(args.model, num_threads=args.threads).with_decoding(decoding_of(args))
        recognizer.stream()  # refuses a model that cannot stream, now rather than per session
    except TinyASRError as exc:
        print(f"tinyasr: {exc}", file=sys.stderr)
        return 3
    limits = Limits(max_sessions=args.max_sessions, max_message_bytes=args.max_message_bytes,
                    max_session_seconds=args.max_session_seconds, max_file_bytes=args.max_file_bytes,
                    idle_timeout=args.idle_timeout)
    config = ServeConfig(host=args.host, port=args.port, workers=args.workers,
                         allow_origins=tuple(args.allow_origin), limits=limits)
    try:
        asyncio.run(_serve(recognizer, config, args.shutdown_grace))
    except OSError as exc:  # the port is taken, the address is not this machine's
        print(f"tinyasr: cannot listen on {args.host}:{args.port}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    return 0


async def _serve(recognizer, config, grace: float) -> None:
    import asyncio
    import signal

    from tinyasr.serve.server import WS_PATH, SpeechServer

    server = SpeechServer(recognizer, config)
    await server.start()
    host = f"[{config.host}]" if ":" in config.host else config.host
    print(f"tinyasr serve: {recognizer.path} on http://{host}:{server.port}/ (page) and "
          f"ws://{host}:{server.port}{WS_PATH}; Ctrl-C stops", file=sys.stderr, flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    print(f"tinyasr serve: stopping; open sessions have {grace:g} s to finish", file=sys.stderr, flush=True)
    await server.shutdown(grace)
