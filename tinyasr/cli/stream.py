"""``tinyasr stream``: live transcription from a microphone, stdin PCM or a file played in real time.

Kept apart from tinyasr/streaming.py so that building the CLI parser imports
nothing heavy (Numba loads only when the command runs).
"""

from __future__ import annotations

import argparse
import math
import sys

import numpy as np

from tinyasr.cli.transcribe import add_decoding_arguments, decoding_of
from tinyasr.errors import InputError, TinyASRError

PORTAUDIO_HINT = ("microphone input needs the optional 'sounddevice' package (pip install sounddevice) and the "
                  "PortAudio library (Debian / Raspberry Pi OS: sudo apt install libportaudio2)")


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def positive_seconds(text: str) -> float:
    """argparse type: a finite number of seconds > 0."""
    value = float(text)
    if not 0 < value < math.inf:
        raise argparse.ArgumentTypeError(f"must be a number of seconds > 0, got {text}")
    return value


def add_arguments(parser) -> None:
    """The options of ``tinyasr stream``."""
    parser.add_argument("-m", "--model", help="a .tasr file, or the name of a bundled or downloaded model "
                        "(default: digits)")
    parser.add_argument("--input", default=None, metavar="SOURCE",
                        help="an audio file, '-' for raw 16-bit little-endian mono PCM on stdin, or omit for the "
                        "microphone")
    parser.add_argument("--rate", type=positive_int, default=None, metavar="HZ",
                        help="sample rate of the microphone (default: the model's); required for stdin PCM, which "
                        "carries no rate")
    parser.add_argument("--realtime", action="store_true", help="play a file at real-time pace")
    parser.add_argument("--chunk-ms", type=positive_int, default=80, metavar="MS", help="audio per step (default: 80)")
    parser.add_argument("--silence-after-speech", type=positive_seconds, default=1.2, metavar="S",
                        help="endpoint after this much silence following speech (default: 1.2)")
    parser.add_argument("--silence-only", type=positive_seconds, default=2.4, metavar="S",
                        help="endpoint after this much silence without speech (default: 2.4)")
    parser.add_argument("--max-utterance", type=positive_seconds, default=20.0, metavar="S",
                        help="endpoint at this utterance length (default: 20)")
    parser.add_argument("--threads", type=positive_int, default=None, metavar="N", help="compute threads")
    add_decoding_arguments(parser)


def _file_chunks(path, chunk_ms: int, realtime: bool):
    import time

    import soundfile

    from tinyasr.audio.io import check_audio_file, check_audio_rate, warn_if_cut_short

    check_audio_file(path)
    warn_if_cut_short(path)
    try:
        handle = soundfile.SoundFile(path)
    except (RuntimeError, OSError, soundfile.LibsndfileError) as exc:
        raise InputError(f"{path}: cannot read audio: {exc}") from None
    with handle:
        rate = check_audio_rate(handle.samplerate, f"{path}: the file's header")
        step = max(1, rate * chunk_ms // 1000)
        started, fed = time.monotonic(), 0
        while True:
            block = handle.read(step, dtype="float32", always_2d=True)
            if not len(block):
                return
            if realtime:  # sleep until this chunk would have been recorded
                time.sleep(max(0.0, started + fed / rate - time.monotonic()))
            fed += len(block)
            yield block, rate


def _stdin_chunks(rate: int, chunk_ms: int):
    size = 2 * max(1, rate * chunk_ms // 1000)
    pending = b""
    while True:
        data = sys.stdin.buffer.read(size)
        if not data:
            return
        pending += data
        usable = len(pending) - len(pending) % 2
        if usable:
            yield np.frombuffer(pending[:usable], "<i2"), rate
            pending = pending[usable:]


def _microphone_chunks(rate: int, chunk_ms: int):
    try:
        import sounddevice
    except (ImportError, OSError) as exc:  # OSError: sounddevice present but PortAudio missing
        raise InputError(f"{PORTAUDIO_HINT} ({exc})") from None
    step = max(1, rate * chunk_ms // 1000)
    with sounddevice.InputStream(samplerate=rate, channels=1, dtype="float32", blocksize=step) as mic:
        while True:
            block, _ = mic.read(step)
            yield block, rate


def run(args) -> int:
    """``tinyasr stream``: partial text on one updating line (stderr), final results with times (stdout)."""
    from tinyasr.decoding.confidence import out_of_vocabulary_warning
    from tinyasr.pipeline.online import EndpointConfig, OnlineStream
    from tinyasr.pipeline.recognizer import Recognizer

    if args.input == "-" and args.rate is None:
        print("tinyasr: --input - reads raw PCM, which carries no sample rate: give it with --rate HZ",
              file=sys.stderr)
        return 2
    try:
        recognizer = Recognizer(args.model, num_threads=args.threads).with_decoding(decoding_of(args))
        stream = OnlineStream(recognizer, endpoint=EndpointConfig.simple(
            args.silence_after_speech, args.silence_only, args.max_utterance))
    except TinyASRError as exc:
        print(f"tinyasr: {exc}", file=sys.stderr)
        return 3
    rate = args.rate or stream.sample_rate
    if args.input is None:
        chunks = _microphone_chunks(rate, args.chunk_ms)
    elif args.input == "-":
        chunks = _stdin_chunks(rate, args.chunk_ms)
    else:
        chunks = _file_chunks(args.input, args.chunk_ms, args.realtime)
    shown = ""

    def show_final():
        nonlocal shown
        start = stream.utterance_start
        result = stream.finalize()
        if shown:
            print("\r" + " " * len(shown) + "\r", end="", file=sys.stderr, flush=True)
            shown = ""
        if result.text:
            print(f"[{start:8.2f} - {start + result.duration:8.2f}] {result.text}", flush=True)
        if result.out_of_vocabulary:
            span = f"{start:.2f}-{start + result.duration:.2f} s"
            print(f"tinyasr: {out_of_vocabulary_warning(span, result.confidence)}", file=sys.stderr, flush=True)

    try:
        for samples, chunk_rate in chunks:
            stream.accept_waveform(samples, chunk_rate)
            if stream.partial != shown:
                print("\r" + stream.partial.ljust(len(shown)), end="", file=sys.stderr, flush=True)
                shown = stream.partial
            if stream.is_endpoint:
                show_final()
    except KeyboardInterrupt:
        pass
    except TinyASRError as exc:
        end_partial_line = "\n" if shown else ""
        print(f"{end_partial_line}tinyasr: {exc}", file=sys.stderr)
        return 1
    show_final()
    return 0
