"""A transcript as people use it: plain text, JSON, SubRip (.srt), WebVTT (.vtt) or a tab-separated word list.

Subtitles are cut from the word times: a cue ends at a pause longer than ``max_gap`` seconds, before a word
that would make its line longer than ``max_chars`` characters, or once it lasts ``max_seconds``; each cue
runs from its first word's start to its last word's end, so the subtitle times are the word times.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Callable, Dict, List, Sequence

from tinyasr.decoding.results import Result, Word
from tinyasr.errors import TinyASRError


@dataclass(frozen=True)
class SubtitleLayout:
    """How words are grouped into cues (one line each)."""

    max_chars: int = 42  # the usual broadcast limit for one subtitle line
    max_gap: float = 0.8  # seconds of silence that end a cue
    max_seconds: float = 7.0

    def __post_init__(self):
        if self.max_chars < 1 or self.max_gap <= 0 or self.max_seconds <= 0:
            raise TinyASRError(f"subtitle layout needs max_chars >= 1 and positive max_gap and max_seconds, got "
                               f"{self.max_chars}, {self.max_gap}, {self.max_seconds}")


@dataclass(frozen=True)
class Cue:
    start: float
    end: float
    words: Sequence[Word]

    @property
    def text(self) -> str:
        return " ".join(w.text for w in self.words)


def cues(words: Sequence[Word], layout: SubtitleLayout = SubtitleLayout()) -> List[Cue]:
    """Words grouped into subtitle cues by pauses, line length and duration (see the module docstring)."""
    groups: List[List[Word]] = []
    for word in words:
        current = groups[-1] if groups else None
        if (current is None or word.start - current[-1].end > layout.max_gap
                or len(" ".join(w.text for w in current + [word])) > layout.max_chars
                or word.end - current[0].start > layout.max_seconds):
            groups.append([word])
        else:
            current.append(word)
    return [Cue(group[0].start, group[-1].end, tuple(group)) for group in groups]


def _clock(seconds: float, separator: str) -> str:
    millis = int(round(seconds * 1000))
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    secs, millis = divmod(millis, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{separator}{millis:03d}"


def to_srt(result: Result, layout: SubtitleLayout = SubtitleLayout()) -> str:
    blocks = [f"{i}\n{_clock(c.start, ',')} --> {_clock(c.end, ',')}\n{c.text}\n"
              for i, c in enumerate(cues(result.words, layout), 1)]
    return "\n".join(blocks)


def to_vtt(result: Result, layout: SubtitleLayout = SubtitleLayout()) -> str:
    blocks = [f"{_clock(c.start, '.')} --> {_clock(c.end, '.')}\n{c.text}\n" for c in cues(result.words, layout)]
    return "\n".join(["WEBVTT\n", *blocks])


def to_tsv(result: Result, layout: SubtitleLayout = SubtitleLayout()) -> str:
    """One word a line: start and end seconds, confidence, word (a header line first)."""
    rows = ["start\tend\tconfidence\tword"]
    rows += [f"{w.start:.3f}\t{w.end:.3f}\t{w.confidence:.4f}\t{w.text}" for w in result.words]
    return "\n".join(rows) + "\n"


def to_json(result: Result, layout: SubtitleLayout = SubtitleLayout()) -> str:
    return json.dumps(result.to_dict(), ensure_ascii=False) + "\n"


def to_txt(result: Result, layout: SubtitleLayout = SubtitleLayout()) -> str:
    return result.text + "\n"


# format name -> renderer; the file extension is the name
FORMATS: Dict[str, Callable[[Result, SubtitleLayout], str]] = {
    "txt": to_txt, "json": to_json, "srt": to_srt, "vtt": to_vtt, "tsv": to_tsv,
}


def render(result: Result, output_format: str, layout: SubtitleLayout = SubtitleLayout()) -> str:
    """``result`` as the text of a file in ``output_format`` (one of FORMATS)."""
    if output_format not in FORMATS:
        raise TinyASRError(f"output format {output_format!r}; expected one of {', '.join(FORMATS)}")
    return FORMATS[output_format](result, layout)
