"""``tinyasr batch``: files, folders and manifests into one JSON Lines file, resumable, optionally on Dask."""

from __future__ import annotations

import json
import sys

from tinyasr.cli import transcribe as transcribe_cli
from tinyasr.errors import TinyASRError

HELP = "Transcribe many files (folders, NeMo-style JSONL manifests) into one resumable JSON Lines file."


def add_arguments(parser) -> None:
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="audio files, folders, manifests (.json/.jsonl)")
    parser.add_argument("-o", "--output", required=True, metavar="FILE",
                        help="JSON Lines results; files that already have a row are skipped")
    parser.add_argument("-m", "--model", help="a .tasr file, or the name of a bundled or downloaded model "
                                              "(default: digits)")
    parser.add_argument("--reference-key", default="text", metavar="KEY",
                        help="manifest field holding the reference text, for WER / CER (default: text)")
    parser.add_argument("--retry-errors", action="store_true", help="redo files whose row is an error")
    parser.add_argument("--scheduler", metavar="ADDRESS",
                        help="a Dask scheduler (tcp://host:8786) to spread the files over (tinyasr[cluster])")
    parser.add_argument("--chunk", type=int, default=8, metavar="N", help="files per Dask task (default: 8)")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    transcribe_cli.add_decoding_arguments(parser)


def _client(address):
    if address is None:
        return None
    try:
        from dask.distributed import Client
    except ImportError:
        raise TinyASRError("--scheduler needs Dask: pip install 'tinyasr[cluster]'") from None
    try:
        return Client(address, timeout="30s")
    except (OSError, TimeoutError, ValueError) as exc:
        raise TinyASRError(f"cannot reach the Dask scheduler {address}: {exc}") from None


def run(args) -> int:
    from tinyasr import batch
    from tinyasr.cli.progress import Progress, wanted

    try:
        decoding = transcribe_cli.decoding_of(args)
        client = _client(args.scheduler)
        with Progress(len(batch.collect(args.inputs, args.reference_key)), "files", wanted(args.quiet),
                      "batch") as bar:
            summary = batch.run(args.inputs, args.output, model=args.model, decoding=decoding, client=client,
                                chunk_size=args.chunk, reference_key=args.reference_key,
                                retry_errors=args.retry_errors, progress=bar.update)
    except TinyASRError as exc:
        print(f"tinyasr: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(summary.to_dict()), file=sys.stderr)
    return 1 if summary.failed else 0
