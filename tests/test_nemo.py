"""NeMo .nemo archives -> .tasr, checked against NeMo's own exports run by onnxruntime.

References: the onnxruntime outputs stored beside each random-weight NeMo model
(``test_vectors.npz``), NeMo's own preprocessor features
(``preprocessor_test_vectors.npz``), ``torch.load(weights_only=True)`` for the
checkpoint reader, and onnxruntime on the ONNX export for the transcript.
Bad archives are built in tmp_path from the real ones.
"""

from __future__ import annotations

import collections
import hashlib
import io
import itertools
import json
import math
import re
import tarfile
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
yaml = pytest.importorskip("yaml")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from tinyasr_convert.nemo import (  # noqa: E402
    convert_nemo, load_config, manifest_from_nemo_config, read_checkpoint, read_nemo)
from tinyasr.errors import ConversionError  # noqa: E402
from tinyasr.features.frontend import FrontendConfig, compute_features  # noqa: E402
from tinyasr.engine.offline import load_model  # noqa: E402
from _paths import SHARED_DIR  # noqa: E402

SHARED = SHARED_DIR
NEMO = SHARED / "models" / "nemo-random"
CLIP = SHARED / "audio" / "pocketsphinx_goforward.wav"
TOLERANCE = 1e-4  # max abs difference to onnxruntime's stored outputs
FEATURE_TOLERANCE = 5e-4  # frontend vs NeMo's torch preprocessor (float64 numpy vs float32 torch)
pytestmark = pytest.mark.skipif(not NEMO.is_dir(), reason="shared NeMo test models not available")


def _test_cases(folder: Path):
    """[(inputs, outputs)] for the two stored onnxruntime cases (batch 1, T=200; batch 2, T=160)."""
    vectors = np.load(folder / "test_vectors.npz")
    cases = []
    for prefix in ("", "case2."):
        inputs = {k[len(prefix) + 6:]: vectors[k] for k in vectors.files if k.startswith(prefix + "input.")}
        outputs = {k[len(prefix) + 7:]: vectors[k] for k in vectors.files if k.startswith(prefix + "output.")}
        cases.append((inputs, outputs))
    return cases


def _assert_matches_vectors(model_path: Path, folder: Path):
    model = load_model(model_path)
    for inputs, expected in _test_cases(folder):
        got = model.run(inputs)
        for name, value in expected.items():
            assert got[name].shape == value.shape
            np.testing.assert_allclose(got[name], value, rtol=0, atol=TOLERANCE, err_msg=f"{folder.name} {name}")


def _members(nemo: Path) -> dict:
    with tarfile.open(nemo) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar if m.isfile()}


def _write_tar(path: Path, members: dict, mode: str = "w") -> Path:
    with tarfile.open(path, mode) as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def _torch_bytes(state: dict) -> bytes:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


# ---------------------------------------------------------------------------------------------------------------------
# The checkpoint reader


@pytest.mark.parametrize("name", ["quartznet_5x5", "citrinet_256"])
def test_checkpoint_reader_equals_torch_load(name, tmp_path):
    data = _members(NEMO / name / "model.nemo")["./model_weights.ckpt"]
    expected = torch.load(io.BytesIO(data), weights_only=True)
    got = read_checkpoint(io.BytesIO(data), name)
    assert list(got) == list(expected)
    for key, tensor in expected.items():
        assert got[key].dtype == tensor.numpy().dtype, key
        np.testing.assert_array_equal(got[key], tensor.numpy(), err_msg=key)


def test_checkpoint_reader_dtypes_views_and_shared_storage():
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    state = {
        "half": torch.linspace(-2, 2, 7, dtype=torch.float16),
        "bf16": torch.linspace(-3, 3, 5, dtype=torch.bfloat16),
        "double": torch.tensor([1.5, -2.25], dtype=torch.float64),
        "long": torch.tensor([3, -4], dtype=torch.int64),
        "int": torch.tensor([7], dtype=torch.int32),
        "bool": torch.tensor([True, False, True]),
        "scalar": torch.tensor(2.5),
        "transposed": base.t(),  # non-contiguous view
        "slice": base[1:3, 2:5],  # offset into a shared storage
        "param": torch.nn.Parameter(torch.ones(2, 3)),
        "empty": torch.zeros(0, 4),
    }
    data = _torch_bytes(state)
    got = read_checkpoint(io.BytesIO(data), "mixed")
    for key, tensor in torch.load(io.BytesIO(data), weights_only=True).items():
        expected = tensor.float().numpy() if tensor.dtype == torch.bfloat16 else tensor.detach().numpy()
        assert got[key].shape == expected.shape and got[key].dtype == expected.dtype, key
        np.testing.assert_array_equal(got[key], expected, err_msg=key)


