"""The tinyasr command: exit codes, batches that survive bad files, JSON output, info, convert."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tinyasr.cli.main import main
from _paths import SHARED_DIR  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CONFORMER = SHARED_DIR / "models/nemo-random/conformer_ctc_small/model.onnx"
test_recognizer = pytest.importorskip("test_recognizer")  # builds the models (needs torch, onnx, the runtime)
CLIPS = test_recognizer.CLIPS
pytestmark = pytest.mark.skipif(not all(p.exists() for p in CLIPS), reason="shared audio not available")


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return test_recognizer.build_models(tmp_path_factory.mktemp("cli_models"))


@pytest.fixture(scope="module")
def expected_texts(models):
    """Transcripts by onnxruntime + an independent greedy decoder (see test_recognizer)."""
    return [test_recognizer.reference_transcript(models / "ctc.onnx", test_recognizer._read_16k(c))[0] for c in CLIPS]


def test_version_and_usage_errors(capsys):
    assert main(["--version"]) == 0
    assert "0.1.0" in capsys.readouterr().out
    assert main([]) == 2
    assert main(["transcribe"]) == 2
    assert main(["transcribe", "a.wav", "--no-such-flag"]) == 2
    assert main(["transcribe", "a.wav", "--threads", "0"]) == 2
    assert main(["classify", "a.wav"]) == 2  # classify needs -m
    assert "exit codes" in subprocess.run([sys.executable, "-m", "tinyasr", "--help"], cwd=ROOT,
                                          capture_output=True, text=True, timeout=60).stdout


def test_single_file_prints_bare_text(models, expected_texts, capsys):
    assert main(["transcribe", str(CLIPS[0]), "-m", str(models / "ctc.tasr"), "--threads", "1"]) == 0
    assert capsys.readouterr().out == expected_texts[0] + "\n"


def test_batch_reports_a_missing_file_and_still_transcribes_the_rest(models, expected_texts, tmp_path, capsys):
    missing = tmp_path / "missing.wav"
    code = main(["transcribe", str(missing), str(CLIPS[0]), str(CLIPS[1]), "-m", str(models / "ctc.tasr")])
    captured = capsys.readouterr()
    assert code == 1
    assert captured.out.splitlines() == [f"{CLIPS[0]}: {expected_texts[0]}", f"{CLIPS[1]}: {expected_texts[1]}"]
    assert "missing.wav" in captured.err and "Traceback" not in captured.err


def test_json_lines_parse_and_carry_words_tokens_and_errors(models, expected_texts, tmp_path, capsys):
    missing = tmp_path / "missing.wav"
    code = main(["transcribe", str(CLIPS[0]), str(missing), "-m", str(models / "ctc.tasr"), "--format", "json"])
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert code == 1 and len(lines) == 2
    good, bad = lines
    assert good["path"] == str(CLIPS[0]) and good["text"] == expected_texts[0]
    assert [w["text"] for w in good["words"]] == expected_texts[0].split()
    assert all(w["start"] <= w["end"] <= good["duration"] for w in good["words"])
    assert "".join(t["text"] for t in good["tokens"]).split() == expected_texts[0].split()
    assert bad["path"] == str(missing) and "missing.wav" in bad["error"]


def test_model_that_cannot_be_loaded_exits_3(tmp_path, capsys):
    assert main(["transcribe", str(CLIPS[0]), "-m", str(tmp_path / "absent.tasr")]) == 3
    broken = tmp_path / "broken.tasr"
    broken.write_bytes(b"not a model")
    assert main(["transcribe", str(CLIPS[0]), "-m", str(broken)]) == 3
    err = capsys.readouterr().err
    assert "absent.tasr" in err and "broken.tasr" in err and "Traceback" not in err


def test_classify_prints_top_k(models, capsys):
    code = main(["classify", str(CLIPS[1]), "-m", str(models / "kws.tasr"), "--top-k", "2", "--format", "json"])
    (line,) = capsys.readouterr().out.splitlines()
    result = json.loads(line)
    assert code == 0 and len(result["labels"]) == 2
    assert set(x["label"] for x in result["labels"]) <= set(test_recognizer.KEYWORDS)
    assert result["labels"][0]["probability"] >= result["labels"][1]["probability"]


def test_classify_a_frame_model_prints_segments(models, capsys):
    assert main(["classify", str(CLIPS[0]), "-m", str(models / "vad.tasr")]) == 0
    segments = [part.split(" ") for part in capsys.readouterr().out.strip().split(", ")]
    assert len(segments) > 1 and all(label in test_recognizer.VAD_LABELS for _, label in segments)
    spans = [tuple(map(float, span.split("-"))) for span, _ in segments]
    assert spans[0][0] == 0 and all(a[1] == b[0] for a, b in zip(spans, spans[1:]))


def test_a_model_of_the_wrong_kind_is_reported_once_with_exit_3(models, capsys):
    assert main(["classify", str(CLIPS[0]), str(CLIPS[1]), "-m", str(models / "ctc.tasr")]) == 3
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == (
        f"tinyasr: {models / 'ctc.tasr'}: 'tinyasr classify' needs a classification or frame_classification model, "
        "but this is a ctc model; use 'tinyasr transcribe'\n")
    assert main(["transcribe", str(CLIPS[0]), "-m", str(models / "kws.tasr")]) == 3
    assert capsys.readouterr().err == (f"tinyasr: {models / 'kws.tasr'}: 'tinyasr transcribe' needs a ctc model, "
                                       "but this is a classification model; use 'tinyasr classify'\n")


def _one_error_line(capsys) -> str:
    """The command's stderr, which must be a single 'tinyasr: ...' line."""
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("tinyasr: "), captured.err
    return lines[0]


