"""Conformer / FastConformer (NeMo) from ONNX exports and .nemo archives, against onnxruntime and NeMo.

References: the onnxruntime outputs stored with each random-weight NeMo model (``test_vectors.npz``, batch 1 and a
padded batch of two lengths), NeMo's own CTC greedy token ids stored there, and onnxruntime run here on the ONNX
export (with its position table extended, for inputs longer than the exported table).
"""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
yaml = pytest.importorskip("yaml")

from onnx import numpy_helper  # noqa: E402
from tinyasr_convert import convert  # noqa: E402
from tinyasr_convert.nemo import convert_nemo, load_config, manifest_from_nemo_config, read_nemo  # noqa: E402
from tinyasr_convert.nemo_blocks import build_graph  # noqa: E402
from tinyasr_convert.passes import sinusoid_table  # noqa: E402

from _paths import SHARED_DIR  # noqa: E402
from tinyasr import Recognizer  # noqa: E402
from tinyasr.engine.offline import load_model  # noqa: E402
from tinyasr.engine.streaming import StreamPlan  # noqa: E402
from tinyasr.errors import ConversionError, GraphError, InputError  # noqa: E402
from tinyasr.format.container import read_model, write_model  # noqa: E402
from tinyasr.format.graph import Graph, Node, ValueInfo  # noqa: E402

NEMO = SHARED_DIR / "models" / "nemo-random"
TOLERANCE = 1e-4  # max abs difference to onnxruntime's outputs
CTC = ["conformer_ctc_small", "fastconformer_ctc_small"]
ENCODERS = ["conformer_transducer_small", "fastconformer_tdt_small", "fastconformer_hybrid_small"]

pytestmark = pytest.mark.skipif(not NEMO.exists(), reason=f"shared NeMo models not available ({NEMO})")


def _onnx_file(name: str) -> Path:
    return NEMO / name / ("model.onnx" if name in CTC else "encoder-model.onnx")


def _cached(folder: Path, build):
    """name -> folder/name.tasr, written by ``build(name, path)`` on first use."""
    cache = {}

    def get(name: str) -> Path:
        if name not in cache:
            cache[name] = folder / f"{name}.tasr"
            build(name, cache[name])
        return cache[name]

    return get


@pytest.fixture(scope="module")
def from_onnx(tmp_path_factory):
    """name -> converted .tasr path (CTC models with their NeMo config: front end and vocabulary)."""

    def build(name, out):
        settings = manifest_from_nemo_config(load_config(NEMO / name / "model_config.yaml")) if name in CTC else {}
        convert(_onnx_file(name), out, **settings)

    return _cached(tmp_path_factory.mktemp("conformer_onnx"), build)


def _cases(vectors):
    """(prefix, feeds) for the batch-1 case and the batch-2 case with two lengths."""
    for prefix in ("", "case2."):
        yield prefix, {key[len(prefix) + 6:]: vectors[key] for key in vectors.files
                       if key.startswith(prefix + "input.")}


def _assert_matches_vectors(model, vectors, name):
    for prefix, feeds in _cases(vectors):
        outputs = model.run(feeds)
        expected_keys = [k for k in vectors.files if k.startswith(prefix + "output.")]
        assert expected_keys
        for key in expected_keys:
            got, expected = outputs[key[len(prefix) + 7:]], vectors[key]
            assert got.shape == expected.shape and got.dtype == expected.dtype, (name, key)
            np.testing.assert_allclose(got, expected, rtol=0, atol=TOLERANCE, err_msg=f"{name} {key}")


@pytest.mark.parametrize("name", CTC + ENCODERS)
def test_onnx_export_matches_onnxruntime_vectors(name, from_onnx):
    model = load_model(from_onnx(name))
    _assert_matches_vectors(model, np.load(NEMO / name / "test_vectors.npz"), name)


@pytest.mark.parametrize("name", CTC)
def test_frame_rate_and_vocabulary_come_from_the_config(name, from_onnx):
    model = load_model(from_onnx(name))
    factor = load_config(NEMO / name / "model_config.yaml")["encoder"]["subsampling_factor"]
    assert model.decoder["frame_seconds"] == pytest.approx(0.01 * factor)
    assert model.decoder["blank"] == len(model.decoder["vocabulary"])


