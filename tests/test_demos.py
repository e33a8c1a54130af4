"""Smoke tests of demos/: each runs as a user would run it, with the bundled sample instead of a microphone,
and prints the sample's transcript (from the offline path, not from the demo's own code)."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DEMOS = ROOT / "demos"
SAMPLE = "tinyasr/models/sample_digits.wav"
TEXT = (ROOT / "tinyasr" / "models" / "sample_digits.txt").read_text().strip()

RUNS = {  # demo -> (arguments, a pattern its standard output must contain)
    "live_mic.py": (["--file", SAMPLE], rf"\[  0\.00 -   4\.27\] {TEXT}"),
    "web_page.py": (["--port", "0", "--file", SAMPLE], rf"\[  0\.00 -   4\.27\] {TEXT}"),
    "pi_voice_commands.py": (["--file", SAMPLE], rf"heard: {TEXT}\n  five -> music on\n  one -> lights on\n"),
    "embed.py": ([], rf"file: {TEXT} \[\('five', \d+\.\d+\).*\nstream: {TEXT}\n"),
    "batch.py": ([SAMPLE], rf'"text": "{TEXT}"'),
}


def test_every_demo_is_listed_and_tested():
    readme = (DEMOS / "README.md").read_text()
    demos = sorted(p.name for p in DEMOS.glob("*.py"))
    assert demos == sorted(RUNS)
    for name in demos:
        assert f"`python demos/{name}" in readme, name


def test_embedding_takes_under_30_lines():
    assert len((DEMOS / "embed.py").read_text().splitlines()) < 30


@pytest.mark.parametrize("demo", RUNS)
def test_demo_runs_on_the_sample(demo):
    if demo == "web_page.py":
        pytest.importorskip("websockets")
    arguments, pattern = RUNS[demo]
    done = subprocess.run([sys.executable, str(DEMOS / demo), *arguments], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert re.search(pattern, done.stdout), done.stdout
