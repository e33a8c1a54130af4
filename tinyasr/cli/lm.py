"""``tinyasr lm``: count a text file into a small ARPA n-gram model for beam search (tinyasr.decoding.lm)."""

from __future__ import annotations

import sys

from tinyasr.errors import TinyASRError

HELP = "Build a small word n-gram language model (ARPA, Witten-Bell) from a text file, one sentence a line."


def add_arguments(parser) -> None:
    parser.add_argument("text", metavar="TEXT", help="UTF-8 text, one sentence a line, words split by spaces")
    parser.add_argument("-o", "--output", required=True, metavar="FILE", help="the ARPA file (.gz: compressed)")
    parser.add_argument("--order", type=int, default=3, metavar="N", help="n-gram order, 1 to 10 (default: 3)")


def run(args) -> int:
    from tinyasr.decoding.lm import build_arpa

    try:
        count = build_arpa(args.text, args.output, order=args.order)
    except TinyASRError as exc:
        print(f"tinyasr: {exc}", file=sys.stderr)
        return 1
    print(f"{args.output}: {count} n-grams, order {args.order}", file=sys.stderr)
    return 0
