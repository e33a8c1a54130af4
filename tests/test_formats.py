"""Output formats: subtitles parsed back with the `srt` and `webvtt-py` libraries, times equal to the word
times; TSV and JSON round trips; the transcribe command's --format / --output-dir / beam options; progress."""

import csv
import io
import json
import subprocess
import sys

import pytest

from _paths import REPO
from tinyasr.cli.progress import Progress
from tinyasr.decoding.results import Result, Word
from tinyasr.pipeline.formats import SubtitleLayout, cues, render

srt = pytest.importorskip("srt")
webvtt = pytest.importorskip("webvtt")

SAMPLE = REPO / "tinyasr" / "models" / "sample_digits.wav"
SAMPLE_TEXT = (REPO / "tinyasr" / "models" / "sample_digits.txt").read_text().strip()


def words(*spans):
    return tuple(Word(text, start, end, 0.9) for text, start, end in spans)


def test_cues_split_at_pauses_line_length_and_duration():
    ws = words(("one", 0.0, 0.3), ("two", 0.4, 0.7), ("three", 2.0, 2.4), ("four", 2.5, 2.9))
    assert [c.text for c in cues(ws)] == ["one two", "three four"]  # the 1.3 s pause
    assert [c.text for c in cues(ws, SubtitleLayout(max_gap=5.0))] == ["one two three four"]
    assert [c.text for c in cues(ws, SubtitleLayout(max_gap=5.0, max_chars=9))] == ["one two", "three", "four"]
    assert [c.text for c in cues(ws, SubtitleLayout(max_gap=5.0, max_seconds=2.0))] == ["one two", "three four"]
    assert cues(()) == []


def result_of(ws):
    return Result(" ".join(w.text for w in ws), (), ws, 10.0)


def test_srt_and_vtt_parse_with_standard_libraries():
    ws = words(("héllo", 0.0, 0.5), ("world", 0.6, 1.004), ("again", 3661.25, 3662.5))
    result = result_of(ws)
    parsed = list(srt.parse(render(result, "srt")))
    assert [(c.index, c.content) for c in parsed] == [(1, "héllo world"), (2, "again")]
    assert [(c.start.total_seconds(), c.end.total_seconds()) for c in parsed] == [(0.0, 1.004), (3661.25, 3662.5)]
    captions = webvtt.from_buffer(io.StringIO(render(result, "vtt"))).captions
    assert [(c.start, c.end, c.text) for c in captions] == [
        ("00:00:00.000", "00:00:01.004", "héllo world"), ("01:01:01.250", "01:01:02.500", "again")]


def test_tsv_and_json_round_trip():
    ws = words(("a", 0.0, 0.25), ("b", 0.5, 0.75))
    rows = list(csv.DictReader(io.StringIO(render(result_of(ws), "tsv")), delimiter="\t"))
    assert [(r["word"], float(r["start"]), float(r["end"]), float(r["confidence"])) for r in rows] == [
        ("a", 0.0, 0.25, 0.9), ("b", 0.5, 0.75, 0.9)]
    loaded = json.loads(render(result_of(ws), "json"))
    assert loaded["text"] == "a b" and [w["start"] for w in loaded["words"]] == [0.0, 0.5]
    assert render(result_of(ws), "txt") == "a b\n"