class _Payload:
    """Unpickling this would create a file: proof that no code ran if the file is absent."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_checkpoint_reader_refuses_code_and_foreign_objects(tmp_path):
    marker = tmp_path / "pwned"
    with pytest.raises(ConversionError, match=r"evil\.ckpt: the checkpoint refers to \w+\.open, .*refusing"):
        read_checkpoint(io.BytesIO(_torch_bytes({"w": torch.ones(2), "x": _Payload(str(marker))})), "evil.ckpt")
    assert not marker.exists()
    with pytest.raises(ConversionError, match=r"evil\.ckpt.*collections\.Counter"):
        read_checkpoint(io.BytesIO(_torch_bytes({"w": __import__("collections").Counter("ab")})), "evil.ckpt")
    with pytest.raises(ConversionError, match=r"bomb\.ckpt: a tensor of size \(100000, 100000\) has more elements"):
        read_checkpoint(io.BytesIO(_torch_bytes({"w": torch.zeros(1).expand(100000, 100000)})), "bomb.ckpt")
    with pytest.raises(ConversionError, match=r"legacy\.ckpt: not a readable torch zip checkpoint"):
        read_checkpoint(io.BytesIO(b"\x80\x02}q\x00."), "legacy.ckpt")


# ---------------------------------------------------------------------------------------------------------------------
# Archives -> .tasr, numerically


@pytest.mark.parametrize("name", ["quartznet_5x5", "citrinet_256"])
def test_archive_converts_and_matches_onnxruntime(name, tmp_path):
    folder = NEMO / name
    out = convert_nemo(folder / "model.nemo", tmp_path / f"{name}.tasr")
    _assert_matches_vectors(out, folder)
    from tinyasr.format.container import read_model

    with read_model(out) as model_file:
        manifest = model_file.manifest
    labels = json.loads((folder / "labels.json").read_text())
    decoder = manifest["decoder"]
    assert decoder["type"] == "ctc" and decoder["output"] == "logprobs"
    assert decoder["vocabulary"] == labels and decoder["blank"] == len(labels)
    assert decoder["vocabulary_type"] == ("subword" if name.startswith("citrinet") else "chars")
    assert decoder["frame_seconds"] == pytest.approx(0.01 * (8 if name.startswith("citrinet") else 2))
    provenance = manifest["provenance"]
    assert provenance["source_sha256"] == hashlib.sha256((folder / "model.nemo").read_bytes()).hexdigest()
    assert provenance["source_format"] == "nemo" and provenance["nemo_target"].endswith(
        "EncDecCTCModelBPE" if name.startswith("citrinet") else "EncDecCTCModel")
    inputs = [v["name"] for v in manifest["graph"]["inputs"]]
    assert inputs == (["audio_signal", "length"] if name.startswith("citrinet") else ["audio_signal"])


def test_gzipped_archive_converts_the_same(tmp_path):
    folder = NEMO / "quartznet_5x5"
    archive = _write_tar(tmp_path / "old_style.nemo", _members(folder / "model.nemo"), mode="w:gz")
    _assert_matches_vectors(convert_nemo(archive, tmp_path / "gz.tasr"), folder)


def test_float16_weights_halve_the_file(tmp_path):
    folder = NEMO / "quartznet_5x5"
    full = convert_nemo(folder / "model.nemo", tmp_path / "f32.tasr")
    half = convert_nemo(folder / "model.nemo", tmp_path / "f16.tasr", float16=True)
    assert half.stat().st_size < 0.55 * full.stat().st_size
    inputs, expected = _test_cases(folder)[0]
    got = load_model(half).run(inputs)["logprobs"]
    np.testing.assert_allclose(got, expected["logprobs"], rtol=0, atol=1e-2)  # float16 rounding: measured 1.9e-3


def _state_from_onnx_export(onnx_path: Path) -> dict:
    """A NeMo-style state dict rebuilt from an export: each folded Conv becomes conv + an identity BatchNorm.

    The module paths come from the export's own node names ("/encoder/encoder.1/mconv.5/conv/Conv"), so the
    key layout is NeMo's, not the converter's guess.  BN(y) = y + bias with mean 0, var 1, gamma sqrt(1 + eps).
    """
    from onnx import numpy_helper

    model = onnx.load(str(onnx_path))
    init = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    gamma = np.sqrt(np.float32(1 + 1e-3))
    state = {}
    for node in model.graph.node:
        if node.op_type not in ("Conv", "Gemm"):
            continue
        if node.input[1].startswith("decoder."):
            state.update({n: init[n] for n in node.input[1:]})
            continue
        block, part, index = re.search(r"encoder\.(\d+)/(mconv|res\.0)\.(\d+)/", node.name).groups()
        state[f"encoder.encoder.{block}.{part}.{index}.conv.weight"] = init[node.input[1]]
        if len(node.input) > 2:
            bias = init[node.input[2]]
            bn = f"encoder.encoder.{block}.{part}.{int(index) + 1}"
            state.update({f"{bn}.weight": np.full_like(bias, gamma), f"{bn}.bias": bias,
                          f"{bn}.running_mean": np.zeros_like(bias), f"{bn}.running_var": np.ones_like(bias),
                          f"{bn}.num_batches_tracked": np.array(0)})
    return {k: torch.from_numpy(np.array(v)) for k, v in state.items()}


@pytest.mark.parametrize("name", ["matchboxnet_3x1x64_v1", "marblenet_3x2x64", "quartznet_15x5"])
def test_archive_rebuilt_from_export_weights_matches_onnxruntime(name, tmp_path):
    """No .nemo was saved for these; an archive with their config and the export's weights stands in."""
    folder = NEMO / name
    members = {"./model_config.yaml": (folder / "model_config.yaml").read_bytes(),
               "./model_weights.ckpt": _torch_bytes(_state_from_onnx_export(folder / "model.onnx"))}
    out = convert_nemo(_write_tar(tmp_path / f"{name}.nemo", members), tmp_path / f"{name}.tasr")
    _assert_matches_vectors(out, folder)
    if "net_3x" in name:
        from tinyasr.format.container import read_model

        with read_model(out) as model_file:
            decoder = model_file.manifest["decoder"]
        assert decoder == {"type": "classification", "output": "logits", "logits": "logits",
                           "labels": json.loads((folder / "labels.json").read_text())}


