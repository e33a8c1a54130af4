"""Hugging Face wav2vec2-style CTC models: built here from a tiny config (random weights), exported to ONNX by
torch's legacy exporter (opset 17, dynamic batch and time), converted with their model folder, and compared
with onnxruntime on the export fed by transformers' own feature extractor (the independent reference for the
normalisation the converter prepends).

Three variants, as transformers builds them: ``group`` (wav2vec2-base: GroupNorm in the first feature conv,
exported as InstanceNormalization; no attention mask), ``layer`` (wav2vec2-large-lv60 style: LayerNorm in
every feature conv, pre-norm transformer, an ``attention_mask`` input whose export holds CumSum, ScatterND, Mod
and IsNaN) and ``hubert`` (HubertForCTC, GroupNorm, no mask).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
ort = pytest.importorskip("onnxruntime")

from tinyasr_convert.huggingface import convert_huggingface  # noqa: E402

import tinyasr  # noqa: E402
from tinyasr.cli import main as cli_main  # noqa: E402
from tinyasr.errors import ConversionError  # noqa: E402

RATE = 16000
# "|" is the word delimiter; ids 1-3 are special tokens, as in the vocabularies transformers writes
VOCAB = ["<pad>", "<s>", "</s>", "<unk>", "|", "E", "T", "A", "O", "N", "I", "H", "S", "R"]


def _model(variant: str):
    """A tiny random CTC model: 7 feature convs (320 samples a frame), 2 transformer layers of width 32."""
    hubert = variant == "hubert"
    norm = "layer" if variant == "layer" else "group"
    config = (transformers.HubertConfig if hubert else transformers.Wav2Vec2Config)(
        vocab_size=len(VOCAB), hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        conv_dim=(32,) * 7, conv_stride=(5, 2, 2, 2, 2, 2, 2), conv_kernel=(10, 3, 3, 3, 3, 2, 2),
        num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4, feat_extract_norm=norm,
        do_stable_layer_norm=norm == "layer", pad_token_id=0, apply_spec_augment=False)
    return (transformers.HubertForCTC if hubert else transformers.Wav2Vec2ForCTC)(config).eval()


@pytest.fixture(scope="session", params=["group", "layer", "hubert"])
def exported(request, tmp_path_factory):
    """(variant, model folder, ONNX path, converted .tasr path), once per session and variant."""
    variant = request.param
    folder = tmp_path_factory.mktemp(f"wav2vec2_{variant}")
    torch.manual_seed(0)
    model = _model(variant)
    model.config.save_pretrained(folder)
    (folder / "vocab.json").write_text(json.dumps({token: i for i, token in enumerate(VOCAB)}))
    (folder / "tokenizer_config.json").write_text(json.dumps({"word_delimiter_token": "|", "pad_token": "<pad>"}))
    extractor = transformers.Wav2Vec2FeatureExtractor(do_normalize=True, return_attention_mask=variant == "layer")
    extractor.save_pretrained(folder)
    onnx_path = folder / "model.onnx"
    masked = variant == "layer"
    example = (torch.randn(1, RATE),) + ((torch.ones(1, RATE, dtype=torch.long),) if masked else ())
    names = ["input_values"] + (["attention_mask"] if masked else [])
    axes = {name: {0: "batch", 1: "samples"} for name in names}
    with torch.no_grad():
        torch.onnx.export(model, example, str(onnx_path), input_names=names, output_names=["logits"],
                          dynamic_axes={**axes, "logits": {0: "batch", 1: "frames"}}, opset_version=17, dynamo=False)
    tasr = folder / "model.tasr"
    convert_huggingface(onnx_path, tasr, folder)
    return variant, folder, onnx_path, tasr


def _reference(folder, onnx_path, waves):
    """onnxruntime on the export, fed what transformers' feature extractor makes of ``waves`` (padded batch)."""
    extractor = transformers.Wav2Vec2FeatureExtractor.from_pretrained(folder)
    batch = extractor(waves, sampling_rate=RATE, padding=True, return_attention_mask=True, return_tensors="np")
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    feeds = {"input_values": batch["input_values"].astype(np.float32)}
    if "attention_mask" in {i.name for i in session.get_inputs()}:
        feeds["attention_mask"] = batch["attention_mask"].astype(np.int64)
    return session.run(None, feeds)[0]


def _padded(waves):
    """The raw audio as one zero-padded batch and its sample mask."""
    audio = np.zeros((len(waves), max(map(len, waves))), np.float32)
    mask = np.zeros(audio.shape, np.int64)
    for i, wave in enumerate(waves):
        audio[i, :len(wave)], mask[i, :len(wave)] = wave, 1
    return audio, mask


