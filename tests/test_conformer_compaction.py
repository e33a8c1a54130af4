"""Structured compaction of pruned Conformers from .nemo archives (tinyasr_convert.compaction, nemo_blocks.py).

The shared random-weight conformer_ctc_small is pruned here by zeroing weights (tests/conformer_pruning.py), in its
.nemo checkpoint and alike in its NeMo ONNX export.  References: onnxruntime on the pruned export, and tinyasr's
conversion of the pruned archive with compaction off; the heads / units / channels expected to be kept are worked
out here from the pruning, independently of the converter.
"""

from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
torch = pytest.importorskip("torch")

from tinyasr_convert import convert_model  # noqa: E402
from tinyasr_convert.nemo import convert_nemo, load_config, manifest_from_nemo_config  # noqa: E402

from _paths import SHARED_DIR  # noqa: E402
from conformer_pruning import Zero, half_pruned, head_columns, prune_onnx, pruned_nemo, rewritten_nemo  # noqa: E402
from tinyasr.cli.info import format_summary, summarize  # noqa: E402
from tinyasr.engine.offline import load_model  # noqa: E402
from tinyasr.errors import ConversionError  # noqa: E402
from tinyasr.format.container import write_model  # noqa: E402
from tinyasr.format.graph import Graph, Node, ValueInfo  # noqa: E402

NAME = "conformer_ctc_small"  # 16 layers, d_model 88, 4 heads of 22, 352 FFN units, conv kernel 31
FOLDER = SHARED_DIR / "models" / "nemo-random" / NAME
TOLERANCE = 1e-5
D, HEADS, D_K, UNITS, LAYERS = 88, 4, 22, 352, 16

pytestmark = pytest.mark.skipif(not FOLDER.exists(), reason=f"shared NeMo models not available ({FOLDER})")

# Every way a unit, head, channel or module can be pruned, and one that must not be removed (layer 6, layer 2's
# gate rows): (zeros, the structure expected: {layer: {module: kept}}).
PRUNING = [
    Zero("layers.0.self_attn.linear_v", "rows", head_columns([1], D_K)),  # head 1: values zero ...
    Zero("layers.0.self_attn.linear_v", "bias", head_columns([1], D_K)),  # ... biases too
    Zero("layers.0.self_attn.linear_out", "columns", head_columns([3], D_K)),  # head 3: output zero
    Zero("layers.1.feed_forward1.linear1", "rows", range(100)),  # constant swish(bias): folded
    Zero("layers.1.feed_forward2.linear2", "columns", range(200, UNITS)),
    Zero("layers.2.conv.pointwise_conv2", "columns", range(10)),
    Zero("layers.2.conv.depthwise_conv", "taps", range(10, 20)),  # constant swish(folded BN bias)
    Zero("layers.2.conv.pointwise_conv1", "rows", range(20, 30)),  # GLU value rows ...
    Zero("layers.2.conv.pointwise_conv1", "bias", range(20, 30)),  # ... and biases: depthwise input 0
    Zero("layers.2.conv.pointwise_conv1", "rows", range(D + 30, D + 40)),  # gate rows only: the channel varies
    Zero("layers.3.feed_forward1.linear2", "columns", range(UNITS)),  # whole module, output bias zero too:
    Zero("layers.3.feed_forward1.linear2", "bias", range(D)),  # skipped without a trace
    Zero("layers.4.self_attn.linear_out", "columns", range(D)),  # whole module, its bias stays: x + bias
    Zero("layers.5.conv.pointwise_conv1", "rows", range(2 * D)),  # whole conv module: constants folded
    Zero("layers.5.conv.pointwise_conv1", "bias", range(2 * D)),
    Zero("layers.6.self_attn.linear_q", "rows", head_columns([0], D_K)),  # queries and keys zero: the scores
    Zero("layers.6.self_attn.linear_k", "rows", head_columns([0], D_K)),  # still vary, the head stays
    Zero("layers.7.feed_forward2.linear1", "rows", range(UNITS)),  # every unit constant: module skipped
    Zero("layers.8.self_attn.linear_v", "rows", range(D)),  # no head has values left
    Zero("layers.8.self_attn.linear_v", "bias", range(D)),
]
KEPT = {0: {"self_attn": 2}, 1: {"feed_forward1": UNITS - 100, "feed_forward2": 200}, 2: {"conv": D - 30},
        3: {"feed_forward1": 0}, 4: {"self_attn": 0}, 5: {"conv": 0}, 7: {"feed_forward2": 0}, 8: {"self_attn": 0}}


