"""Property-based fuzzing, small enough for CI: whatever the bytes, tinyasr refuses cleanly or runs finite.

The property for every untrusted input (docs in SECURITY.md): the only exceptions are TinyASRError subclasses,
and what runs gives finite results (a raw Model.run may pass NaN weights through; text never comes from NaN).
Hypothesis draws the mutations through tools/fuzz.py's structure-aware mutators (seeded by the drawn integer),
so a failure shrinks to a seed that ``python3 tools/fuzz.py`` reproduces, plus raw field values for the
manifest validators and the audio headers.  The long campaign is tools/fuzz.py; these stay under ~30 s.
"""

import random

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from _paths import REPO
from test_fuzz_findings import _fuzz_module
from tinyasr.audio.io import load_audio
from tinyasr.decoding.specs import decoder_spec
from tinyasr.errors import TinyASRError
from tinyasr.features.frontend import FrontendConfig

fuzz = _fuzz_module()
SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
                derandomize=True)
SEEDS = [fuzz.tasr_split(p.read_bytes()) for p in sorted((REPO / "tests" / "data" / "format").glob("*.tasr"))]

json_scalars = (st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70)
                | st.floats(allow_nan=False) | st.sampled_from([5e-324, 3.5e38, 10**400, 2**63]) | st.text(max_size=8))
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=6), inner, max_size=4), max_leaves=12)


def _holds(run) -> None:
    """The property: a clean TinyASRError, or a result (finite where it is text)."""
    try:
        run()
    except TinyASRError:
        pass


@settings(max_examples=150, **SETTINGS)
@given(seed=st.integers(0, 2**32 - 1), index=st.integers(0, len(SEEDS) - 1), fix_crcs=st.booleans())
def test_tasr_reader_refuses_or_runs_mutated_models(seed, index, fix_crcs, tmp_path_factory):
    manifest, data = SEEDS[index]
    mutated, blob, _ = fuzz.mutate_tasr(random.Random(seed), manifest, data)
    try:
        raw = fuzz.tasr_join(mutated, blob, fix_crcs=fix_crcs)
    except (TypeError, ValueError, OverflowError):
        return  # a mutation json cannot write
    path = tmp_path_factory.mktemp("tasr") / "m.tasr"
    path.write_bytes(raw)
    _holds(lambda: fuzz.oracle_tasr(str(path)))


@settings(max_examples=60, **SETTINGS)
@given(position=st.integers(0, 10**6), value=st.integers(0, 255), index=st.integers(0, len(SEEDS) - 1))
def test_tasr_reader_refuses_flipped_bytes(position, value, index, tmp_path_factory):
    raw = bytearray(fuzz.tasr_join(*SEEDS[index]))
    raw[position % len(raw)] = value
    path = tmp_path_factory.mktemp("tasr") / "m.tasr"
    path.write_bytes(bytes(raw))
    _holds(lambda: fuzz.oracle_tasr(str(path)))


@settings(max_examples=100, **SETTINGS)
@given(entry=st.dictionaries(st.sampled_from(sorted(fuzz.FRONTEND_KEYS) + ["win_length", "window_periodic"]),
                             json_values, max_size=5))
def test_frontend_validator_accepts_or_refuses_cleanly(entry):
    try:
        config = FrontendConfig.from_dict(entry)
    except TinyASRError:
        return
    assert config.sample_rate / config.hop_length * config.n_fft <= 1 << 24  # the product rule held


@settings(max_examples=100, **SETTINGS)
@given(entry=st.dictionaries(st.sampled_from(sorted(fuzz.DECODER_KEYS)), json_values, max_size=5),
       kind=st.sampled_from(["ctc", "classification", "frame_classification"]))
def test_decoder_validator_accepts_or_refuses_cleanly(entry, kind):
    try:
        spec = decoder_spec({"type": kind, "output": "y", **entry}, "m.tasr")
    except TinyASRError:
        return
    assert spec.frame_seconds is None or 1e-6 <= spec.frame_seconds <= 86400


@pytest.fixture(scope="module")
def onnx_seeds():
    pytest.importorskip("onnx")
    return fuzz.onnx_seeds()


@settings(max_examples=25, **SETTINGS)
@given(seed=st.integers(0, 2**32 - 1), index=st.integers(0, 2))
def test_converter_refuses_or_converts_mutated_onnx(seed, index, onnx_seeds, tmp_path_factory):
    _, model, options = onnx_seeds[index]
    raw, options, _ = fuzz.mutate_onnx(random.Random(seed), model, options)
    path = tmp_path_factory.mktemp("onnx") / "m.onnx"
    path.write_bytes(raw)
    _holds(lambda: fuzz.oracle_onnx(str(path), options))


@settings(max_examples=80, **SETTINGS)
@given(rate=st.sampled_from([0, 1, 7, 999, 1000, 16000, 768001, 2**32 - 1]) | st.integers(0, 2**32 - 1),
       channels=st.integers(0, 300), bits=st.sampled_from([0, 8, 12, 16, 24, 32, 64]),
       fmt=st.sampled_from([1, 3, 0xFFFE, 7]), data_length=st.none() | st.integers(0, 2**32 - 1))
def test_wav_headers_load_or_refuse(rate, channels, bits, fmt, data_length, tmp_path_factory):
    path = tmp_path_factory.mktemp("wav") / "a.wav"
    path.write_bytes(fuzz._wav(rate=rate, channels=channels, bits=bits, fmt=fmt, frames=64,
                               data_length=data_length))
    try:
        samples, got = load_audio(path, sample_rate=16000)
    except TinyASRError:
        return
    assert got == 16000 and np.isfinite(samples).all()


@settings(max_examples=40, **SETTINGS)
@given(case=st.sampled_from([c for c in fuzz.audio_cases() if c[2] != ".wav" or c[0].startswith("float")]),
       position=st.integers(0, 63), value=st.integers(0, 255))
def test_flac_aiff_headers_load_or_refuse(case, position, value, tmp_path_factory):
    name, raw, suffix = case
    raw = bytearray(raw)
    if raw:
        raw[position % len(raw)] = value
    path = tmp_path_factory.mktemp("audio") / f"a{suffix}"
    path.write_bytes(bytes(raw))
    try:
        samples, _ = load_audio(path)
    except TinyASRError:
        return
    assert np.isfinite(samples).all()


def test_the_fork_server_classifies_every_outcome(tmp_path, monkeypatch):
    """tools/fuzz.py's children: a refusal, a finite run, a Python error, an abort and a hang are each told apart,
    in one batch (the crash and the hang kill their child; the rest of the batch still runs)."""
    import os
    import time

    behaviours = {
        "refused": lambda: (_ for _ in ()).throw(TinyASRError("no")),
        "finite": lambda: "finite",
        "exception": lambda: [][1],
        "signal": lambda: os.abort(),
        "hang": lambda: time.sleep(60),
    }
    monkeypatch.setitem(fuzz.ORACLES, "tasr", lambda path, extra: behaviours[extra]())
    seen = {}
    server = fuzz.ForkServer(tmp_path, jobs=1, batch=8, timeout=3.0, memory_mb=1024,
                             record=lambda case, report: seen.setdefault(case.name, report["outcome"]))
    for name in behaviours:
        server.submit(fuzz.Case("tasr", name, b"", ".tasr", [], name))
    server.drain()
    assert seen == {name: name for name in behaviours}
