"""Transducer decoding against NeMo: greedy token ids, frames and TDT durations identical to NeMo's own greedy
decoders (stored in each model's test vectors, decoded from the stored encoder outputs), and the prediction
network + joint read from NeMo's decoder_joint ONNX (one step and the full lattice against onnxruntime's stored
outputs) and from the LSTM transducer's .nemo (against torch's stored first step)."""

from __future__ import annotations

import numpy as np
import pytest

from tinyasr.decoding.transducer import Joint, LSTMLayer, PredictionNetwork, Transducer, greedy, rnnt_greedy
from tinyasr.errors import ConversionError, GraphError
from _paths import SHARED_DIR

onnx = pytest.importorskip("onnx")
from tinyasr_convert.nemo import read_nemo  # noqa: E402
from tinyasr_convert.transducer import decoder_joint, nemo_prediction_and_joint  # noqa: E402

NEMO = SHARED_DIR / "models" / "nemo-random"
pytestmark = pytest.mark.skipif(not NEMO.exists(), reason=f"shared NeMo models not available ({NEMO})")
ONNX_PAIRS = ["conformer_transducer_small", "fastconformer_tdt_small", "fastconformer_hybrid_small"]
CASES = [("", 0), ("case2.", 0), ("case2.", 1)]  # (test-vector prefix, utterance)


def _vectors(name):
    return np.load(NEMO / name / "test_vectors.npz")


def _from_onnx(name):
    z = _vectors(name)
    prediction, joint = decoder_joint(onnx.load(str(NEMO / name / "decoder_joint-model.onnx")))
    durations = z["meta.tdt_durations"] if "meta.tdt_durations" in z.files else ()
    return Transducer(prediction, joint, int(z["meta.blank_index"]), durations), z


def _stored(z, prefix, key, b):
    return z[f"{prefix}{key}_{b}"] if prefix else z[key]


@pytest.mark.parametrize("prefix,b", CASES)
@pytest.mark.parametrize("name", ONNX_PAIRS)
def test_greedy_is_token_identical_to_nemo(name, prefix, b):
    model, z = _from_onnx(name)
    hyp = greedy(model, z[f"{prefix}output.outputs"][b], int(z[f"{prefix}output.encoded_lengths"][b]),
                 int(z["meta.max_symbols_per_step"]))
    assert hyp.tokens == _stored(z, prefix, "greedy.tokens", b).tolist()
    if not prefix:  # frames and durations are stored for the B=1 case
        assert hyp.frames == z["greedy.timestamps"].tolist()
        if model.durations:
            assert hyp.durations == z["greedy.durations"].tolist()
    assert len(hyp.tokens) >= 5


@pytest.mark.parametrize("name", ONNX_PAIRS)
def test_decoder_joint_step_and_lattice_match_onnxruntime(name):
    """The first step (blank into zero states) and the joint over every frame x 3 tokens (djfull), as
    onnxruntime computed them on the exported graph."""
    model, z = _from_onnx(name)
    start = model.start()
    h, c = start.state[0]
    np.testing.assert_allclose(h, z["dj.output.output_states_1"][0], atol=1e-6)
    np.testing.assert_allclose(c, z["dj.output.output_states_2"][0], atol=1e-6)
    frame = model.joint.project_encoder(z["dj.input.encoder_outputs"][0].T)
    np.testing.assert_allclose(model.joint.logits(frame[0], start.projected), z["dj.output.outputs"].ravel(),
                               atol=2e-5, rtol=1e-5)
    frames = model.joint.project_encoder(z["djfull.input.encoder_outputs"][0].T)
    state, expected = model.prediction.initial_state(), z["djfull.output.outputs"][0]
    for u, token in enumerate(z["djfull.input.targets"][0]):
        output, state = model.prediction.step(int(token), state)
        projected = model.joint.project_prediction(output)
        lattice = np.stack([model.joint.logits(frames[t], projected) for t in range(frames.shape[0])])
        np.testing.assert_allclose(lattice, expected[:, u], atol=2e-5, rtol=1e-5)


@pytest.fixture(scope="module")
def lstm_transducer():
    archive = read_nemo(NEMO / "lstm_transducer_small" / "model.nemo")
    prediction, joint = nemo_prediction_and_joint(archive.weights, archive.config, "lstm_transducer_small")
    return Transducer(prediction, joint, 128), _vectors("lstm_transducer_small")


