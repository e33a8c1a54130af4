"""The tinyasr command: exit codes, batches that survive bad files, JSON output, info, convert."""

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
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
    assert capsys.readouterr().err == (f"tinyasr: {models / 'kws.tasr'}: 'tinyasr transcribe' needs a ctc or transducer model, "
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
def test_converting_a_conformer_export_with_its_config(tmp_path, capsys):
    """The Conformer's 2-D conv subsampling converts (parity: tests/test_conformer.py)."""
    pytest.importorskip("tinyasr_convert.cli")
    out = tmp_path / "c.tasr"
    assert main(["convert", str(CONFORMER), "-o", str(out), "--config",
                 str(CONFORMER.parent / "model_config.yaml")]) == 0
    assert capsys.readouterr().out.startswith(f"wrote {out}:")


def test_stream_options_are_checked_and_a_missing_file_is_named(models, tmp_path, capsys):
    for option in (["--chunk-ms", "0"], ["--rate", "-8000"], ["--max-utterance", "-1"], ["--threads", "0"]):
        assert main(["stream", "-m", str(models / "ctc.tasr"), "--input", "x.wav", *option]) == 2
        assert f"argument {option[0]}: must be" in capsys.readouterr().err
    assert main(["stream", "-m", str(models / "ctc.tasr"), "--input", str(tmp_path / "gone.wav")]) == 1
    assert _one_error_line(capsys) == f"tinyasr: {tmp_path / 'gone.wav'}: no such file"


def test_info_json(models, capsys):
    pytest.importorskip("tinyasr.cli.info")
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


# ---------------------------------------------------------------------------
# Issue 16: what a new user hit

VAD_ONNX = SHARED_DIR / "models" / "marblenet_vad" / "frame_vad_marblenet.onnx"
SAMPLE = ROOT / "tinyasr" / "models" / "sample_digits.wav"


def _flagging_model(tmp_path) -> Path:
    """The energy 'recogniser' of test_streaming whose decoder entry flags any speech as out of vocabulary
    (certainty < 1 holds for every posterior short of one-hot)."""
    from test_streaming import energy_ctc_parts
    from tinyasr.format.container import write_model

    _, tensors, manifest = energy_ctc_parts()
    manifest["decoder"].update(oov_score="certainty", oov_threshold=1.0)
    path = tmp_path / "flagging.tasr"
    write_model(path, manifest, tensors)
    return path


def test_out_of_vocabulary_is_a_warning_line_in_text_and_a_field_in_json(tmp_path, capsys):
    model = str(_flagging_model(tmp_path))
    assert main(["transcribe", str(CLIPS[0]), "-m", model]) == 0
    captured = capsys.readouterr()
    assert captured.out.strip()
    assert re.fullmatch(rf"tinyasr: {re.escape(str(CLIPS[0]))}: warning: the speech does not sound like this "
                        r"model's vocabulary \(confidence 0\.\d\d\); the text is likely wrong\n", captured.err)
    assert main(["transcribe", str(CLIPS[0]), "-m", model, "--format", "json"]) == 0
    captured = capsys.readouterr()
    line = json.loads(captured.out)
    assert line["out_of_vocabulary"] is True and 0 <= line["confidence"] < 1 and captured.err == ""
    assert main(["transcribe", str(SAMPLE)]) == 0  # the bundled model on its own sample: no warning
    captured = capsys.readouterr()
    assert captured.out.strip() and captured.err == ""


@pytest.mark.parametrize("command", [["transcribe", str(SAMPLE), str(SAMPLE)], ["info", "--json", "digits"]])
def test_a_closed_pipe_ends_quietly_with_the_sigpipe_status(command):
    """``tinyasr ... | head``: before, a BrokenPipeError traceback.  Here the reader is gone from the start, so
    the first write fails whatever the timing; 141 = 128 + SIGPIPE, what the shell reports for ``yes | head``."""
    import os

    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        done = subprocess.run([sys.executable, "-m", "tinyasr", *command], cwd=ROOT, stdout=write_end,
                              stderr=subprocess.PIPE, text=True, timeout=300)
    finally:
        os.close(write_end)
    assert done.returncode == 141 and done.stderr == "", done.stderr


def test_stream_from_stdin_needs_the_rate(capsys):
    """Raw PCM carries no rate: before, 16 kHz input was read as the model's 8 kHz, giving wrong digits."""
    assert main(["stream", "--input", "-"]) == 2
    assert _one_error_line(capsys) == ("tinyasr: --input - reads raw PCM, which carries no sample rate: give it with "
                                       "--rate HZ")


def test_bad_rates_cut_files_and_unknown_names_get_one_line(tmp_path, capsys, monkeypatch):
    import soundfile

    one_hertz = tmp_path / "one_hertz.wav"
    soundfile.write(one_hertz, [0.0] * 100, 1)
    for command in (["transcribe", str(one_hertz)], ["stream", "--input", str(one_hertz)]):
        assert main(command) == 1
        assert _one_error_line(capsys) == (f"tinyasr: {one_hertz}: the file's header: sample rate 1 Hz is below "
                                           "1000 Hz, too low for speech")
    cut = tmp_path / "cut.wav"
    data = SAMPLE.read_bytes()
    cut.write_bytes(data[:len(data) // 2])
    assert main(["transcribe", str(cut)]) == 0
    assert _one_error_line(capsys).startswith(f"tinyasr: warning: {cut}: the WAV header declares")
    monkeypatch.setenv("TINYASR_HOME", str(tmp_path))
    assert main(["transcribe", str(SAMPLE), "-m", "stt_en_quartznet15x5"]) == 3
    assert _one_error_line(capsys).endswith("; a public model is fetched once with "
                                            "'tinyasr download stt_en_quartznet15x5'")


@pytest.mark.skipif(not VAD_ONNX.exists(), reason="shared MarbleNet VAD not available")
def test_convert_a_raw_audio_classifier_with_its_rate_and_a_label_per_output(tmp_path, capsys):
    """MarbleNet's frame VAD takes raw audio and ends in a Softmax split into two one-class outputs.  Before,
    convert had no way to give its rate (classify: rc 3) and refused two labels for its two outputs."""
    pytest.importorskip("tinyasr_convert.cli")
    labels = tmp_path / "labels.txt"
    labels.write_text("silence\nspeech\n")
    out = tmp_path / "vad.tasr"
    assert main(["convert", str(VAD_ONNX), "-o", str(out), "--sample-rate", "16000", "--labels", str(labels),
                 "--decoder", "frame_classification"]) == 0, capsys.readouterr().err
    capsys.readouterr()
    assert main(["classify", "-m", str(out), str(CLIPS[0])]) == 0
    segments = capsys.readouterr().out.strip().split(", ")
    assert {s.split()[-1] for s in segments} == {"silence", "speech"}
    # the joined output holds onnxruntime's two outputs side by side
    ort = pytest.importorskip("onnxruntime")
    from tinyasr import Recognizer
    from tinyasr.audio.io import load_audio, to_pcm

    pcm = to_pcm(load_audio(CLIPS[0], 16000)[0], np.int16)[None, None, :]
    expected = ort.InferenceSession(str(VAD_ONNX), providers=["CPUExecutionProvider"]).run(
        ["score_silence", "score_active"], {"audio": pcm})
    frames = Recognizer(out).classify_frames(CLIPS[0]).probabilities
    np.testing.assert_allclose(frames, np.concatenate(expected, axis=-1)[0, :len(frames)], atol=1e-4)
    assert main(["convert", str(VAD_ONNX), "-o", str(tmp_path / "no_dir" / "x.tasr")]) == 1
    assert _one_error_line(capsys) == (f"tinyasr: {tmp_path / 'no_dir' / 'x.tasr'}: cannot write there: "
                                       f"{tmp_path / 'no_dir'} is not an existing directory")