@pytest.mark.parametrize("name", ["quartznet_5x5", "citrinet_256"])
def test_archive_and_onnx_export_give_the_same_model(name, tmp_path):
    from tinyasr_convert import convert

    folder = NEMO / name
    from_archive = load_model(convert_nemo(folder / "model.nemo", tmp_path / "a.tasr"))
    extras = manifest_from_nemo_config(load_config(folder / "model_config.yaml"))
    from_onnx = load_model(convert(folder / "model.onnx", tmp_path / "o.tasr", **extras))
    assert from_onnx.frontend == from_archive.frontend
    assert from_onnx.decoder["vocabulary"] == from_archive.decoder["vocabulary"]
    assert manifest_from_nemo_config(load_config(folder / "model.nemo")) == extras  # --config X.nemo reads the same
    inputs, _ = _test_cases(folder)[1]
    a, o = from_archive.run(inputs)["logprobs"], from_onnx.run(inputs)["logprobs"]
    np.testing.assert_allclose(a, o, rtol=0, atol=TOLERANCE)


def test_citrinet_squeeze_excite_blocks_run_as_one_node_each(tmp_path):
    """converters/passes.fuse_squeeze_excite takes both forms of Citrinet's squeeze-excite (NeMo's ONNX export and
    tinyasr's .nemo builder): one SqueezeExcite per block, no MatMul, Sigmoid or ReduceSum left.  Their outputs
    are checked against NeMo's test vectors (tests/test_shared_models.py) and against each other (above)."""
    from tinyasr_convert import convert

    folder = NEMO / "citrinet_256"
    extras = manifest_from_nemo_config(load_config(folder / "model_config.yaml"))
    for model in (load_model(convert_nemo(folder / "model.nemo", tmp_path / "a.tasr")),
                  load_model(convert(folder / "model.onnx", tmp_path / "o.tasr", **extras))):
        ops = collections.Counter(node.op for node in model.graph.nodes)
        assert ops["SqueezeExcite"] == 23 and not ops.keys() & {"MatMul", "Sigmoid", "ReduceSum"}, ops
        # the two blocks without a residual end in their own Relu, fused; the others' goes with the residual's Conv
        activations = collections.Counter(n.attrs.get("activation", "") for n in model.graph.nodes
                                          if n.op == "SqueezeExcite")
        assert activations == {"": 21, "Relu": 2}