def tinyasr(*args, cwd=REPO):
    return subprocess.run([sys.executable, "-m", "tinyasr", *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, timeout=300)


def test_output_dir_writes_every_format_with_the_word_times(tmp_path):
    (tmp_path / "a").mkdir()
    second = tmp_path / "a" / "other.wav"
    second.write_bytes(SAMPLE.read_bytes())
    outputs = tmp_path / "out"
    for fmt in ("json", "srt", "vtt", "tsv", "txt"):
        done = tinyasr("transcribe", SAMPLE, second, "--format", fmt, "--output-dir", outputs, "--max-line-chars", 16)
        assert done.returncode == 0, done.stderr
        if fmt == "json":  # JSON Lines: {"path": input, "output": file written}
            written = [(row["path"], row["output"]) for row in map(json.loads, done.stdout.splitlines())]
        else:  # "input: file written"
            written = [tuple(line.split(": ")) for line in done.stdout.splitlines()]
        assert written == [(str(SAMPLE), str(outputs / f"sample_digits.{fmt}")),
                           (str(second), str(outputs / f"other.{fmt}"))]
        assert done.stderr == ""  # no progress bar: stderr is not a terminal
    result = json.loads((outputs / "sample_digits.json").read_text())
    assert result["text"] == SAMPLE_TEXT
    assert (outputs / "other.txt").read_text() == SAMPLE_TEXT + "\n"
    expected = cues(tuple(Word(**w) for w in result["words"]), SubtitleLayout(max_chars=16))
    assert len(expected) >= 2 and all(len(c.text) <= 16 for c in expected)
    parsed = list(srt.parse((outputs / "sample_digits.srt").read_text()))
    assert [c.content for c in parsed] == [c.text for c in expected]
    assert " ".join(c.content for c in parsed) == SAMPLE_TEXT
    for cue, sub in zip(expected, parsed):  # times are the first word's start and the last word's end
        assert sub.start.total_seconds() == pytest.approx(cue.words[0].start, abs=5e-4)
        assert sub.end.total_seconds() == pytest.approx(cue.words[-1].end, abs=5e-4)
    captions = webvtt.read(str(outputs / "sample_digits.vtt")).captions
    assert [c.text for c in captions] == [c.text for c in expected]
    assert [c.start for c in captions] == [srt.timedelta_to_srt_timestamp(s.start).replace(",", ".")
                                           for s in parsed]
    rows = list(csv.DictReader(open(outputs / "sample_digits.tsv"), delimiter="\t"))
    assert [r["word"] for r in rows] == SAMPLE_TEXT.split()
    assert [float(r["start"]) for r in rows] == pytest.approx([w["start"] for w in result["words"]], abs=5e-4)


def test_transcribe_format_and_decoding_errors(tmp_path):
    done = tinyasr("transcribe", SAMPLE, SAMPLE, "--format", "srt")
    assert done.returncode == 2 and "needs --output-dir" in done.stderr
    same = tmp_path / "x" / "sample_digits.wav"
    same.parent.mkdir()
    same.write_bytes(SAMPLE.read_bytes())
    done = tinyasr("transcribe", SAMPLE, same, "--format", "txt", "--output-dir", tmp_path / "out")
    assert done.returncode == 2 and "would both be written to" in done.stderr
    done = tinyasr("transcribe", SAMPLE, "--hotword", ":3")
    assert done.returncode == 2 and "hotword ':3' has no text" in done.stderr
    done = tinyasr("transcribe", SAMPLE, "--lm", tmp_path / "absent.arpa")
    assert done.returncode == 2 and "absent.arpa: cannot read the language model" in done.stderr
    assert "Traceback" not in done.stderr


def test_beam_options_from_the_command_line(tmp_path):
    text = tmp_path / "digits.txt"
    text.write_text("five one nine two six nine\none two three\n")
    arpa = tmp_path / "digits.arpa"
    assert tinyasr("lm", text, "-o", arpa).returncode == 0
    hot = tmp_path / "hot.txt"
    hot.write_text("nine:1.5\n")
    done = tinyasr("transcribe", SAMPLE, "--beam", 4, "--lm", arpa, "--alpha", 0.3, "--beta", 0.5, "--hotwords", hot,
                   "--hotword", "six:1", "--format", "json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["text"] == SAMPLE_TEXT


def test_progress_bar_draws_only_when_enabled(capsys, monkeypatch):
    with Progress(3, "files", enabled=False) as bar:
        bar.update(3)
    assert capsys.readouterr().err == ""
    with Progress(3, "files", enabled=True, description="run") as bar:  # tqdm's bar when installed
        bar.update(3)
    assert "run" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "tqdm", None)  # without tqdm: the one-line bar
    with Progress(3, "files", enabled=True, description="run") as bar:
        bar.update(3)
    assert "3/3 files" in capsys.readouterr().err
