"""``tinyasr transcribe``'s own options: beam search with an LM and hotwords, output formats, files, progress."""

from __future__ import annotations

import os
from typing import List

from tinyasr.errors import TinyASRError

FORMATS = ("text", "txt", "json", "srt", "vtt", "tsv")  # "text": the bare transcript, "PATH: text" for several files
FILE_ONLY = ("srt", "vtt", "tsv")  # several inputs in these formats need --output-dir


def add_arguments(parser) -> None:
    add_decoding_arguments(parser)
    parser.add_argument("--head", choices=("transducer", "ctc"), help="a hybrid transducer + CTC model (NeMo "
                        "EncDecHybridRNNTCTC): which head decodes (default: transducer)")
    output = parser.add_argument_group("output")
    output.add_argument("--output-dir", metavar="DIR", help="write one file per input, DIR/NAME.FORMAT")
    output.add_argument("--max-line-chars", type=int, default=42, metavar="N",
                        help="subtitles: longest cue line (default: 42)")
    output.add_argument("--max-gap", type=float, default=0.8, metavar="SECONDS",
                        help="subtitles: a pause this long starts a new cue (default: 0.8)")
    output.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


def add_decoding_arguments(parser) -> None:
    """Beam search, LM and hotword options (transcribe and batch)."""
    search = parser.add_argument_group("decoding (default: greedy)")
    search.add_argument("--beam", type=int, metavar="N", help="CTC prefix beam search keeping N hypotheses")
    search.add_argument("--lm", metavar="FILE",
                        help="word n-gram LM: ARPA (.arpa or .arpa.gz; 'tinyasr lm' builds one) or a KenLM binary "
                        "file (needs the kenlm package)")
    search.add_argument("--alpha", type=float, default=0.5, help="LM weight (default: 0.5)")
    search.add_argument("--beta", type=float, default=1.0, help="score added per word with an LM (default: 1.0)")
    search.add_argument("--hotwords", metavar="FILE", help="words or phrases to boost, one 'phrase[:boost]' a line")
    search.add_argument("--hotword", action="append", default=[], metavar="PHRASE[:BOOST]",
                        help="a word or phrase to boost (natural-log score, default 2); repeatable")


def decoding_of(args):
    """The BeamSearch the options ask for, or None for greedy (a TinyASRError names a bad option)."""
    from tinyasr.decoding.hotwords import parse_hotword, read_hotwords
    from tinyasr.decoding.specs import BeamSearch

    hotwords = (read_hotwords(args.hotwords) if args.hotwords else []) + [parse_hotword(h) for h in args.hotword]
    if args.beam is None and not args.lm and not hotwords:
        return None
    return BeamSearch(beam=args.beam or 8, lm=args.lm, alpha=args.alpha, beta=args.beta, hotwords=hotwords)


def _output_paths(paths: List[str], directory: str, extension: str) -> List[str]:
    targets = [os.path.join(directory, os.path.splitext(os.path.basename(p))[0] + "." + extension) for p in paths]
    seen = {}
    for path, target in zip(paths, targets):
        if target in seen:
            raise TinyASRError(f"{seen[target]} and {path} would both be written to {target}")
        seen[target] = path
    return targets


class _Written:
    """What the batch loop prints for a file written to --output-dir: its path (and the result's flags, for
    the loop's out-of-vocabulary warning)."""

    def __init__(self, path: str, result):
        self.path = path
        self.out_of_vocabulary = getattr(result, "out_of_vocabulary", False)
        self.confidence = getattr(result, "confidence", 1.0)

    def to_dict(self) -> dict:
        return {"output": self.path}


def run(args, recognizer, run_batch, error) -> int:
    """Transcribe ``args.audio`` with ``recognizer``; ``run_batch`` prints or reports each file (cli.main)."""
    from tinyasr.cli.progress import Progress, file_progress, wanted
    from tinyasr.pipeline.formats import SubtitleLayout, render
    from tinyasr.pipeline.recognizer import file_duration

    output_format = "txt" if args.format == "text" else args.format
    try:
        recognizer = recognizer.with_decoding(decoding_of(args))
        layout = SubtitleLayout(max_chars=args.max_line_chars, max_gap=args.max_gap)
        targets = _output_paths(args.audio, args.output_dir, output_format) if args.output_dir else None
        if targets:
            os.makedirs(args.output_dir, exist_ok=True)
    except TinyASRError as exc:
        error(str(exc))
        return 2
    except OSError as exc:
        error(f"{args.output_dir}: cannot create the output folder: {exc.strerror or exc}")
        return 2
    if targets is None and len(args.audio) > 1 and output_format in FILE_ONLY:
        error(f"--format {output_format} with several inputs needs --output-dir")
        return 2
    target_of = dict(zip(args.audio, targets or []))
    batch = Progress(len(args.audio), "files", len(args.audio) > 1 and wanted(args.quiet), "transcribe")

    def analyse(path: str):
        try:
            with file_progress(file_duration(path), args.quiet or batch.enabled, os.path.basename(path)) as bar:
                result = recognizer.transcribe(path, progress=bar.update)
        finally:
            batch.update(1)
        if targets is None:
            return result
        try:
            with open(target_of[path], "w", encoding="utf-8") as handle:
                handle.write(render(result, output_format, layout))
        except OSError as exc:
            raise TinyASRError(f"{target_of[path]}: cannot write: {exc.strerror or exc}") from None
        return _Written(target_of[path], result)

    def to_text(result) -> str:
        if isinstance(result, _Written):
            return result.path
        return render(result, output_format, layout).rstrip("\n")

    with batch:
        return run_batch(args.audio, analyse, to_text, "json" if args.format == "json" else "text")
