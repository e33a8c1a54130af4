"""The ``tinyasr`` command: transcribe, classify, batch, lm, info; convert and download (the ``convert`` extra).

A batch never stops at a bad file: each failure goes to stderr and the rest
still run; the exit code then says something failed.  Every TinyASRError is
shown as its message alone; any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import warnings
from typing import List, Optional

from tinyasr import __version__
from tinyasr.cli import batch as batch_cli
from tinyasr.cli import lm as lm_cli
from tinyasr.cli import stream as stream_cli
from tinyasr.cli import transcribe as transcribe_cli
from tinyasr.engine import threads
from tinyasr.errors import TinyASRError
from tinyasr.serve import cli as serve_cli

EXIT_OK = 0
EXIT_INPUT_FAILED = 1
EXIT_USAGE = 2  # argparse's own code
EXIT_MODEL = 3
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE: what the shell reports for a writer whose reader went away

EPILOG = """\
exit codes:
  0  every input succeeded
  1  some input failed (each failure is reported on stderr; the others still ran)
  2  usage error
  3  the model could not be loaded, or is of the wrong kind for the command

output:
  text  one file: the bare result; several files: one "PATH: result" line each
  json  JSON Lines: one object per file, {"path": ..., result fields} or {"path": ..., "error": message}
  transcribe also: txt, srt, vtt (subtitles cut at pauses and --max-line-chars), tsv (word times); with
  --output-dir one file per input, DIR/NAME.FORMAT (the path is printed instead of the result)
"""

MODEL_HELP = "a .tasr file, or the name of a bundled or downloaded model"


def _error(message: str) -> None:
    print(f"tinyasr: {message}", file=sys.stderr)


# ---------------------------------------------------------------------------
# transcribe / classify


# the decoder types (tinyasr.decoding.specs.DECODER_SPECS) each command reads, and the command for each type
COMMAND_DECODERS = {"transcribe": ("ctc", "transducer"), "classify": ("classification", "frame_classification")}
DECODER_COMMAND = {kind: command for command, kinds in COMMAND_DECODERS.items() for kind in kinds}


def _load_recognizer(args):
    """The Recognizer, or None after reporting why the model cannot do this command (once, not per file)."""
    from tinyasr.pipeline.recognizer import Recognizer

    try:
        recognizer = Recognizer(args.model, num_threads=args.threads, head=getattr(args, "head", None))
    except TinyASRError as exc:
        _error(str(exc))
        return None
    kind = recognizer.decoder.type if recognizer.decoder else None
    if kind not in COMMAND_DECODERS[args.command]:
        what = f"a {kind} model" if kind else "a model without a decoder (raw outputs: tinyasr.load_model)"
        advice = f"; use 'tinyasr {DECODER_COMMAND[kind]}'" if kind else ""
        _error(f"{recognizer.path}: 'tinyasr {args.command}' needs a "
               f"{' or '.join(COMMAND_DECODERS[args.command])} model, but this is {what}{advice}")
        return None
    return recognizer


def _format_classification(result) -> str:
    from tinyasr.decoding.results import FrameClassification

    if isinstance(result, FrameClassification):
        return ", ".join(f"{s.start:.2f}-{s.end:.2f} {s.label}" for s in result.segments)
    return ", ".join(f"{label} {p:.3f}" for label, p in result.labels)


def _run_batch(paths: List[str], analyse, to_text, output_format: str) -> int:
    """Apply ``analyse`` to each path, print each result as it comes, and report failures."""
    failed = 0
    for path in paths:
        try:
            result = analyse(path)
        except TinyASRError as exc:
            failed += 1
            message = str(exc)
            _error(message if path in message else f"{path}: {message}")
            if output_format == "json":
                print(json.dumps({"path": path, "error": message}), flush=True)
            continue
        if output_format == "json":
            print(json.dumps({"path": path, **result.to_dict()}), flush=True)
            continue  # the JSON carries confidence and out_of_vocabulary
        if len(paths) == 1:
            print(to_text(result), flush=True)
        else:
            print(f"{path}: {to_text(result)}", flush=True)
        if getattr(result, "out_of_vocabulary", False):
            from tinyasr.decoding.confidence import out_of_vocabulary_warning

            _error(out_of_vocabulary_warning(path, result.confidence))
    return EXIT_INPUT_FAILED if failed else EXIT_OK


def _transcribe(args) -> int:
    recognizer = _load_recognizer(args)
    if recognizer is None:
        return EXIT_MODEL
    return transcribe_cli.run(args, recognizer, _run_batch, _error)


def _classify(args) -> int:
    recognizer = _load_recognizer(args)
    if recognizer is None:
        return EXIT_MODEL
    if recognizer.decoder.type == "frame_classification":  # a classify model: checked by _load_recognizer
        analyse = recognizer.classify_frames
    else:
        def analyse(path):
            return recognizer.classify(path, top_k=args.top_k)
    return _run_batch(args.audio, analyse, _format_classification, args.format)


# ---------------------------------------------------------------------------
# convert / download / info


# commands that live in converters/ (the ``convert`` extra): name -> (module, description)
CONVERTER_COMMANDS = {
    "convert": ("tinyasr_convert.cli", "Convert a source model (ONNX) to a .tasr file"),
    "download": ("tinyasr_convert.download", "Fetch a public model, convert it once and keep it in the model cache"),
}
EXTRA_PACKAGES = ("onnx", "yaml", "torch")  # what the convert extra brings


def _run_converter_command(command: str, argv: List[str]) -> int:
    """Parse ``argv`` with the converter module's own arguments and run it, imported only now."""
    module_name, description = CONVERTER_COMMANDS[command]
    try:
        module = importlib.import_module(module_name)
        parser = argparse.ArgumentParser(prog=f"tinyasr {command}", description=description + ".")
        module.add_arguments(parser)
        return module.run(parser.parse_args(argv))
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] not in EXTRA_PACKAGES:
            raise
        _error(f"'tinyasr {command}' needs the converter extra ({exc.name} is missing): "
               "pip install 'tinyasr[convert]'")
    except TinyASRError as exc:
        _error(str(exc))
    return EXIT_INPUT_FAILED


