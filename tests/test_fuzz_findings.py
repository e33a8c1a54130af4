"""Every reproducer of the 2026-12-05 fuzz run (../shared/fuzz-findings, issue 17) ends in the error it should.

Each file goes through the fuzzer's own oracle (tools/fuzz.py: describe, load, run / convert / transcribe) and
must raise exactly the TinyASRError subclass listed here, with the message fragment that names what is wrong.
Before the fixes each one raised a Python builtin error, allocated gigabytes or hung.  ``hang-*`` files run in
a child process with a timeout, so a regression fails the test instead of stalling the suite.
"""

import importlib.util
import json
import shutil
import subprocess
import sys

import pytest

from _paths import REPO, SHARED_DIR
from tinyasr.errors import AudioError, ConversionError, GraphError, ModelFileError

FINDINGS = SHARED_DIR / "fuzz-findings"
HANG_SECONDS = 120  # a child's limit: loading and refusing takes a few seconds even on a Raspberry Pi

# file -> (error class, fragment of its message)
EXPECTED = {
    "crash-python-audio-00e56f38a9.flac": (AudioError, "not a readable audio file"),
    "crash-python-audio-1d498c7100.flac": (AudioError, "not a readable audio file"),
    "crash-python-audio-c6f2e6540c.aiff": (AudioError, "sample rate 1 Hz is below 1000 Hz"),
    "crash-python-onnx-00df8f4a7a.onnx": (ConversionError, "(Conv) attribute 'pads' must be a list of 2 or 4 integers"),
    "crash-python-onnx-127d457707.onnx": (ConversionError, "(Conv) attribute 'pads' must be a list of 2 or 4 integers"),
    "crash-python-onnx-14058061d0.onnx": (ConversionError, "the graph has no outputs"),
    "crash-python-onnx-19c435c528.onnx": (GraphError, "node '/bn/BatchNormalization::mul' (Mul) failed on inputs"),
    "crash-python-onnx-2dae23e7ec.onnx": (GraphError, "node '/bn/BatchNormalization' (Clip) failed on inputs"),
    "crash-python-onnx-381edb00c0.onnx": (ConversionError, "node 'Conv_0' (Conv) cannot be read"),
    "crash-python-onnx-3ba3b8fb40.onnx": (ConversionError, "(BatchNormalization): scale, bias, mean and var must be"),
    "crash-python-onnx-42d5801855.onnx": (ConversionError, "node '/Relu_1' (Relu): needs 1 inputs"),
    "crash-python-onnx-43c351bc57.onnx": (ConversionError, "initializer 'head.bias': ONNX element type 1000"),
    "crash-python-onnx-736eee1782.onnx": (ConversionError, "got shapes [(5,), (32,), (32,), (32,)]"),
    "crash-python-onnx-88838e2457.onnx": (ConversionError, "the converted graph is inconsistent"),
    "crash-python-onnx-a894bcf5eb.onnx": (ConversionError, "got shapes [(32,), (32,), (5,), (32,)]"),
    "crash-python-onnx-c5229dd34f.onnx": (ConversionError, "node 'Conv_2' (Conv): needs 2 inputs"),
    "crash-python-onnx-cab57c4690.onnx": (GraphError, "bias has shape (32, 1, 7), expected (32,)"),
    "crash-python-onnx-da4cafc823.onnx": (ConversionError, "initializer 'w_dense': its data does not match dims"),
    "crash-python-onnx-ecdabd5e14.onnx": (ConversionError, "attribute 'kernel_shape' must be a list"),
    "crash-python-onnx-f0e6e8a775.onnx": (ConversionError, "attribute 'dilations' must be a list"),
    "crash-python-onnx-f72aaf01d3.onnx": (ConversionError, "attribute 'kernel_shape' must be a list"),
    "crash-python-tasr-1f71fbaf79.tasr": (GraphError, "(Conv) attribute 'dilations' must be a list"),
    "crash-python-tasr-3f7726cfc1.tasr": (ModelFileError, "density 5e-324 is too small"),
    "crash-python-tasr-3fc4d12d7c.tasr": (ModelFileError, "frontend config: highfreq=1000000"),
    "crash-python-tasr-4f6bf13a1f.tasr": (GraphError, "graph output 'y' declares dtype '1e-310'"),
    "crash-python-tasr-7031f7e578.tasr": (ModelFileError, "the decoder entry's 'type' must be one of"),
    "crash-python-tasr-926c36fb88.tasr": (ModelFileError, "n_fft=32768 with hop_length=1 at 16000 Hz needs"),
    "crash-python-tasr-9c50c6006b.tasr": (GraphError, "node 'co' (ConstantOfShape) attribute 'value'"),
    "crash-python-tasr-b889d02e41.tasr": (ModelFileError, "'frame_seconds' must be a number of seconds from 1e-06"),
    "crash-python-tasr-bcb9e0198e.tasr": (ModelFileError, "out_channels 2147483647 is outside 0..65535"),
    "hang-audio-3d7860bd46.wav": (AudioError, "sample rate 1 Hz is below 1000 Hz"),
    "hang-audio-416da6bc3d.aiff": (AudioError, "sample rate 1 Hz is below 1000 Hz"),
    "hang-audio-429b3dcb88.wav": (AudioError, "sample rate 7 Hz is below 1000 Hz"),
    "hang-tasr-62c85e74ad.tasr": (GraphError, "(Conv) attribute 'strides' must be a list of 1 or 2 integers"),
}


