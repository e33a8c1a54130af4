"""Real and NeMo-exported models from ../shared convert and match onnxruntime / NeMo's own test vectors."""

from __future__ import annotations

import glob
import json
import os
from math import gcd

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from tinyasr_convert import convert  # noqa: E402
from tinyasr.engine.offline import load_model  # noqa: E402
from _paths import SHARED_DIR  # noqa: E402

SHARED = str(SHARED_DIR)
NEMO = os.path.join(SHARED, "models", "nemo-random")
VAD = os.path.join(SHARED, "models", "marblenet_vad", "frame_vad_marblenet.onnx")
SEPARABLE = ["matchboxnet_3x1x64_v1", "marblenet_3x2x64", "quartznet_5x5", "quartznet_15x5", "citrinet_256"]
TOLERANCE = 1e-4  # max abs difference to onnxruntime's outputs


def _needs(path):
    return pytest.mark.skipif(not os.path.exists(path), reason=f"{path} not available")


@_needs(NEMO)
@pytest.mark.parametrize("name", SEPARABLE)
def test_nemo_export_matches_test_vectors(name, tmp_path):
    folder = os.path.join(NEMO, name)
    labels = json.load(open(os.path.join(folder, "labels.json")))
    decoder = "ctc" if name.startswith(("quartznet", "citrinet")) else "classification"
    model = load_model(convert(os.path.join(folder, "model.onnx"), tmp_path / "m.tasr", labels=labels, decoder=decoder))
    assert model.decoder["type"] == decoder
    vectors = np.load(os.path.join(folder, "test_vectors.npz"))
    for prefix in ("", "case2."):
        feeds = {k[len(prefix) + len("input."):]: vectors[k] for k in vectors.files if k.startswith(prefix + "input.")}
        assert feeds, prefix
        outputs = model.run(feeds)
        for key in vectors.files:
            if key.startswith(prefix + "output."):
                expected = vectors[key]
                got = outputs[key[len(prefix) + len("output."):]]
                assert got.shape == expected.shape and got.dtype == expected.dtype
                np.testing.assert_allclose(got, expected, rtol=0, atol=TOLERANCE, err_msg=f"{name} {key}")


def _clip_as_int16(path) -> np.ndarray:
    """Mono 16 kHz int16 [1, 1, samples]: channel mean, scipy.signal.resample_poly, round and clip."""
    import soundfile
    from scipy.signal import resample_poly

    audio, rate = soundfile.read(path, dtype="float64", always_2d=True)
    audio = audio.mean(axis=1)
    if rate != 16000:
        g = gcd(16000, rate)
        audio = resample_poly(audio, 16000 // g, rate // g)
    return np.clip(np.round(audio * 32768.0), -32768, 32767).astype(np.int16)[None, None, :]


@_needs(VAD)
def test_real_marblenet_vad_matches_onnxruntime_on_every_clip(tmp_path):
    clips = sorted(glob.glob(os.path.join(SHARED, "audio", "*.wav")) + glob.glob(os.path.join(SHARED, "audio", "*.flac")))
    assert len(clips) >= 10
    model = load_model(convert(VAD, tmp_path / "vad.tasr"))
    assert [(v.name, v.dtype) for v in model.inputs] == [("audio", "int16")]
    assert [v.name for v in model.outputs] == ["score_silence", "score_active", "signal_len"]
    session = ort.InferenceSession(VAD, providers=["CPUExecutionProvider"])
    for clip in clips:
        audio = _clip_as_int16(clip)
        expected = dict(zip([o.name for o in session.get_outputs()], session.run(None, {"audio": audio})))
        got = model.run({"audio": audio})
        for name, want in expected.items():
            assert got[name].dtype == want.dtype and got[name].shape == want.shape, (clip, name)
            np.testing.assert_allclose(got[name], want, rtol=0, atol=TOLERANCE, err_msg=f"{clip} {name}")