def _info(args) -> int:
    from tinyasr.cli.info import format_summary, summarize
    from tinyasr.model_cache import resolve_model_path

    try:
        summary = summarize(resolve_model_path(args.model))
    except TinyASRError as exc:
        _error(str(exc))
        return EXIT_MODEL
    print(json.dumps(summary, indent=2) if args.json else format_summary(summary))
    return EXIT_OK


# ---------------------------------------------------------------------------
# the parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tinyasr",
        description="On-device speech recognition with .tasr models.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"tinyasr {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add_batch_command(name: str, help_text: str, model_required: bool, formats=("text", "json")):
        command = commands.add_parser(
            name, help=help_text, description=help_text, epilog=EPILOG,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        command.add_argument("audio", nargs="+", metavar="AUDIO", help="audio files (any format soundfile reads)")
        command.add_argument(
            "-m", "--model", required=model_required, help=MODEL_HELP + ("" if model_required else " (default: digits)")
        )
        command.add_argument("--format", choices=formats, default="text")
        command.add_argument("--threads", type=stream_cli.positive_int, metavar="N",
                             help="compute threads (default: $TINYASR_NUM_THREADS, else 1)")
        return command

    transcribe = add_batch_command("transcribe", "Transcribe speech to text.", model_required=False,
                                   formats=transcribe_cli.FORMATS)
    transcribe_cli.add_arguments(transcribe)
    classify = add_batch_command("classify", "Label audio clips (keywords, VAD).", model_required=True)
    classify.add_argument("--top-k", type=stream_cli.positive_int, default=5, help="labels to show per clip (default: 5)")

    for name, (_, description) in CONVERTER_COMMANDS.items():
        commands.add_parser(name, add_help=False,
                            help=f"{description} (needs tinyasr[convert]; 'tinyasr {name} -h' for options).")

    stream = commands.add_parser(
        "stream", help="Live transcription with partial results (microphone, stdin PCM or a file).",
        description="Live transcription with partial results (microphone, stdin PCM or a file).", epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    stream_cli.add_arguments(stream)

    serve_help = "WebSocket server for live recognition, with a browser page (needs tinyasr[serve])."
    serve_cli.add_arguments(commands.add_parser("serve", help=serve_help, description=serve_help))

    lm_cli.add_arguments(commands.add_parser("lm", help=lm_cli.HELP, description=lm_cli.HELP))
    batch_cli.add_arguments(commands.add_parser("batch", help=batch_cli.HELP, description=batch_cli.HELP))

    info = commands.add_parser("info", help="Describe a .tasr model.", description="Describe a .tasr model.")
    info.add_argument("model", metavar="MODEL", help=MODEL_HELP)
    info.add_argument("--json", action="store_true", help="print the summary as JSON")
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    """Run the command line; returns the exit code (see EPILOG)."""
    # This process is tinyasr's own: idle Numba OpenMP workers spin ~0.1-0.3 ms, then sleep (threads.py).
    # Read when Numba starts its pool, later; a wait policy or spin count the user chose wins.
    if "OMP_WAIT_POLICY" not in os.environ:
        os.environ.setdefault("GOMP_SPINCOUNT", str(threads.WORKER_SPIN_COUNT))
    parser = build_parser()
    try:
        args, rest = parser.parse_known_args(argv)
        if args.command in CONVERTER_COMMANDS:
            return _run_converter_command(args.command, rest)
        if rest:
            parser.error(f"unrecognized arguments: {' '.join(rest)}")
    except SystemExit as exc:  # argparse: --help, --version and usage errors
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    handlers = {"transcribe": _transcribe, "classify": _classify, "info": _info, "stream": stream_cli.run,
                "serve": serve_cli.run, "lm": lm_cli.run, "batch": batch_cli.run}
    return _quiet_on_closed_pipe(_with_one_line_warnings, handlers[args.command], args)


def _with_one_line_warnings(handler, args) -> int:
    """Run a command with tinyasr's warnings (a WAV cut short) shown as one ``tinyasr: warning:`` line."""
    def show(message, category, *_):
        print(f"tinyasr: warning: {message}", file=sys.stderr)

    with warnings.catch_warnings():
        warnings.showwarning = show
        return handler(args)


def _quiet_on_closed_pipe(run, *args) -> int:
    """``tinyasr ... | head``: when the reader closes the pipe, stop without a traceback, with the status a
    Unix tool killed by SIGPIPE has (128 + 13); stdout goes to /dev/null so the exit flush stays quiet."""
    try:
        code = run(*args)
        sys.stdout.flush()  # a closed pipe shows here rather than at interpreter exit
        return code
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