@pytest.mark.parametrize("name", ["quartznet_5x5", "citrinet_256", "matchboxnet_3x1x64_v1"])
def test_frontend_from_config_reproduces_nemo_features(name, tmp_path):
    folder = NEMO / name
    source = folder / "model.nemo" if (folder / "model.nemo").exists() else folder / "model_config.yaml"
    frontend = FrontendConfig.from_dict(manifest_from_nemo_config(load_config(source))["frontend"])
    vectors = np.load(folder / "preprocessor_test_vectors.npz")
    features, valid = compute_features(vectors["audio"][0], frontend)
    expected = vectors["features"][0]
    assert features.shape == expected.shape and valid == int(vectors["features_len"][0])
    np.testing.assert_allclose(features, expected, rtol=0, atol=FEATURE_TOLERANCE)


@pytest.mark.skipif(not CLIP.exists(), reason="shared audio not available")
def test_transcript_equals_greedy_onnxruntime_on_the_export(tmp_path, capsys):
    from tinyasr import Recognizer
    from tinyasr.audio.io import load_audio
    from tinyasr.cli.main import main

    folder = NEMO / "quartznet_5x5"
    model = convert_nemo(folder / "model.nemo", tmp_path / "q.tasr")
    text = Recognizer(model).transcribe(str(CLIP)).text
    assert main(["transcribe", "-m", str(model), str(CLIP)]) == 0
    assert capsys.readouterr().out == text + "\n"

    frontend = FrontendConfig.from_nemo(load_config(folder / "model_config.yaml")["preprocessor"])
    samples, _ = load_audio(CLIP, sample_rate=frontend.sample_rate)
    features, valid = compute_features(samples, frontend)
    session = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    logprobs = session.run(None, {"audio_signal": features[None]})[0][0]
    labels = json.loads((folder / "labels.json").read_text())
    best = logprobs[: math.ceil(valid / 2)].argmax(axis=1)  # stride 2; frames past the audio are padding
    chars = [labels[k] for k, _ in itertools.groupby(best) if k != len(labels)]
    expected = " ".join("".join(chars).split())
    assert expected and text == expected


def _small_jasper_config(activation: str) -> dict:
    """Options the shared models do not use: plain (non-separable) convs, future_context, other activations."""
    def block(filters, repeat, kernel, stride, residual, separable, **extra):
        return dict(filters=filters, repeat=repeat, kernel=[kernel], stride=[stride], dilation=[1], dropout=0.0,
                    residual=residual, separable=separable, **extra)

    preprocessor = yaml.safe_load((NEMO / "quartznet_5x5" / "model_config.yaml").read_text())["preprocessor"]
    return {"target": "nemo.collections.asr.models.EncDecCTCModel", "preprocessor": {**preprocessor, "features": 8},
            "encoder": {"_target_": "nemo.collections.asr.modules.ConvASREncoder", "feat_in": 8,
                        "activation": activation, "conv_mask": True,
                        "jasper": [block(16, 2, 5, 1, True, False, future_context=1),
                                   block(24, 1, 3, 2, False, True)]},
            "decoder": {"_target_": "nemo.collections.asr.modules.ConvASRDecoder", "feat_in": 24, "num_classes": 3,
                        "vocabulary": ["a", "b", " "]}}


def _small_jasper_reference(x, state, activation):
    """The same network written directly in torch from NeMo's JasperBlock definition."""
    import torch.nn.functional as F

    act = {"relu": F.relu, "swish": F.silu, "hardtanh": F.hardtanh}[activation]

    def conv_bn(x, conv, bn, pads=(0, 0), stride=1, groups=1):
        y = F.conv1d(F.pad(x, pads), state[f"{conv}.conv.weight"], stride=stride, groups=groups)
        if bn is None:
            return y
        return F.batch_norm(y, state[f"{bn}.running_mean"], state[f"{bn}.running_var"], state[f"{bn}.weight"],
                            state[f"{bn}.bias"], training=False, eps=1e-3)

    e0, e1 = "encoder.encoder.0", "encoder.encoder.1"
    h = act(conv_bn(x, f"{e0}.mconv.0", f"{e0}.mconv.1", pads=(3, 1)))  # K=5, future_context=1: pads (3, 1)
    h = conv_bn(h, f"{e0}.mconv.4", f"{e0}.mconv.5", pads=(3, 1))
    h = act(h + conv_bn(x, f"{e0}.res.0.0", f"{e0}.res.0.1"))
    h = conv_bn(h, f"{e1}.mconv.0", None, pads=(1, 1), stride=2, groups=16)
    h = act(conv_bn(h, f"{e1}.mconv.1", f"{e1}.mconv.2"))
    logits = F.conv1d(h, state["decoder.decoder_layers.0.weight"], state["decoder.decoder_layers.0.bias"])
    return F.log_softmax(logits.transpose(1, 2), dim=-1)