def _speechlike(seconds, seed):
    """Noise with a slow loudness envelope and an offset: normalisation has something to remove."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * RATE)) / RATE
    return (0.3 * rng.standard_normal(t.size) * (1.2 + np.sin(2 * np.pi * 1.7 * t)) + 0.05).astype(np.float32)


@pytest.mark.parametrize("lengths", [[1.0], [10.0], [1.0, 0.6], [10.0, 6.5]], ids=str)
def test_matches_onnxruntime_with_the_feature_extractors_normalisation(exported, lengths):
    variant, folder, onnx_path, tasr = exported
    if variant != "layer" and len(set(lengths)) > 1:  # no attention mask: a padded batch is not what it computes
        lengths = [lengths[0]] * len(lengths)
    waves = [_speechlike(s, seed) for seed, s in enumerate(lengths)]
    expected = _reference(folder, onnx_path, waves)
    audio, mask = _padded(waves)
    model = tinyasr.load_model(tasr)
    feeds = {"input_values": audio}
    if variant == "layer":
        feeds["attention_mask"] = mask
    got = model.run(feeds)["logits"]
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)


def test_the_export_takes_a_sample_mask_only_in_the_layer_variant(exported):
    variant, _, onnx_path, tasr = exported
    names = [v.name for v in tinyasr.load_model(tasr).inputs]
    assert names == (["input_values", "attention_mask"] if variant == "layer" else ["input_values"])


def _greedy(logits):
    """(class id, first frame) of each CTC greedy token: runs collapsed, the blank (0) dropped."""
    ids = logits.argmax(-1)
    return [(int(k), t) for t, k in enumerate(ids) if k != 0 and (t == 0 or ids[t - 1] != k)]


def test_recognizer_and_cli_transcribe_the_converted_file(exported, tmp_path, capsys):
    variant, folder, onnx_path, tasr = exported
    wave = _speechlike(3.0, 7)
    wav = tmp_path / "speech.wav"
    soundfile.write(wav, wave, RATE, subtype="FLOAT")
    result = tinyasr.Recognizer(tasr).transcribe(str(wav))
    expected = _greedy(_reference(folder, onnx_path, [wave])[0])
    frame = 320 / RATE  # the conv strides' product over the sample rate
    got = [(t.id, int(round(t.start / frame))) for t in result.tokens]
    assert got and set(got) <= set(expected)  # the speech gate may drop tokens outside speech, never add any
    assert all(VOCAB[t.id] == t.text or (VOCAB[t.id] == "|" and t.text == " ") for t in result.tokens)
    assert " ".join(result.text.split()) == " ".join("".join(t.text for t in result.tokens).split())
    assert cli_main(["transcribe", "-m", str(tasr), str(wav)]) == 0
    assert capsys.readouterr().out.strip() == result.text


def test_a_vocabulary_that_does_not_match_the_config_is_refused(exported, tmp_path):
    _, folder, onnx_path, _ = exported
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in ("config.json", "preprocessor_config.json", "tokenizer_config.json"):
        (broken / name).write_bytes((folder / name).read_bytes())
    (broken / "vocab.json").write_text(json.dumps({token: i for i, token in enumerate(VOCAB[:-1])}))
    with pytest.raises(ConversionError, match="vocab_size"):
        convert_huggingface(onnx_path, tmp_path / "x.tasr", broken)


def test_the_convert_command_takes_the_model_folder_and_refuses_labels_beside_it(exported, tmp_path, capsys):
    _, folder, onnx_path, tasr = exported
    out = tmp_path / "cli.tasr"
    assert cli_main(["convert", str(onnx_path), "-o", str(out), "--config", str(folder / "config.json")]) == 0
    assert tinyasr.load_model(out).decoder == tinyasr.load_model(tasr).decoder
    labels = tmp_path / "labels.txt"
    labels.write_text("\n".join(VOCAB))
    assert cli_main(["convert", str(onnx_path), "-o", str(out), "--config", str(folder), "--labels", str(labels)]) == 1
    assert "--labels cannot be used with a Hugging Face model folder" in capsys.readouterr().err


def test_an_op_tinyasr_lacks_is_refused_naming_the_node(exported, tmp_path):
    import onnx

    _, folder, onnx_path, _ = exported
    model = onnx.load(str(onnx_path))
    node = next(n for n in model.graph.node if n.op_type == "Erf")  # the first Gelu's erf
    node.op_type = "Acos"  # a valid opset-17 op of the same signature that tinyasr does not run
    changed = tmp_path / "acos.onnx"
    onnx.save(model, str(changed))
    with pytest.raises(ConversionError, match=f"node '{node.name}': op 'Acos'"):
        convert_huggingface(changed, tmp_path / "x.tasr", folder)
