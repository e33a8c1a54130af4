"""README.md's examples run as written: its python blocks execute with the bundled model and sample, its two
commands are the ones CI runs and the transcription it promises is the one the CLI prints."""

import contextlib
import io
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

import tinyasr
from _paths import REPO
from tinyasr.audio.io import load_audio
from tinyasr.features.frontend import FrontendConfig, compute_features

README = (REPO / "README.md").read_text()
MODEL = REPO / "tinyasr" / "models" / "digits.tasr"
SAMPLE = REPO / "tinyasr" / "models" / "sample_digits.wav"
SAMPLE_TEXT = (REPO / "tinyasr" / "models" / "sample_digits.txt").read_text().strip()
# What a file name in a python block stands for: the bundled model and sample.
BUNDLED = {".tasr": MODEL, ".wav": SAMPLE}


def blocks(language):
    return re.findall(rf"^```{language}\n(.*?)^```", README, flags=re.S | re.M)


def sh_commands():
    """The README's shell lines, comments and blank lines dropped."""
    return [line for block in blocks("sh") for line in block.splitlines() if line and not line.startswith("#")]


SESSIONS = re.findall(r"^```\n\$ (tinyasr [^\n]*)\n(.*?)^```", README, flags=re.S | re.M)  # shown with their output


# The first command: a virtual environment in the line itself (PEP 668: Raspberry Pi OS / Debian bookworm's
# system pip refuses), the install, and the transcription test_the_first_command_prints_what_the_readme_says runs.
INSTALL_LINE = re.compile(r"python3 -m venv (\S+) && \1/bin/pip install \. && \1/bin/tinyasr (transcribe \S+)")


def test_readme_has_the_blocks_these_tests_read():
    assert len(blocks("python")) >= 1 and SESSIONS
    first, tests = sh_commands()[:2]  # the two commands at the top: install and transcribe, install and test
    assert INSTALL_LINE.fullmatch(first), first
    assert "pytest" in tests


def test_the_test_command_is_the_one_ci_runs():
    ci = (REPO / ".ci" / "run").read_text().splitlines()
    verbatim = ci[ci.index("# --- the README's test command, verbatim ---") + 1]
    assert sh_commands()[1] == verbatim


def test_the_first_command_prints_what_the_readme_says():
    promised = re.search(r"^prints `([^`]+)`", README, flags=re.M).group(1)
    assert promised == SAMPLE_TEXT
    command = INSTALL_LINE.fullmatch(sh_commands()[0]).group(2).split()
    done = subprocess.run([sys.executable, "-m", "tinyasr", *command], cwd=REPO, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout == promised + "\n"


def _given_names():
    """What a python block leaves to the reader: audio at 44.1 kHz, a 16 kHz chunk, the model's features."""
    frontend = FrontendConfig.from_dict(tinyasr.load_model(MODEL).frontend)
    features, _ = compute_features(load_audio(SAMPLE, frontend.sample_rate)[0], frontend)
    return {"samples": load_audio(SAMPLE, 44100)[0], "chunk": load_audio(SAMPLE, 16000)[0][:8000],
            "features": features[np.newaxis]}


@pytest.mark.parametrize("index", range(len(blocks("python"))))
def test_python_block_runs(index, tmp_path, monkeypatch):
    code = blocks("python")[index]
    for name in set(re.findall(r"""["']([\w.-]+\.(?:tasr|wav))["']""", code)):
        shutil.copy(BUNDLED[name[name.rindex("."):]], tmp_path / name)
    monkeypatch.chdir(tmp_path)
    namespace = _given_names()
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile(code, f"README.md python block {index + 1}", "exec"), namespace)
    lines = printed.getvalue().splitlines()
    if "print(result.text)" in code:  # the text, then one line per word with its times
        assert lines[0] == SAMPLE_TEXT
        words = [re.fullmatch(r"(\d+\.\d\d)-(\d+\.\d\d) (\w+)", line) for line in lines[1:]][:len(SAMPLE_TEXT.split())]
        assert [word.group(3) for word in words] == SAMPLE_TEXT.split()
        assert all(float(word.group(1)) <= float(word.group(2)) for word in words)
    if "outputs" in namespace:
        assert namespace["outputs"] and all(np.isfinite(v).all() for v in namespace["outputs"].values())


@pytest.mark.parametrize("command,shown", SESSIONS, ids=[c for c, _ in SESSIONS])
def test_shown_sessions_print_what_the_readme_shows(command, shown):
    """--realtime only paces the reading, so the run here goes at full speed."""
    args = [arg for arg in command.split()[1:] if arg != "--realtime"]
    done = subprocess.run([sys.executable, "-m", "tinyasr", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout == shown


def test_the_sample_recipe_writes_nowhere_unless_told(capsys):
    """``python -m recipes.digits.sample`` used to overwrite the bundled sample the README promises."""
    pytest.importorskip("scipy")
    from recipes.digits import sample

    with pytest.raises(SystemExit) as stopped:
        sample.main([])
    assert stopped.value.code == 2 and "--dest" in capsys.readouterr().err