@pytest.mark.parametrize("activation", ["swish", "hardtanh", "relu"])
def test_plain_convs_future_context_and_activations_match_torch(activation, tmp_path):
    generator = torch.Generator().manual_seed(7)
    shapes = {"encoder.encoder.0.mconv.0.conv.weight": (16, 8, 5), "encoder.encoder.0.mconv.4.conv.weight": (16, 16, 5),
              "encoder.encoder.0.res.0.0.conv.weight": (16, 8, 1), "encoder.encoder.1.mconv.0.conv.weight": (16, 1, 3),
              "encoder.encoder.1.mconv.1.conv.weight": (24, 16, 1), "decoder.decoder_layers.0.weight": (4, 24, 1),
              "decoder.decoder_layers.0.bias": (4,)}
    state = {k: 0.3 * torch.randn(shape, generator=generator) for k, shape in shapes.items()}
    for bn, channels in (("encoder.encoder.0.mconv.1", 16), ("encoder.encoder.0.mconv.5", 16),
                         ("encoder.encoder.0.res.0.1", 16), ("encoder.encoder.1.mconv.2", 24)):
        state.update({f"{bn}.weight": 1 + 0.1 * torch.randn(channels, generator=generator),
                      f"{bn}.bias": 0.1 * torch.randn(channels, generator=generator),
                      f"{bn}.running_mean": 0.1 * torch.randn(channels, generator=generator),
                      f"{bn}.running_var": 0.5 + torch.rand(channels, generator=generator),
                      f"{bn}.num_batches_tracked": torch.tensor(3)})
    members = {"./model_config.yaml": yaml.safe_dump(_small_jasper_config(activation)).encode(),
               "./model_weights.ckpt": _torch_bytes(state)}
    model = load_model(convert_nemo(_write_tar(tmp_path / "small.nemo", members), tmp_path / "small.tasr"))
    x = torch.randn(2, 8, 37, generator=generator)
    expected = _small_jasper_reference(x, state, activation).numpy()
    got = model.run({"audio_signal": x.numpy()})["logprobs"]
    assert got.shape == expected.shape == (2, 19, 4)
    np.testing.assert_allclose(got, expected, rtol=0, atol=TOLERANCE)


# ---------------------------------------------------------------------------------------------------------------------
# Refused archives and configs


def _variant(tmp_path, name="quartznet_5x5", drop=(), add=None, config=None, state=None) -> Path:
    members = _members(NEMO / name / "model.nemo")
    for member in drop:
        del members[member]
    if config is not None:
        cfg = yaml.safe_load(members["./model_config.yaml"])
        config(cfg)
        members["./model_config.yaml"] = yaml.safe_dump(cfg).encode()
    if state is not None:
        weights = torch.load(io.BytesIO(members["./model_weights.ckpt"]), weights_only=True)
        state(weights)
        members["./model_weights.ckpt"] = _torch_bytes(weights)
    members.update(add or {})
    return _write_tar(tmp_path / "variant.nemo", members)


def test_refuses_archive_without_config_or_weights(tmp_path):
    with pytest.raises(ConversionError, match=r"variant\.nemo: the archive has no model_config\.yaml"):
        convert_nemo(_variant(tmp_path, drop=["./model_config.yaml"]), tmp_path / "x.tasr")
    with pytest.raises(ConversionError, match=r"variant\.nemo: the archive has no model_weights\.ckpt"):
        convert_nemo(_variant(tmp_path, drop=["./model_weights.ckpt"]), tmp_path / "x.tasr")
    assert not (tmp_path / "x.tasr").exists()


