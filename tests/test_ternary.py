"""Regenerated ternary 1x1 convs: the generator (numpy, Numba, torch) against an independent pure-Python
splitmix64 and the checked-in vectors, the kernels against a float64 dense matmul, the encodings through the
file format, and the converter against onnxruntime / torch."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

import tinyasr.format.encodings.ternary as tern  # registers the ternary encodings
from tinyasr.errors import GraphError, ModelFileError, TinyASRError
from tinyasr.format.container import describe, read_model, write_model
from tinyasr.format.graph import Graph, Node, ValueInfo
from tinyasr.kernels import ternary as kern
from tinyasr.format.encodings.ternary import TernaryWeight, index_tensor, seed_tensor, ternary_matrix

VECTORS = json.loads((Path(__file__).parent / "data" / "ternary" / "vectors.json").read_text())
RNG = np.random.default_rng(11)
MASK = 2**64 - 1


# --------------------------------------------------------------------------- the generator


def splitmix64_outputs(state, count):
    """Vigna's splitmix64 next(), written from the C reference with Python ints (independent of tinyasr)."""
    out = []
    for _ in range(count):
        state = (state + 0x9E3779B97F4A7C15) & MASK
        z = state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
        out.append(z ^ (z >> 31))
    return out


def spec_matrix(seed, layer_id, out_channels, in_channels, density):
    """docs/ternary.md's algorithm, step by step, in Python ints."""
    width = int(1.0 / density + 0.5)
    nblocks = -(-in_channels // width)
    key = splitmix64_outputs((seed + 0x9E3779B97F4A7C15 * layer_id) & MASK, 1)[0]
    hashes = splitmix64_outputs(key, out_channels * nblocks)
    matrix = np.zeros((out_channels, in_channels), np.int8)
    for r in range(out_channels):
        for b in range(nblocks):
            h = hashes[r * nblocks + b]
            span = min(width, in_channels - b * width)
            matrix[r, b * width + (((h >> 32) * span) >> 32)] = -1 if h & 1 else 1
    return matrix


def test_splitmix64_matches_published_outputs():
    # First outputs of splitmix64 seeded with 0 (Vigna's reference implementation).
    assert splitmix64_outputs(0, 3) == [0xE220A8397B1DCDAF, 0x6E789E6AA1B965F4, 0x06C45D188009454F]
    states = np.array([0x9E3779B97F4A7C15 * k & MASK for k in (1, 2, 3)], np.uint64)
    assert [int(v) for v in tern.mix64(states)] == splitmix64_outputs(0, 3)
    for z in (0, 1, MASK, 0x0123456789ABCDEF):
        assert int(kern.mix64(np.uint64(z))) == int(tern.mix64(np.array([z], np.uint64))[0])


@pytest.mark.parametrize("layer", VECTORS["layers"][:6], ids=lambda v: f"{v['out_channels']}x{v['in_channels']}")
def test_numpy_reference_follows_the_written_spec(layer):
    args = (layer["seed"], layer["layer_id"], layer["out_channels"], layer["in_channels"], layer["density"])
    np.testing.assert_array_equal(ternary_matrix(*args), spec_matrix(*args))


@pytest.mark.parametrize("layer", VECTORS["layers"], ids=lambda v: f"{v['out_channels']}x{v['in_channels']}")
def test_numpy_numba_and_torch_reproduce_the_vectors(layer):
    torch = pytest.importorskip("torch")
    from tinyasr_convert.ternary import TernaryPointwiseConv1d

    args = (layer["seed"], layer["layer_id"], layer["out_channels"], layer["in_channels"], layer["density"])
    expected = np.zeros(args[2:4], np.int8)
    np.put_along_axis(expected, np.array(layer["columns"]), np.array(layer["signs"], np.int8), axis=1)
    assert hashlib.sha256(expected.tobytes()).hexdigest() == layer["matrix_sha256"]

    columns, signs = tern.ternary_columns(*args)
    assert columns.tolist() == layer["columns"] and signs.tolist() == layer["signs"]
    np.testing.assert_array_equal(ternary_matrix(*args), expected)

    numba_matrix = np.empty(args[2:4], np.int8)
    kern.generate_matrix(np.uint64(args[0]), np.uint64(args[1]), tern.block_width(args[4]), numba_matrix)
    np.testing.assert_array_equal(numba_matrix, expected)

    module = TernaryPointwiseConv1d(args[3], args[2], density=args[4], seed=args[0], layer_id=args[1])
    np.testing.assert_array_equal(module.pattern[:, :, 0].to(torch.int8).numpy(), expected)

    weight = TernaryWeight(args[2], args[3], np.ones(args[2], np.float32), args[0], args[1], args[4])
    lists = kern.weight_lists(weight)
    for got, want in zip(lists, tern.index_lists(expected)):
        np.testing.assert_array_equal(got, want)


def test_layer_keys_match_vectors():
    for entry in VECTORS["layer_key"]:
        assert hex(tern.layer_key(entry["seed"], entry["layer_id"])) == entry["key"]
        assert hex(int(kern.layer_key(np.uint64(entry["seed"]), np.uint64(entry["layer_id"])))) == entry["key"]


@pytest.mark.parametrize("density", [1.0, 0.5, 1 / 3, 0.1, 0.07])
def test_pattern_is_stratified_and_balanced(density):
    out_channels, in_channels = 200, 97
    m = ternary_matrix(3, 1, out_channels, in_channels, density)
    width = tern.block_width(density)
    blocks = [m[:, b:b + width] for b in range(0, in_channels, width)]
    assert all(np.all(np.count_nonzero(block, axis=1) == 1) for block in blocks)
    assert abs(np.mean(m[m != 0] == 1) - 0.5) < 0.03
    assert abs(np.mean(m != 0) - len(blocks) / in_channels) < 1e-12


def test_bad_generator_parameters_are_refused():
    for args in [(-1, 0, 4, 4, 0.5), (2**64, 0, 4, 4, 0.5), (0, 2**32, 4, 4, 0.5), (0, 0, 4, 4, 0.0),
                 (0, 0, 4, 4, 1.5), (0, 0, 4, 3, 0.2), (0, 0, 4, 70000, 0.5), (0.5, 0, 4, 4, 0.5)]:
        with pytest.raises(ValueError):
            ternary_matrix(*args)


# --------------------------------------------------------------------------- kernels


SHAPES = [(4, 6, 1 / 3), (64, 256, 0.1), (33, 257, 1 / 3), (96, 48, 1.0), (128, 128, 0.25)]


@pytest.mark.parametrize("frames", [1, 5, 64, 1000])
@pytest.mark.parametrize("out_channels,in_channels,density", SHAPES)
def test_kernels_match_dense_matmul(out_channels, in_channels, density, frames):
    scales = RNG.uniform(-1.5, 1.5, out_channels).astype(np.float32)
    weight = TernaryWeight(out_channels, in_channels, scales, seed=int(RNG.integers(2**63)), layer_id=2,
                           density=density)
    x = RNG.standard_normal((2, in_channels, frames)).astype(np.float32)
    bias = RNG.standard_normal(out_channels).astype(np.float32)
    residual = RNG.standard_normal((2, out_channels, frames)).astype(np.float32)
    cases = [("", (), None, None), ("Relu", (), bias, residual), ("Clip", (-0.5, 0.7), bias, None)]
    for activation, params, b, r in cases:
        expected = kern.ternary_pointwise_reference(x, weight, b, r, activation, params)
        regenerated = kern.ternary_pointwise(x, weight, b, r, activation, params, mode="memory")
        cached = kern.ternary_pointwise(x, weight, b, r, activation, params, mode="speed")
        np.testing.assert_array_equal(regenerated, cached)  # same summation order: identical bits
        np.testing.assert_allclose(regenerated, expected, rtol=1e-5, atol=1e-5 * np.sqrt(in_channels))


def _read_only(array):
    view = array.view()
    view.flags.writeable = False
    return view


def test_parallel_builds_match_serial():
    weight = TernaryWeight(80, 100, RNG.uniform(0.5, 1, 80).astype(np.float32), seed=9, layer_id=1, density=0.2)
    x = _read_only(RNG.standard_normal((3, 100, 300)).astype(np.float32))  # as memory-mapped weights are
    lists = [_read_only(a) for a in kern.weight_lists(weight)]
    scales = _read_only(weight.scales)
    outs = []
    for build in (kern.ternary_regenerate.serial, kern.ternary_regenerate.parallel):
        y = np.empty((3, 80, 300), np.float32)
        build(x, np.uint64(9), np.uint64(1), 5, scales, y)
        outs.append(y)
    for build in (kern.ternary_index.serial, kern.ternary_index.parallel):
        y = np.empty((3, 80, 300), np.float32)
        build(x, *lists, scales, y)
        outs.append(y)
    for y in outs[1:]:
        np.testing.assert_array_equal(y, outs[0])


def test_auto_mode_caches_lists_only_for_short_inputs(monkeypatch):
    weight = TernaryWeight(8, 16, np.ones(8, np.float32), seed=1, layer_id=0, density=0.5)
    assert not kern.uses_index_lists(weight, 1000, "auto") and weight.lists is None
    assert kern.uses_index_lists(weight, 1, "auto")
    assert not kern.uses_index_lists(weight, 1, "memory")
    kern.ternary_pointwise(np.ones((1, 16, 2), np.float32), weight, mode="auto")
    assert weight.lists is not None and kern.uses_index_lists(weight, 1000, "auto")
    with pytest.raises(TinyASRError, match="fast"):
        kern.ternary_pointwise(np.ones((1, 16, 2), np.float32), weight, mode="fast")
    monkeypatch.setattr(kern, "_mode", "auto")
    kern.set_mode("memory")
    assert kern.get_mode() == "memory"


def test_kernel_shape_errors_name_the_problem():
    weight = TernaryWeight(8, 16, np.ones(8, np.float32), seed=1, layer_id=0, density=0.5)
    with pytest.raises(GraphError, match=r"expected \[batch, 16, time\]"):
        kern.ternary_pointwise(np.ones((1, 15, 4), np.float32), weight)
    with pytest.raises(GraphError, match="bias"):
        kern.ternary_pointwise(np.ones((1, 16, 4), np.float32), weight, bias=np.ones(7, np.float32))
    with pytest.raises(GraphError, match="plain 1x1"):
        kern.ternary_conv(None, [np.ones((1, 16, 4), np.float32), weight], {"strides": [2]})


# --------------------------------------------------------------------------- encodings


def _write(path, tensors):
    names = list(tensors)
    nodes = [Node(f"conv{i}", "Conv", ("x", name), (f"y{i}",)) for i, name in enumerate(names)]
    graph = Graph([ValueInfo("x", "float32", (1, 16, "T"))], [ValueInfo(f"y{i}", "float32", (1, 8, "T"))
                                                            for i in range(len(names))], nodes)
    write_model(path, {"graph": graph.to_dict(), "frontend": None, "decoder": None, "provenance": {}}, tensors)


def test_encodings_round_trip_and_describe(tmp_path):
    scales = RNG.uniform(0.5, 2, 8).astype(np.float32)
    matrix = ternary_matrix(77, 4, 8, 16, 0.25)
    path = tmp_path / "t.tasr"
    _write(path, {"seed": seed_tensor(77, 4, 8, 16, 0.25, scales), "same": seed_tensor(77, 4, 8, 16, 0.25),
                  "index": index_tensor(matrix, scales)})
    with read_model(path) as f:
        expected = matrix.astype(np.float32)[:, :, None] * scales[:, None, None]
        np.testing.assert_array_equal(f.tensor("seed").dense(), expected)
        np.testing.assert_array_equal(f.tensor("index").dense(), expected)
        np.testing.assert_array_equal(f.tensor("same").dense(), matrix.astype(np.float32)[:, :, None])
        assert f.entry("same").nbytes == 0 and f.entry("seed").nbytes == 8 * 4
        rows = {r["name"]: r for r in describe(f)["tensors"]}
    for name in rows:
        assert rows[name]["sparsity"] == pytest.approx(1 - np.count_nonzero(matrix) / matrix.size)
        assert rows[name]["parameters"] == 8 * 16
    assert rows["index"]["bytes"] == 2 * np.count_nonzero(matrix) + 2 * 4 * 9 + 4 * 8


def test_validator_refusals_name_the_tensor(tmp_path):
    from tinyasr.format.container import EncodedTensor

    def seeded(**params):
        return EncodedTensor("ternary_seed", "float32", (8, 16, 1), {},
                             {"generator": tern.GENERATOR, "seed": 1, "layer_id": 0, "density": 0.5, **params})

    def indexed(**changes):
        good = index_tensor(ternary_matrix(1, 0, 8, 16, 0.5), np.ones(8, np.float32))
        return EncodedTensor("ternary_index", "float32", (8, 16, 1), {**good.parts, **changes}, {})

    lists = tern.index_lists(ternary_matrix(1, 0, 8, 16, 0.5))
    swapped = lists.minus.copy()
    swapped[0] = lists.plus[0] if lists.plus_ptr[1] > 0 and lists.minus_ptr[1] > 0 else swapped[0]
    bad_ptr = lists.plus_ptr.copy()
    bad_ptr[-1] += 1
    cases = [
        (seeded(generator="xorshift"), "unknown generator"), (seeded(density=0), "density"),
        (seeded(seed=-3), "seed"), (seeded(scale="big"), "scale"), (seeded(extra=1), "unknown"),
        (EncodedTensor("ternary_seed", "float32", (8, 16, 3), {}, seeded().params), r"\[out, in, 1\]"),
        (indexed(plus_ptr=bad_ptr), "plus_ptr"), (indexed(minus=swapped), "both|increase"),
        (indexed(plus=lists.plus.astype(np.int32)), "uint16"),
        (indexed(scales=np.full(8, np.nan, np.float32)), "non-finite"),
    ]
    for encoded, message in cases:
        with pytest.raises(ModelFileError, match=f"tensor 'w' \\(ternary_(seed|index)\\).*({message})"):
            _write(tmp_path / "bad.tasr", {"w": encoded})


# --------------------------------------------------------------------------- converter


def test_detect_ternary():
    from tinyasr_convert.ternary import detect_ternary

    pattern = ternary_matrix(4, 0, 6, 9, 1 / 3)
    scales = np.array([0.5, 2, 1e-3, 0, 7, 3], np.float32)
    found = detect_ternary((pattern * scales[:, None]).astype(np.float32)[:, :, None])
    assert found is not None
    np.testing.assert_array_equal(found[0][scales > 0], pattern[scales > 0])
    np.testing.assert_array_equal(found[1], scales)
    off = (pattern * scales[:, None]).astype(np.float32)
    off[0, np.flatnonzero(pattern[0])[0]] *= 1.0000001
    assert detect_ternary(off) is None
    assert detect_ternary(np.ones((4, 4, 3), np.float32)) is None
    assert detect_ternary(pattern.astype(np.float64)) is None


def test_encode_prefers_a_matching_seed_and_falls_back_to_index_lists():
    from tinyasr_convert.ternary import _declared_layers, encode_ternary
    from tinyasr.errors import ConversionError

    layer = {"seed": 31, "layer_id": 5, "density": 0.25, "out_channels": 12, "in_channels": 40}
    scales = RNG.uniform(-2, 2, 12).astype(np.float32)  # negative: a folded BatchNorm with gamma < 0
    weight = (ternary_matrix(31, 5, 12, 40, 0.25) * scales[:, None]).astype(np.float32)[:, :, None]
    seeded = encode_ternary(weight, [dict(layer, layer_id=4), layer])
    assert seeded.encoding == "ternary_seed" and seeded.params["layer_id"] == 5
    np.testing.assert_array_equal(seeded.parts["scales"], scales)
    indexed = encode_ternary(weight, [dict(layer, seed=32)])
    assert indexed.encoding == "ternary_index"
    np.testing.assert_array_equal(tern._decode_index(
        tern.TensorEntry("w", "ternary_index", "float32", (12, 40, 1), ()), indexed.parts).dense(), weight)
    weight[0, 0, 0] = 0.123  # no longer ternary x scale
    assert encode_ternary(weight, [layer]) is None
    with pytest.raises(ConversionError, match="tinyasr.ternary"):
        _declared_layers({"tinyasr.ternary": json.dumps([dict(layer, density=3)])})


def test_plain_onnx_ternary_conv_is_stored_compactly_and_matches_onnxruntime(tmp_path):
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper, numpy_helper

    from tinyasr_convert import convert
    from tinyasr.engine.offline import load_model

    cin, cout = 48, 64
    pattern = RNG.choice(np.array([-1, 0, 0, 0, 1], np.int8), size=(cout, cin))  # i.i.d., not our generator
    scales = RNG.uniform(0.1, 2, cout).astype(np.float32)
    weight = (pattern * scales[:, None]).astype(np.float32)[:, :, None]
    dense_weight = RNG.standard_normal((cout, cout, 3)).astype(np.float32) * 0.1
    inits = [numpy_helper.from_array(weight, "w_ternary"), numpy_helper.from_array(dense_weight, "w_dense"),
             numpy_helper.from_array(RNG.standard_normal(cout).astype(np.float32), "b")]
    nodes = [helper.make_node("Conv", ["x", "w_ternary", "b"], ["h"], kernel_shape=[1]),
             helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("Conv", ["r", "w_dense"], ["y"], kernel_shape=[3], pads=[1, 1])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, cin, "T"])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, cout, "T"])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model)
    out = convert(model, tmp_path / "m.tasr")
    with read_model(out) as f:
        entries = {f.entry(n).encoding: f.entry(n) for n in f.tensor_names()}
    assert set(entries) == {"ternary_index", "dense"}
    assert entries["ternary_index"].nbytes < weight.nbytes / 3
    x = RNG.standard_normal((1, cin, 37)).astype(np.float32)
    expected = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})[0]
    np.testing.assert_allclose(load_model(out).run({"x": x})["y"], expected, rtol=1e-4, atol=1e-4)