def _fuzz_module():
    spec = importlib.util.spec_from_file_location("tinyasr_fuzz_tool", REPO / "tools" / "fuzz.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


def _reproducers():
    if not FINDINGS.is_dir():
        return []
    return sorted(p.name for p in FINDINGS.iterdir() if p.suffix not in (".txt", ".json"))


def _run_oracle(fuzz, path):
    """The fuzzer's oracle for the file's kind (the ONNX options beside it)."""
    if path.suffix == ".tasr":
        return fuzz.oracle_tasr(str(path))
    if path.suffix == ".onnx":
        options = json.loads((FINDINGS / (path.stem + "-options.json")).read_text())
        return fuzz.oracle_onnx(str(path), options)
    return fuzz.oracle_audio(str(path))


@pytest.fixture(scope="module")
def fuzz():
    pytest.importorskip("onnx")
    return _fuzz_module()


def test_every_reproducer_has_an_expected_error():
    if not FINDINGS.is_dir():
        pytest.skip(f"shared fuzz findings not found at {FINDINGS}")
    assert _reproducers() == sorted(EXPECTED), "a reproducer was added or removed: list its expected error here"


@pytest.mark.parametrize("name", [n for n in _reproducers() if not n.startswith("hang-")])
def test_crash_reproducer_is_a_clean_error(name, fuzz, tmp_path):
    path = tmp_path / name  # a copy: conversion writes beside the file, and the shared folder is read-only
    shutil.copy(FINDINGS / name, path)
    error, fragment = EXPECTED[name]
    with pytest.raises(error) as caught:
        _run_oracle(fuzz, path)
    assert type(caught.value) is error
    assert fragment in str(caught.value)
    assert name in str(caught.value) or path.suffix == ".onnx", "the message names the file"


CHILD = """
import json, sys
sys.path.insert(0, {tests!r})
from test_fuzz_findings import _fuzz_module, _run_oracle
from pathlib import Path
try:
    _run_oracle(_fuzz_module(), Path(sys.argv[1]))
    print(json.dumps(["ran", ""]))
except Exception as exc:
    print(json.dumps([type(exc).__name__, str(exc)]))
"""


@pytest.mark.parametrize("name", [n for n in _reproducers() if n.startswith("hang-")])
def test_hang_reproducer_is_refused_in_time(name, tmp_path):
    path = tmp_path / name
    shutil.copy(FINDINGS / name, path)
    error, fragment = EXPECTED[name]
    done = subprocess.run([sys.executable, "-c", CHILD.format(tests=str(REPO / "tests")), str(path)],
                          capture_output=True, text=True, timeout=HANG_SECONDS, cwd=REPO)
    kind, message = json.loads(done.stdout.strip().splitlines()[-1])
    assert kind == error.__name__, done.stderr[-2000:]
    assert fragment in message