def _nemo_greedy(vectors, prefix, item):
    """NeMo's CTC greedy ids if stored, else best path (collapse repeats, drop blank) over onnxruntime's log-probs
    of the valid output frames."""
    key = f"{prefix}greedy.tokens" + (f"_{item}" if prefix else "")
    if key in vectors.files:
        return list(vectors[key])
    logprobs = vectors[prefix + "output.logprobs"][item]
    frames = -(-int(vectors[prefix + "input.length"][item]) // (vectors[prefix + "input.audio_signal"].shape[2]
                                                                   // logprobs.shape[0]))
    best = logprobs[:frames].argmax(axis=1)
    blank = logprobs.shape[1] - 1
    return [int(t) for i, t in enumerate(best) if t != blank and (i == 0 or best[i - 1] != t)]


@pytest.mark.parametrize("name", CTC)
def test_transcribe_features_gives_nemos_greedy_token_ids(name, from_onnx):
    recognizer = Recognizer(from_onnx(name))
    vectors = np.load(NEMO / name / "test_vectors.npz")
    for prefix, feeds in _cases(vectors):
        for item in range(feeds["audio_signal"].shape[0]):
            features, length = feeds["audio_signal"][item], int(feeds["length"][item])
            result = recognizer.transcribe_features(features, length)
            expected = _nemo_greedy(vectors, prefix, item)
            assert [t.id for t in result.tokens] == expected, (name, prefix, item)
            assert result.duration == pytest.approx(length * 0.01)
            # the padding is masked: the valid frames alone give the same tokens
            alone = recognizer.transcribe_features(features[:, :length])
            assert [t.id for t in alone.tokens] == expected


def test_transcribe_features_names_what_is_wrong(from_onnx):
    recognizer = Recognizer(from_onnx("fastconformer_ctc_small"))
    features = np.zeros((80, 40), np.float32)
    for bad, message in [((features[None], None), r"features must be a numeric array \[n_features, T\]"),
                         ((features[:5], None), r"n_features = 80 .* shape \(5, 40\)"),
                         ((features, 0), "length must be an integer from 1 to the 40 feature frames, got 0"),
                         ((features, 41), "got 41"), ((features, 2.0), "got 2.0")]:
        with pytest.raises(InputError, match=message):
            recognizer.transcribe_features(*bad)


def _table_extended(name: str, rows_per_side: int) -> onnx.ModelProto:
    """The ONNX export with its [1, 2L-1, d] position table regenerated for ``rows_per_side`` and the graph's
    centre constants (L) moved with it: onnxruntime then runs inputs longer than the exported L."""
    model = onnx.load(str(_onnx_file(name)))
    nodes = list(model.graph.node)
    table = next(n for n in nodes if n.op_type == "Constant" and len(n.attribute[0].t.dims) == 3
                 and n.attribute[0].t.dims[1] > 500)
    old = numpy_helper.to_array(table.attribute[0].t)
    centre = (old.shape[1] + 1) // 2
    positions = np.arange(rows_per_side - 1, -rows_per_side, -1)
    new = sinusoid_table(positions, old.shape[2])[None]
    table.attribute[0].t.CopyFrom(numpy_helper.from_array(new, table.output[0]))
    moved = 0
    for node in nodes:  # the scalar constants start = L - T, end = L + T - 1 are computed from
        if node.op_type == "Constant" and node.output[0].startswith("/pos_enc/Constant"):
            value = numpy_helper.to_array(node.attribute[0].t)
            if value.shape == () and int(value) == centre:
                node.attribute[0].t.CopyFrom(numpy_helper.from_array(np.array(rows_per_side, value.dtype)))
                moved += 1
    assert moved == 2
    return model


def test_position_table_is_regenerated_and_inputs_run_past_its_end(from_onnx):
    """The export's table covers 512 encoder frames; 4400 feature frames are 550 encoder frames."""
    name = "fastconformer_ctc_small"
    path = from_onnx(name)
    stored = read_model(path)
    assert max(np.prod(stored.tensor(t).shape) for t in stored.tensor_names()) < 1023 * 64  # no table kept
    rng = np.random.default_rng(5)
    x = rng.standard_normal((1, 80, 4400)).astype(np.float32)
    feeds = {"audio_signal": x, "length": np.array([4400], np.int64)}
    ours = load_model(path).run(feeds)["logprobs"]
    session = ort.InferenceSession(_table_extended(name, 1024).SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    expected = session.run(None, feeds)[0]
    assert ours.shape == expected.shape == (1, 550, 129)
    np.testing.assert_allclose(ours, expected, rtol=0, atol=TOLERANCE)


# ---------------------------------------------------------------------------------------------------------------------
# .nemo archives


@pytest.fixture(scope="module")
def from_nemo(tmp_path_factory):
    """name -> .tasr built from the .nemo archive: CTC models by convert_nemo, transducers' encoders alone."""

    def build(name, out):
        if name in CTC:
            convert_nemo(NEMO / name / "model.nemo", out)
            return
        archive = read_nemo(NEMO / name / "model.nemo")
        graph, tensors = build_graph(archive.config, archive.weights, encoder_only=True)
        write_model(out, {"opset": 17, "graph": graph.to_dict(), "frontend": None, "decoder": None,
                          "provenance": {"source": "model.nemo"}}, tensors)

    return _cached(tmp_path_factory.mktemp("conformer_nemo"), build)


@pytest.mark.parametrize("name", CTC + ENCODERS)
def test_nemo_archive_matches_onnxruntime_vectors(name, from_nemo):
    model = load_model(from_nemo(name))
    _assert_matches_vectors(model, np.load(NEMO / name / "test_vectors.npz"), name)


def test_nemo_archive_transcribes_features_as_nemo(from_nemo):
    name = "fastconformer_ctc_small"
    recognizer = Recognizer(from_nemo(name))
    assert recognizer.model.decoder["frame_seconds"] == pytest.approx(0.08)
    vectors = np.load(NEMO / name / "test_vectors.npz")
    for prefix, feeds in _cases(vectors):
        for item in range(feeds["audio_signal"].shape[0]):
            result = recognizer.transcribe_features(feeds["audio_signal"][item], int(feeds["length"][item]))
            assert [t.id for t in result.tokens] == _nemo_greedy(vectors, prefix, item)


def test_nemo_archive_runs_past_the_configured_position_table(from_nemo, from_onnx):
    """pos_emb_max_len 512 in the config; the graph computes its positions, so 550 encoder frames run (and equal
    the ONNX conversion, whose table was regenerated)."""
    x = np.random.default_rng(9).standard_normal((1, 80, 4400)).astype(np.float32)
    feeds = {"audio_signal": x, "length": np.array([4400], np.int64)}
    name = "fastconformer_ctc_small"
    ours = load_model(from_nemo(name)).run(feeds)["logprobs"]
    np.testing.assert_allclose(ours, load_model(from_onnx(name)).run(feeds)["logprobs"], rtol=0, atol=TOLERANCE)


def _archive_with(tmp_path, name: str, change) -> Path:
    """A copy of ``name``'s .nemo whose config ``change`` edited."""
    source = NEMO / name / "model.nemo"
    out = tmp_path / "variant.nemo"
    with tarfile.open(source) as tar_in, tarfile.open(out, "w") as tar_out:
        for member in tar_in.getmembers():
            data = tar_in.extractfile(member).read() if member.isfile() else None
            if member.name.endswith("model_config.yaml"):
                cfg = yaml.safe_load(data)
                change(cfg["encoder"])
                data = yaml.safe_dump(cfg).encode()
                member.size = len(data)
            tar_out.addfile(member, io.BytesIO(data) if data is not None else None)
    return out


@pytest.mark.parametrize("change, message", [
    (lambda e: e.update(self_attention_model="rel_pos_local_attn"),
     r"encoder\.self_attention_model='rel_pos_local_attn' is not supported \(supported: \['rel_pos'\]\)"),
    (lambda e: e.update(att_context_size=[70, 13]), r"encoder\.att_context_size=\[70, 13\] is not supported"),
    (lambda e: e.update(subsampling="vggnet"), r"encoder\.subsampling='vggnet' is not supported"),
    (lambda e: e.update(conv_norm_type="layer_norm"), r"encoder\.conv_norm_type='layer_norm' is not supported"),
    (lambda e: e.update(causal_downsampling=True), r"encoder\.causal_downsampling=True is not supported"),
    (lambda e: e.update(conv_context_size="causal"), r"encoder\.conv_context_size='causal'"),
    (lambda e: e.update(adapter_mode="parallel"), r"encoder: option\(s\) \['adapter_mode'\] are not supported"),
])
def test_unsupported_conformer_variants_are_refused_naming_the_key(tmp_path, change, message):
    with pytest.raises(ConversionError, match=r"variant\.nemo: " + message):
        convert_nemo(_archive_with(tmp_path, "fastconformer_ctc_small", change), tmp_path / "x.tasr")
    assert not (tmp_path / "x.tasr").exists()


def test_a_2d_convolution_refuses_to_stream_saying_why():
    graph = Graph([ValueInfo("x", "float32", (1, 1, 80, "T"))], [ValueInfo("y", "float32", (1, 4, 40, "T2"))],
                  [Node("subsampling", "Conv", ("x", "w"), ("y",), {"strides": [2, 2], "pads": [1, 1, 1, 1]})])
    with pytest.raises(GraphError, match=r"node 'subsampling' \(Conv\).*a 2-D convolution .* does not stream yet"):
        StreamPlan(graph, {"w": np.zeros((4, 1, 3, 3), np.float32)})


@pytest.mark.parametrize("name", CTC)
def test_exported_attention_is_fused_into_one_op_per_layer(name, from_onnx, from_nemo):
    """Both paths run NeMo's rel-shift / mask / softmax chain as RelPositionSoftmax, the (q + v) p^T product
    absorbed into it (parity: tests above)."""
    layers = load_config(NEMO / name / "model_config.yaml")["encoder"]["n_layers"]
    for path in (from_onnx(name), from_nemo(name)):
        nodes = load_model(path).graph.nodes
        ops = [node.op for node in nodes]
        assert ops.count("RelPositionSoftmax") == layers and "Softmax" not in ops
        assert all(n.attrs.get("position_product") == 1 and len(n.inputs) == 4 for n in nodes
                   if n.op == "RelPositionSoftmax")


def test_nemo_archive_with_float16_weights(tmp_path):
    """--float16 stores the Linear (MatMul) weights too, not only Conv / Gemm: about half the float32 file."""
    name = "fastconformer_ctc_small"
    full = convert_nemo(NEMO / name / "model.nemo", tmp_path / "f32.tasr")
    half = convert_nemo(NEMO / name / "model.nemo", tmp_path / "f16.tasr", float16=True)
    assert half.stat().st_size < 0.6 * full.stat().st_size
    vectors = np.load(NEMO / name / "test_vectors.npz")
    got = load_model(half).run({"audio_signal": vectors["input.audio_signal"], "length": vectors["input.length"]})
    np.testing.assert_allclose(got["logprobs"], vectors["output.logprobs"], rtol=0, atol=1e-2)  # measured 3.7e-3


def test_hybrid_archive_keeps_its_ctc_branch(tmp_path):
    """A hybrid RNN-T + CTC FastConformer (a transducer file whose CTC head is selectable; the transducer head:
    tests/test_transducer_file.py): the aux CTC head's log-probs equal NeMo's torch CTC head, and its greedy
    ids NeMo's CTC greedy decoding (batch 1 and both items of the padded batch)."""
    folder = NEMO / "fastconformer_hybrid_small"
    recognizer = Recognizer(convert_nemo(folder / "model.nemo", tmp_path / "hybrid.tasr"), head="ctc")
    vectors = np.load(folder / "test_vectors.npz")
    for prefix, feeds in _cases(vectors):
        logprobs = recognizer.model.run(feeds)["logprobs"]
        np.testing.assert_allclose(logprobs, vectors[prefix + "torch.ctc.logprobs"], rtol=0, atol=TOLERANCE)
        for item in range(feeds["audio_signal"].shape[0]):
            result = recognizer.transcribe_features(feeds["audio_signal"][item], int(feeds["length"][item]))
            key = prefix + "ctc_greedy.tokens" + (f"_{item}" if prefix else "")
            assert [t.id for t in result.tokens] == list(vectors[key])