def _ternary_block_net(torch, channels=32, features=16, classes=5):
    from tinyasr_convert.ternary import TernaryPointwiseConv1d

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.pre = torch.nn.Conv1d(features, channels, 5, padding=2)
            self.dw = torch.nn.Conv1d(channels, channels, 7, padding=3, groups=channels, bias=False)
            self.pw = TernaryPointwiseConv1d(channels, channels, density=1 / 3, seed=2024, layer_id=0)
            self.bn = torch.nn.BatchNorm1d(channels)
            self.pw2 = TernaryPointwiseConv1d(channels, channels, density=0.25, seed=2024, layer_id=1, scale=False)
            self.bn2 = torch.nn.BatchNorm1d(channels)
            self.head = torch.nn.Conv1d(channels, classes, 1)

        def forward(self, x):
            h = torch.relu(self.pre(x))
            h = torch.relu(self.bn(self.pw(self.dw(h))) + h)
            return self.head(torch.relu(self.bn2(self.pw2(h))))

    net = Net()
    with torch.no_grad():
        for bn in (net.bn, net.bn2):  # a fresh BN is the identity; randomise so a wrong fold shows
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2)
            bn.weight.uniform_(-1.5, 1.5)  # negative gammas flip rows' signs
            bn.bias.uniform_(-0.5, 0.5)
        net.pw.scale.uniform_(0.2, 1.0)
    return net.eval()


