"""The runtime must pip-install on a Raspberry Pi: importing it may pull in numpy, numba and soundfile only."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("onnx", "onnxruntime", "torch", "scipy", "librosa", "sentencepiece", "tinyasr_convert")


# Numba itself imports scipy when it is installed, so the child process hides these packages,
# as on a Raspberry Pi with only the runtime's dependencies: importing one fails as if absent.
BLOCKER = f"""
import importlib.abc, json, sys
class Absent(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {HEAVY!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}} (hidden by test_imports)", name=name)
sys.meta_path.insert(0, Absent())
"""


def _modules_after(statement: str):
    code = f"{BLOCKER}\n{statement}\nprint(json.dumps(sorted(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return set(json.loads(done.stdout.strip().splitlines()[-1]))


@pytest.mark.parametrize("statement", [
    "import tinyasr; from tinyasr.engine import offline, streaming; from tinyasr.features import frontend",
    "import tinyasr; from tinyasr.audio import io; from tinyasr.decoding import ctc, classification",
    "import tinyasr; from tinyasr.pipeline import recognizer, online, vad, long_form",
    "import tinyasr; from tinyasr.format import container, info; from tinyasr.features import streaming",
    "import tinyasr; tinyasr.Recognizer, tinyasr.Result, tinyasr.load_model, tinyasr.set_num_threads",
    "import tinyasr.cli.main",
])
def test_runtime_imports_no_converter_dependencies(statement):
    loaded = _modules_after(statement)
    assert not [m for m in HEAVY if m in loaded]


def test_public_api_and_version():
    import tinyasr

    for name in ("load_model", "Recognizer", "Result", "Token", "Word", "Classification", "set_num_threads"):
        assert name in tinyasr.__all__ and getattr(tinyasr, name) is not None
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert f'version = "{tinyasr.__version__}"' in pyproject
    with pytest.raises(AttributeError, match="no_such_name"):
        tinyasr.no_such_name


def test_openblas_core_choice_respects_the_user_and_needs_avx512():
    """tinyasr picks OpenBLAS's AVX-512 kernels only on AVX-512 CPUs, only before numpy loads, never over the user."""
    flags = set()
    if os.path.exists("/proc/cpuinfo"):
        for line in open("/proc/cpuinfo"):
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    avx512 = {"avx512f", "avx512cd", "avx512bw", "avx512dq", "avx512vl"} <= flags
    probe = "import os, tinyasr; print(os.environ.get('OPENBLAS_CORETYPE'))"

    def coretype(env_value, before=""):
        env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_CORETYPE"}
        if env_value is not None:
            env["OPENBLAS_CORETYPE"] = env_value
        done = subprocess.run([sys.executable, "-c", before + probe], cwd=ROOT, env=env, capture_output=True,
                              text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    assert coretype(None) == ("SkylakeX" if avx512 else "None")
    assert coretype("Haswell") == "Haswell"
    assert coretype(None, before="import numpy; ") == "None"  # too late: numpy already chose its kernels