def test_refuses_tensor_of_wrong_shape(tmp_path):
    def shrink(weights):
        weights["encoder.encoder.2.mconv.5.conv.weight"] = weights["encoder.encoder.2.mconv.5.conv.weight"][:, :, :31]

    with pytest.raises(ConversionError, match=r"encoder\.encoder\.2\.mconv\.5\.conv\.weight.*\(128, 1, 31\).*"
                                              r"encoder\.jasper\[2\].*\(128, 1, 39\)"):
        convert_nemo(_variant(tmp_path, state=shrink), tmp_path / "x.tasr")


def test_refuses_missing_and_unexpected_tensors(tmp_path):
    with pytest.raises(ConversionError, match=r"no tensor 'encoder\.encoder\.3\.res\.0\.1\.running_var'"):
        convert_nemo(_variant(tmp_path, state=lambda w: w.pop("encoder.encoder.3.res.0.1.running_var")),
                     tmp_path / "x.tasr")
    with pytest.raises(ConversionError, match=r"encoder\.encoder\.1\.adapter\.weight"):
        convert_nemo(_variant(tmp_path, state=lambda w: w.update({"encoder.encoder.1.adapter.weight": torch.ones(3)})),
                     tmp_path / "x.tasr")


def _set(path: str, value):
    def change(cfg):
        *parents, last = path.split(".")
        node = cfg
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node[key]
        node[last] = value

    return change


@pytest.mark.parametrize("name, change, message", [
    ("quartznet_5x5", _set("encoder._target_", "nemo.collections.asr.modules.SqueezeformerEncoder"),
     r"encoder\._target_='SqueezeformerEncoder' is not supported \(supported: \['ConvASREncoder', "
     r"'ConformerEncoder'\]\)"),
    ("quartznet_5x5", _set("encoder.activation", "gelu"), r"encoder\.activation='gelu' is not supported"),
    ("quartznet_5x5", _set("encoder.jasper.2.groups", 2), r"encoder\.jasper\[2\]\.groups=2 is not supported"),
    ("quartznet_5x5", _set("encoder.jasper.2.heads", 4), r"encoder\.jasper\[2\]\.heads=4 is not supported"),
    ("quartznet_5x5", _set("encoder.jasper.3.residual_mode", "max"), r"encoder\.jasper\[3\]\.residual_mode='max'"),
    ("quartznet_5x5", _set("encoder.jasper.4.mystery", True),
     r"encoder\.jasper\[4\]: option\(s\) \['mystery'\] are not supported"),
    ("quartznet_5x5", _set("decoder._target_", "nemo.collections.asr.modules.RNNTDecoder"),  # a transducer
     r"encoder\._target_ \(encoder only\)='ConvASREncoder' is not supported \(supported: \['ConformerEncoder', "
     r"'RNNEncoder'\]\)"),
    ("quartznet_5x5", _set("preprocessor.frame_splicing", 3), r"frame_splicing=3"),
    ("citrinet_256", _set("encoder.jasper.1.se_context_size", 64), r"encoder\.jasper\[1\]\.se_context_size=64"),
])
def test_refuses_unsupported_config(tmp_path, name, change, message):
    with pytest.raises(ConversionError, match=message):
        convert_nemo(_variant(tmp_path, name, config=change), tmp_path / "x.tasr")


@pytest.mark.parametrize("member, problem", [
    ("../escape.txt", r"'\.\./escape\.txt' points outside the archive"),
    ("./a/../../escape.txt", r"'\./a/\.\./\.\./escape\.txt' points outside the archive"),
    ("/etc/evil.txt", r"'/etc/evil\.txt' has an absolute path"),
])
def test_refuses_members_escaping_the_archive(tmp_path, member, problem):
    with pytest.raises(ConversionError, match=r"variant\.nemo: archive member " + problem):
        convert_nemo(_variant(tmp_path, add={member: b"x"}), tmp_path / "x.tasr")


def test_refuses_links_pointing_outside(tmp_path):
    archive = _variant(tmp_path)
    with tarfile.open(archive, "a") as tar:
        link = tarfile.TarInfo("./tokenizer.model")
        link.type, link.linkname = tarfile.SYMTYPE, "../../../etc/passwd"
        tar.addfile(link)
    with pytest.raises(ConversionError, match=r"'\./tokenizer\.model' links to '\.\./\.\./\.\./etc/passwd'"):
        read_nemo(archive)