def test_torch_ternary_model_converts_to_seeds_and_matches_torch(tmp_path):
    torch = pytest.importorskip("torch")
    onnx = pytest.importorskip("onnx")
    import io
    import warnings

    from tinyasr_convert import convert
    from tinyasr_convert.ternary import add_ternary_metadata
    from tinyasr.engine.offline import load_model

    net = _ternary_block_net(torch)
    example = torch.randn(1, 16, 50)
    buffer = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (example,), buffer, dynamo=False, opset_version=17, input_names=["x"],
                          output_names=["y"], dynamic_axes={"x": {0: "B", 2: "T"}, "y": {0: "B", 2: "T"}})
    model = onnx.load_from_string(buffer.getvalue())
    add_ternary_metadata(model, net)
    out = convert(model, tmp_path / "t.tasr")
    with read_model(out) as f:
        seeds = [f.entry(n) for n in f.tensor_names() if f.entry(n).encoding == "ternary_seed"]
        assert sorted(e.params["layer_id"] for e in seeds) == [0, 1]
        assert all(e.nbytes == 32 * 4 for e in seeds)  # the folded per-channel scales; the pattern costs 0 bytes
    x = torch.randn(2, 16, 83)
    with torch.no_grad():
        expected = net(x).numpy()
    model = load_model(out)
    for mode in ("memory", "speed"):
        kern.set_mode(mode)
        try:
            np.testing.assert_allclose(model.run({"x": x.numpy()})["y"], expected, rtol=1e-4, atol=1e-4)
        finally:
            kern.set_mode("auto")