def _expected_structure():
    full = {"feed_forward1": UNITS, "self_attn": HEADS, "conv": D, "feed_forward2": UNITS}
    return [{module: [KEPT.get(i, {}).get(module, of), of] for module, of in full.items()} for i in range(LAYERS)]


def _cases(folder=FOLDER):
    """(batch-1 feeds, batch-2 feeds with two lengths) as stored with the model."""
    vectors = np.load(folder / "test_vectors.npz")
    for prefix in ("", "case2."):
        yield {key[len(prefix) + 6:]: vectors[key] for key in vectors.files if key.startswith(prefix + "input.")}


@pytest.fixture(scope="module")
def pruned(tmp_path_factory):
    """(compacted .tasr, uncompacted .tasr, onnxruntime session on the pruned export)."""
    folder = tmp_path_factory.mktemp("pruned_conformer")
    archive = pruned_nemo(FOLDER / "model.nemo", folder / "pruned.nemo", PRUNING)
    model = onnx.load(FOLDER / "model.onnx")
    prune_onnx(model, PRUNING)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return (convert_nemo(archive, folder / "compact.tasr"), convert_nemo(archive, folder / "full.tasr", compact=False),
            session)


def test_compacted_outputs_equal_onnxruntime_and_the_uncompacted_graph(pruned):
    compact, full, session = pruned
    compact, full = load_model(compact), load_model(full)
    for feeds in _cases():
        got = compact.run(feeds)["logprobs"]
        np.testing.assert_allclose(got, session.run(["logprobs"], feeds)[0], rtol=0, atol=TOLERANCE)
        np.testing.assert_allclose(got, full.run(feeds)["logprobs"], rtol=0, atol=TOLERANCE)


def test_half_pruned_fastconformer_matches_onnxruntime(tmp_path):
    """The benchmark's pruning (half the heads and FFN units, two whole modules) on the FastConformer (d_model 64,
    4 layers, dw_striding x8): compacted, it matches onnxruntime on the pruned export, batch 1 and 2."""
    folder = FOLDER.parent / "fastconformer_ctc_small"
    zeros = half_pruned(4, 64, 4, 256, ["layers.1.conv", "layers.2.feed_forward1"])
    archive = pruned_nemo(folder / "model.nemo", tmp_path / "pruned.nemo", zeros)
    model = onnx.load(folder / "model.onnx")
    prune_onnx(model, zeros)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    compact = load_model(convert_nemo(archive, tmp_path / "compact.tasr"))
    layers = compact.manifest["structure"]["layers"]
    assert [layer["self_attn"] for layer in layers] == [[2, 4]] * 4
    assert [layer["feed_forward1"][0] for layer in layers] == [128, 128, 0, 128]
    assert [layer["conv"][0] for layer in layers] == [64, 0, 64, 64]
    for feeds in _cases(folder):
        np.testing.assert_allclose(compact.run(feeds)["logprobs"], session.run(["logprobs"], feeds)[0], rtol=0,
                                   atol=TOLERANCE)


def test_onnx_export_loses_its_zero_ffn_units(tmp_path):
    """From the pruned NeMo ONNX export (tinyasr_convert.convert): FFN hidden units are compacted in the graph (heads,
    conv channels and whole modules are not: docs/pruned-conformers.md); outputs equal onnxruntime's."""
    model = onnx.load(FOLDER / "model.onnx")
    prune_onnx(model, PRUNING)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    result = convert_model(model, tmp_path / "onnx.tasr", **manifest_from_nemo_config(load_config(
        FOLDER / "model_config.yaml")))
    assert result.removed_channels["/layers.1/feed_forward1/linear1/MatMul"] == 100
    assert result.removed_channels["/layers.1/feed_forward2/linear1/MatMul"] == UNITS - 200
    assert result.removed_channels["/layers.7/feed_forward2/linear1/MatMul"] == UNITS - 1  # one unit stays
    compact = load_model(result.path)
    for feeds in _cases():
        np.testing.assert_allclose(compact.run(feeds)["logprobs"], session.run(["logprobs"], feeds)[0], rtol=0,
                                   atol=TOLERANCE)