def test_refuses_non_archives_and_truncated_archives(tmp_path):
    not_tar = tmp_path / "model.nemo"
    not_tar.write_bytes(b"this is not a tar file" * 50)
    with pytest.raises(ConversionError, match=r"model\.nemo: not a \.nemo archive"):
        read_nemo(not_tar)
    data = (NEMO / "quartznet_5x5" / "model.nemo").read_bytes()
    truncated = tmp_path / "cut.nemo"
    for size in (len(data) // 2, len(data) - 30000):  # inside the checkpoint; inside its zip directory
        truncated.write_bytes(data[:size])
        with pytest.raises(ConversionError, match=r"cut\.nemo.*(damaged|truncated)"):
            read_nemo(truncated)


def test_subword_vocabulary_comes_from_the_tokenizer_file_and_must_agree(tmp_path):
    labels = json.loads((NEMO / "citrinet_256" / "labels.json").read_text())
    archive = read_nemo(NEMO / "citrinet_256" / "model.nemo")
    vocab_file = next(n for n in archive.files if n.endswith("_tokenizer.vocab"))
    assert manifest_from_nemo_config(archive.config, archive.files)["decoder"]["vocabulary"] == labels
    files = dict(archive.files)
    files[vocab_file] = files[vocab_file].replace("▁the\t".encode(), "▁thy\t".encode())
    with pytest.raises(ConversionError, match=vocab_file + r".*disagrees with the config's decoder\.vocabulary"):
        manifest_from_nemo_config(archive.config, files)


def test_nemo_1_0_beta_config_style_gives_the_same_model(tmp_path):
    """Early NeMo 1.0 archives (e.g. QuartzNet15x5Base-En 1.0.0a5) write {cls: X, params: {...}} sections."""
    from tinyasr.format.container import read_model

    def old_style(cfg):
        for key in ("preprocessor", "encoder", "decoder"):
            section = dict(cfg[key])
            cfg[key] = {"cls": section.pop("_target_"), "params": section}

    paths = [convert_nemo(NEMO / "quartznet_5x5" / "model.nemo", tmp_path / "new.tasr"),
             convert_nemo(_variant(tmp_path, config=old_style), tmp_path / "old.tasr")]
    manifests = []
    for path in paths:
        with read_model(path) as model_file:
            manifests.append({k: model_file.manifest[k] for k in ("graph", "frontend", "decoder")})
    assert manifests[0] == manifests[1]


@pytest.mark.parametrize("config_name", ["model_config.yaml", "model.nemo"])
def test_convert_command_takes_the_config_of_an_onnx_export(config_name, tmp_path):
    """`tinyasr convert model.onnx --config ...` stores the same front end and decoder as the archive itself."""
    from tinyasr.cli.main import main

    folder = NEMO / "citrinet_256"
    from_archive = load_model(convert_nemo(folder / "model.nemo", tmp_path / "a.tasr"))
    out = tmp_path / "o.tasr"
    assert main(["convert", str(folder / "model.onnx"), "-o", str(out), "--config", str(folder / config_name)]) == 0
    from_onnx = load_model(out)
    assert from_onnx.frontend == from_archive.frontend
    assert from_onnx.decoder == from_archive.decoder


@pytest.mark.parametrize("config_of, message", [
    ("matchboxnet_3x1x64_v1", r"the decoder reads output 'logits', but the model's outputs are \['logprobs'\]"),
    ("citrinet_256", "the decoder lists 128 labels but output 'logprobs' has 29 classes"),
])
def test_a_config_of_another_model_is_refused(config_of, message, tmp_path, capsys):
    from tinyasr.cli.main import main

    config = NEMO / config_of / "model_config.yaml"
    out = tmp_path / "o.tasr"
    assert main(["convert", str(NEMO / "quartznet_5x5" / "model.onnx"), "-o", str(out), "--config", str(config)]) == 1
    assert re.fullmatch(f"tinyasr: {message}: is the config or decoder for another model\\?\n", capsys.readouterr().err)
    assert not out.exists()


def test_a_file_that_is_not_an_archive_gets_a_one_line_error(tmp_path):
    text = tmp_path / "notes.nemo"
    text.write_text("not a tar file")
    with pytest.raises(ConversionError) as info:
        read_nemo(text)
    assert str(info.value) == f"{text}: not a .nemo archive (a tar file was expected: file could not be opened " \
                              "successfully)"
    with pytest.raises(ConversionError, match=f"{tmp_path}: is a directory, not a .nemo archive"):
        read_nemo(tmp_path)