def test_lstm_transducer_prediction_network_with_projection_matches_torch(lstm_transducer):
    model, z = lstm_transducer
    start = model.start()
    assert [layer.projection.shape for layer in model.prediction.layers] == [(64, 128)] * 2
    for layer, (h, c) in enumerate(start.state):
        np.testing.assert_allclose(h[0], z["torch.dj.state_h"][layer, 0], atol=1e-6)
        np.testing.assert_allclose(c[0], z["torch.dj.state_c"][layer, 0], atol=1e-6)
    frame = model.joint.project_encoder(z["torch.dj.encoder_frame0"][0].T)[0]
    np.testing.assert_allclose(model.joint.logits(frame, start.projected), z["torch.dj.joint_raw_logits"].ravel(),
                               atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("prefix,b", CASES)
def test_lstm_transducer_greedy_is_token_identical_to_nemo(lstm_transducer, prefix, b):
    """The LSTM model often emits max_symbols tokens at one frame: the rule's coverage."""
    model, z = lstm_transducer
    hyp = greedy(model, z[f"{prefix}torch.output.outputs"][b], int(z[f"{prefix}torch.output.encoded_lengths"][b]),
                 int(z["meta.max_symbols_per_step"]))
    assert hyp.tokens == _stored(z, prefix, "greedy.tokens", b).tolist()
    if not prefix:
        assert hyp.frames == z["greedy.timestamps"].tolist()
        assert max(np.bincount(hyp.frames)) == 10


def _tiny(bias_out):
    """A 2-token + blank transducer whose joint output is ``bias_out`` whatever the input."""
    rng = np.random.default_rng(0)
    layer = LSTMLayer(rng.standard_normal((8, 3)).astype(np.float32), rng.standard_normal((8, 2)).astype(np.float32),
                      np.zeros(8, np.float32))
    zeros = np.zeros((4, 4), np.float32)
    joint = Joint(zeros[:, :4], np.zeros(4, np.float32), zeros[:2], np.zeros(4, np.float32),
                  np.zeros((4, len(bias_out)), np.float32), np.asarray(bias_out, np.float32))
    return PredictionNetwork(rng.standard_normal((3, 3)).astype(np.float32), [layer]), joint


def test_max_symbols_bounds_the_tokens_per_frame_and_length_masks_frames():
    prediction, joint = _tiny([0.0, 1.0, 0.5])  # token 1 always wins over the blank (2)
    hyp = rnnt_greedy(Transducer(prediction, joint, 2), np.zeros((4, 7), np.float32), length=5, max_symbols=3)
    assert hyp.tokens == [1] * 15 and hyp.frames == [t for t in range(5) for _ in range(3)]


def test_tdt_durations_move_frames():
    prediction, joint = _tiny([0.0, 1.0, 0.5, 0.0, 0.0, 2.0])  # token 1, duration index 2 of (0, 1, 3)
    hyp = greedy(Transducer(prediction, joint, 2, (0, 1, 3)), np.zeros((4, 10), np.float32))
    assert hyp.frames == [0, 3, 6, 9] and hyp.durations == [3] * 4


def test_mismatched_parts_are_refused_naming_them():
    prediction, joint = _tiny([0.0, 1.0, 0.5])
    with pytest.raises(GraphError, match="blank 5 and 3 token classes"):
        Transducer(prediction, joint, 5)
    with pytest.raises(GraphError, match="encoder frames of shape"):
        rnnt_greedy(Transducer(prediction, joint, 2), np.zeros((3, 7), np.float32))
    with pytest.raises(GraphError, match="do not fit one another"):
        LSTMLayer(np.zeros((8, 3), np.float32), np.zeros((8, 5), np.float32), np.zeros(8, np.float32))


def test_a_graph_that_is_not_a_decoder_joint_is_refused():
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Relu", ["targets"], ["y"], name="relu")], "g",
                              [helper.make_tensor_value_info("targets", TensorProto.FLOAT, [1]),
                               helper.make_tensor_value_info("encoder_outputs", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    with pytest.raises(ConversionError, match="node 'relu' \\(Relu\\): expected the Gather of the token embedding"):
        decoder_joint(helper.make_model(graph))
    graph.ClearField("input")
    with pytest.raises(ConversionError, match="no input 'targets'"):
        decoder_joint(helper.make_model(graph))


@pytest.mark.parametrize("name", ONNX_PAIRS)
def test_from_the_onnx_pair_features_to_nemo_tokens(name, tmp_path):
    """encoder-*.onnx converted and run by tinyasr (encoder outputs within 1e-4 of onnxruntime's), then greedy
    over the decoder_joint's parts: NeMo's tokens, batch 1 and the padded batch of 2."""
    from tinyasr.engine.offline import load_model
    from tinyasr_convert import convert_model

    encoder = load_model(convert_model(NEMO / name / "encoder-model.onnx", tmp_path / "encoder.tasr").path)
    model, z = _from_onnx(name)
    for prefix, b in CASES:
        out = encoder.run({"audio_signal": z[f"{prefix}input.audio_signal"], "length": z[f"{prefix}input.length"]})
        np.testing.assert_allclose(out["outputs"], z[f"{prefix}output.outputs"], atol=1e-4, rtol=0)
        np.testing.assert_array_equal(out["encoded_lengths"], z[f"{prefix}output.encoded_lengths"])
        hyp = greedy(model, out["outputs"][b], int(out["encoded_lengths"][b]), int(z["meta.max_symbols_per_step"]))
        assert hyp.tokens == _stored(z, prefix, "greedy.tokens", b).tolist()