def test_bad_audio_files_get_one_line_each(models, tmp_path, capsys):
    text = tmp_path / "text.wav"
    text.write_text("hello, this is not audio")
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    for path, message in [(text, "not a readable audio file (Format not recognised.)"),
                          (empty, "file is empty (0 bytes)"), (tmp_path, "is a directory, not an audio file"),
                          (tmp_path / "missing.wav", "no such file")]:
        assert main(["transcribe", str(path), "-m", str(models / "ctc.tasr")]) == 1
        assert _one_error_line(capsys) == f"tinyasr: {path}: {message}"


def test_damaged_model_files_exit_3_naming_the_damage(models, tmp_path, capsys):
    data = (models / "ctc.tasr").read_bytes()
    truncated = tmp_path / "truncated.tasr"
    truncated.write_bytes(data[: len(data) // 2])
    flipped = tmp_path / "flipped.tasr"
    flipped.write_bytes(data[:-100] + bytes([data[-100] ^ 0xFF]) + data[-99:])  # inside the last tensor's bytes
    for path, message in [(truncated, "header declares .*: truncated"), (flipped, "crc32 mismatch, the data is corrupted"),
                          (tmp_path, "is a directory, not a .tasr model file")]:
        for command in (["transcribe", str(CLIPS[0]), "-m", str(path)], ["info", str(path)]):
            assert main(command) == 3
            assert re.fullmatch(f"tinyasr: {path}: .*{message}.*", _one_error_line(capsys))


def test_bad_convert_sources_get_one_line(models, tmp_path, capsys):
    pytest.importorskip("tinyasr_convert.cli")
    not_onnx = tmp_path / "text.onnx"
    not_onnx.write_text("hello")
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes((models / "ctc.onnx").read_bytes()[:3000])
    out = str(tmp_path / "out.tasr")
    for source, message in [(not_onnx, "not a readable ONNX model"), (truncated, "not a readable ONNX model"),
                            (tmp_path / "notes.txt", "'tinyasr convert' reads .onnx and .nemo files")]:
        assert main(["convert", str(source), "-o", out]) == 1
        assert _one_error_line(capsys).startswith(f"tinyasr: {source}: {message}")
    # a blank index alone used to be dropped silently, leaving a model without a decoder
    assert main(["convert", str(models / "ctc.onnx"), "-o", out, "--blank", "3"]) == 1
    assert "blank index (3) was given without labels" in _one_error_line(capsys)


@pytest.mark.skipif(not CONFORMER.exists(), reason="shared NeMo models not available")
def test_converting_a_conformer_names_the_unsupported_node(tmp_path, capsys):
    pytest.importorskip("tinyasr_convert.cli")
    assert main(["convert", str(CONFORMER), "-o", str(tmp_path / "c.tasr")]) == 1
    assert re.fullmatch(r"tinyasr: model.onnx: node '/pre_encode/conv/conv.0/Conv' \(Conv\) is a 2-D convolution; "
                        r"only 1-D convolutions .* are supported .*", _one_error_line(capsys))


def test_stream_options_are_checked_and_a_missing_file_is_named(models, tmp_path, capsys):
    for option in (["--chunk-ms", "0"], ["--rate", "-8000"], ["--max-utterance", "-1"], ["--threads", "0"]):
        assert main(["stream", "-m", str(models / "ctc.tasr"), "--input", "x.wav", *option]) == 2
        assert f"argument {option[0]}: must be" in capsys.readouterr().err
    assert main(["stream", "-m", str(models / "ctc.tasr"), "--input", str(tmp_path / "gone.wav")]) == 1
    assert _one_error_line(capsys) == f"tinyasr: {tmp_path / 'gone.wav'}: no such file"


def test_info_json(models, capsys):
    pytest.importorskip("tinyasr.format.info")
    assert main(["info", str(models / "ctc.tasr"), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert "logprobs" in json.dumps(summary)  # the CTC output the converter recorded
    assert main(["info", str(models / "ctc.tasr")]) == 0
    assert capsys.readouterr().out.strip()
    assert main(["info", str(models / "nothing.tasr")]) == 3
    assert "nothing.tasr" in capsys.readouterr().err


def test_convert_through_the_cli(models, tmp_path, capsys):
    pytest.importorskip("tinyasr_convert.cli")
    labels = tmp_path / "labels.json"
    labels.write_text(json.dumps(test_recognizer.KEYWORDS))
    out = tmp_path / "kws.tasr"
    code = main(["convert", str(models / "kws.onnx"), "-o", str(out), "--labels", str(labels)])
    assert code == 0, capsys.readouterr().err
    assert out.exists()
    assert main(["convert", str(tmp_path / "absent.onnx"), "-o", str(out)]) != 0
    assert "absent.onnx" in capsys.readouterr().err


def test_convert_without_the_extra_says_what_to_install(tmp_path):
    hide_onnx = (
        "import importlib.abc, sys\n"
        "class Absent(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] == 'onnx':\n"
        "            raise ModuleNotFoundError(f'No module named {name!r}', name=name)\n"
        "sys.meta_path.insert(0, Absent())\n"
        "from tinyasr.cli.main import main\n"
        f"sys.exit(main(['convert', 'm.onnx', '-o', {str(tmp_path / 'm.tasr')!r}]))\n"
    )
    done = subprocess.run([sys.executable, "-c", hide_onnx], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert "pip install 'tinyasr[convert]'" in done.stderr and "Traceback" not in done.stderr


def test_subprocess_batch_exit_code_and_no_traceback(models, expected_texts, tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "tinyasr", "transcribe", str(tmp_path / "gone.wav"), str(CLIPS[0]),
         "-m", str(models / "ctc.tasr")],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 1
    assert done.stdout.splitlines() == [f"{CLIPS[0]}: {expected_texts[0]}"]
    assert "gone.wav" in done.stderr and "Traceback" not in done.stderr