def test_kept_heads_units_and_channels_are_what_the_pruning_left(pruned):
    compact, full, _ = pruned
    assert summarize(compact)["structure"]["layers"] == _expected_structure()
    assert all(kept == of for layer in summarize(full)["structure"]["layers"] for kept, of in layer.values())
    ops = [node.op for node in load_model(compact).graph.nodes]
    assert ops.count("RelPositionSoftmax") == LAYERS - 2  # layers 4 and 8 lost their attention
    assert ops.count("Glu") == LAYERS - 1  # one GLU per conv module, layer 5's is gone
    assert ops.count("MatMul") < [node.op for node in load_model(full).graph.nodes].count("MatMul")


def test_smaller_matrices_are_stored(pruned):
    compact, full = ({layer["name"]: layer["parameters"] for layer in summarize(path)["layers"]}
                     for path in pruned[:2])
    # a linear layer's MatMul carries its bias (converters/passes.fuse_matmul_epilogues)
    assert compact["encoder.layers.0.self_attn.linear_q/MatMul"] == D * 2 * D_K + 2 * D_K
    assert compact["encoder.layers.1.feed_forward1.linear1/MatMul"] == (D + 1) * (UNITS - 100)
    assert compact["encoder.layers.2.conv.depthwise_conv/Conv"] == (D - 30) * 31 + (D - 30)
    assert full["encoder.layers.2.conv.depthwise_conv/Conv"] == D * 31 + D
    assert "encoder.layers.3.feed_forward1.linear1/MatMul" not in compact
    assert sum(compact.values()) < sum(full.values())


def test_info_shows_what_each_layer_kept(pruned):
    text = format_summary(summarize(pruned[0]))
    assert "structure (kept / of)" in text
    line = next(line for line in text.splitlines() if line.split()[:1] == ["0"] and "heads" in line)
    assert "2/4 heads" in line
    assert "skipped" in next(line for line in text.splitlines() if line.split()[:1] == ["3"] and "heads" in line)


def test_physically_removed_heads_are_refused_naming_layer_and_tensor(tmp_path):
    """NeMo keeps every head d_model / n_heads wide; a checkpoint with rows cut out cannot be read as n_heads heads."""
    def cut(state):
        key = "encoder.layers.5.self_attn.linear_q.weight"
        state[key] = state[key][: 3 * D_K - 2].clone()

    out = rewritten_nemo(FOLDER / "model.nemo", tmp_path / "cut.nemo", cut)
    with pytest.raises(ConversionError, match=r"encoder\.layers\.5\.self_attn\.linear_q\.weight.*\(64, 88\).*"
                                              r"encoder layer 5 .*\(88, 88\)"):
        convert_nemo(out, tmp_path / "x.tasr")


@pytest.mark.parametrize("structure", [
    {"family": "conformer", "layers": [{"feed_forward1": [1, 2], "self_attn": [5, 4], "conv": [1, 1],
                                        "feed_forward2": [0, 2]}]},  # more heads kept than there were
    {"family": "conformer", "layers": [{"self_attn": [1, 4]}]},  # modules missing
    {"family": "transformer", "layers": []},
    {"family": "conformer", "layers": "all"},
    ["conformer"],
])
def test_info_names_a_malformed_structure_entry(tmp_path, structure):
    """The manifest is untrusted: a structure entry that does not hold together is reported, not shown as fact."""
    graph = Graph([ValueInfo("x", "float32", (1, 4))], [ValueInfo("y", "float32", (1, 4))],
                  [Node("copy", "Identity", ("x",), ("y",))])
    write_model(tmp_path / "m.tasr", {"graph": graph.to_dict(), "frontend": None, "decoder": None,
                                      "provenance": {}, "structure": structure}, {})
    summary = summarize(tmp_path / "m.tasr")
    assert "problem" in summary["structure"] and "layers" not in summary["structure"]
    assert "structure  the manifest's 'structure'" in format_summary(summary)
