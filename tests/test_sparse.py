"""The csr / bsr / int8 encodings of the .tasr file (tinyasr/sparse.py, docs/format.md).

The reference for every decoding is the dense array the encoded tensor was built from; corrupted index
data must be refused at load with a message naming the tensor and the fault.
"""

import json
import struct
import warnings
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tinyasr.errors import ModelFileError
from tinyasr.format.container import EncodedTensor, describe, read_model, write_model
from tinyasr.format.encodings.sparse import (BSRMatrix, CSRMatrix, Int8Matrix, as_dense, bsr_arrays, csr_arrays, int8_arrays)

PROVENANCE = {"source": "t.onnx", "source_sha256": "ab" * 32, "converter": "tinyasr 0.1.0", "source_format": "onnx"}


def manifest():
    graph = {"inputs": [{"name": "x", "dtype": "float32", "shape": [1, "C", "T"]}],
             "outputs": [{"name": "y", "dtype": "float32", "shape": [1, "D", "T"]}],
             "nodes": [{"name": "conv", "op": "Conv", "inputs": ["x", "w"], "outputs": ["y"]}]}
    return {"graph": graph, "frontend": None, "decoder": None, "provenance": PROVENANCE}


def sparse_weight(rng, shape, density, block_rows=1):
    """A random weight whose zeros come in blocks of block_rows x 1 (1: unstructured)."""
    weight = rng.standard_normal(shape).astype(np.float32)
    rows, columns = shape[0], int(np.prod(shape[1:]))
    keep = rng.random((rows // block_rows, 1, columns)) < density
    return weight * np.broadcast_to(keep, (rows // block_rows, block_rows, columns)).reshape(shape)


def csr_tensor(weight, value_dtype="float32"):
    values, indices, indptr = csr_arrays(weight.reshape(weight.shape[0], -1), value_dtype)
    return EncodedTensor("csr", "float32", weight.shape, {"values": values, "indices": indices, "indptr": indptr})


def bsr_tensor(weight, block, value_dtype="float32"):
    values, indices, indptr = bsr_arrays(weight.reshape(weight.shape[0], -1), block, value_dtype)
    return EncodedTensor("bsr", "float32", weight.shape, {"values": values, "indices": indices, "indptr": indptr},
                         {"block": list(block)})


def write_and_read(tmp_path, tensor):
    path = tmp_path / "m.tasr"
    write_model(path, manifest(), {"w": tensor})
    return read_model(path)


# --------------------------------------------------------------------------- round trips


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.sampled_from([8, 16, 24]), columns=st.integers(1, 40), taps=st.sampled_from([1, 3]),
       density=st.floats(0.0, 1.0), kind=st.sampled_from(["csr", "bsr4", "bsr8", "bsr2x3", "int8"]),
       half=st.booleans(), seed=st.integers(0, 2**31))
def test_every_encoding_round_trips_to_the_dense_weight(tmp_path, rows, columns, taps, density, kind, half, seed):
    rng = np.random.default_rng(seed)
    shape = (rows, columns * (3 if kind == "bsr2x3" else 1), taps)
    block_rows = {"bsr4": 4, "bsr8": 8, "bsr2x3": 2}.get(kind, 1)
    weight = sparse_weight(rng, shape, density, block_rows)
    value_dtype = "float16" if half else "float32"
    expected = weight.astype(value_dtype).astype(np.float32)
    if kind == "csr":
        tensor = csr_tensor(weight, value_dtype)
    elif kind == "int8":
        values, scales = int8_arrays(weight)
        tensor = EncodedTensor("int8", "float32", shape, {"values": values, "scales": scales}, {"axis": 0})
        # independent reference: round to the nearest multiple of each row's max|w| / 127
        step = np.abs(weight).reshape(rows, -1).max(axis=1)[:, None, None] / 127
        expected = np.where(step > 0, np.rint(weight / np.where(step > 0, step, 1)) * step, 0).astype(np.float32)
    else:
        tensor = bsr_tensor(weight, (2, 3) if kind == "bsr2x3" else (block_rows, 1), value_dtype)
    with write_and_read(tmp_path, tensor) as model_file:
        decoded = model_file.tensor("w")
        assert decoded.shape == shape and decoded.ndim == 3 and decoded.dtype == np.float32
        np.testing.assert_allclose(decoded.to_dense(), expected, rtol=1e-6, atol=1e-7)
        assert as_dense(decoded) is as_dense(decoded)  # decoded once
        assert model_file.version == (1, 1)
        if kind != "int8":
            assert decoded.values.dtype == np.float32  # float16 values are upcast once at load
            assert decoded.indices.dtype == np.uint16
            sparsity = describe(model_file)["tensors"][0]["sparsity"]
            assert sparsity == pytest.approx(1 - np.count_nonzero(expected) / expected.size)


def test_types_and_sizes_of_the_decoded_objects(tmp_path):
    weight = sparse_weight(np.random.default_rng(0), (16, 8, 1), 0.25, 4)
    with write_and_read(tmp_path, bsr_tensor(weight, (4, 1))) as model_file:
        bsr = model_file.tensor("w")
        assert isinstance(bsr, BSRMatrix) and bsr.block == (4, 1) and bsr.matrix_shape == (16, 8)
        np.testing.assert_array_equal(bsr.csr.to_dense(), weight)
        assert isinstance(bsr.csr, CSRMatrix) and bsr.csr.nnz == np.count_nonzero(weight)
        assert bsr.indices.base is not None  # a view of the memory map, not a copy
    values, scales = int8_arrays(weight)
    assert isinstance(Int8Matrix(values, scales, 0), Int8Matrix)


def test_wide_matrices_store_int32_indices(tmp_path):
    weight = np.zeros((2, 70000, 1), np.float32)
    weight[0, 69999, 0], weight[1, 3, 0] = 1.5, -2.0
    with write_and_read(tmp_path, csr_tensor(weight)) as model_file:
        decoded = model_file.tensor("w")
        assert decoded.indices.dtype == np.int32
        np.testing.assert_array_equal(decoded.to_dense(), weight)


def test_dense_only_files_stay_version_1_0(tmp_path):
    with write_and_read(tmp_path, np.ones((2, 3, 1), np.float32)) as model_file:
        assert model_file.version == (1, 0)


# --------------------------------------------------------------------------- refusals


WEIGHT = np.array([[[0.0], [1.0], [0.0], [2.0]], [[3.0], [0.0], [0.0], [0.0]],
                   [[0.0], [0.0], [0.0], [0.0]], [[4.0], [5.0], [6.0], [7.0]]], np.float32)  # [4, 4, 1]
CSR = csr_tensor(WEIGHT).parts  # values [1 2 3 4 5 6 7], indices [1 3 0 0 1 2 3], indptr [0 2 3 3 7]


def csr_with(**parts):
    return EncodedTensor("csr", "float32", WEIGHT.shape, {**CSR, **parts})


def bsr_with(block=(4, 1), params=None, **parts):
    tensor = bsr_tensor(WEIGHT, block)
    return EncodedTensor("bsr", "float32", WEIGHT.shape, {**tensor.parts, **parts},
                         params if params is not None else tensor.params)


u16, i32 = np.uint16, np.int32


@pytest.mark.parametrize("tensor, pattern", [
    (csr_with(indices=np.array([1, 3, 0, 0, 1, 2, 4], u16)), r"column index 4 is outside \[0, 4\)"),
    (csr_with(indices=np.array([1, 3, 0, 0, 1, 2, -1], i32)), r"column index -1 is outside"),
    (csr_with(indptr=np.array([0, 3, 2, 3, 7], i32)), r"indptr decreases at row 1 \(3 -> 2\)"),
    (csr_with(indptr=np.array([0, 2, 3, 3, 6], i32)), r"indptr must start at 0 and end at the 7 stored entries"),
    (csr_with(indptr=np.array([1, 2, 3, 3, 7], i32)), r"indptr must start at 0"),
    (csr_with(indptr=np.array([0, 2, 3, 7], i32)), r"part 'indptr' is int32\[4\], expected int32\[5\]"),
    (csr_with(indices=np.array([3, 1, 0, 0, 1, 2, 3], u16)), r"must increase within a row; entry 1"),
    (csr_with(indices=np.array([1, 3, 0, 0, 1, 1, 3], u16)), r"must increase within a row; entry 5"),
    (csr_with(values=np.ones(6, np.float32)), r"part 'values' is float32\[6\], expected float32 or float16\[7\]"),
    (csr_with(indices=CSR["indices"].astype(np.int64)), r"part 'indices' is int64\[7\], expected uint16 or int32"),
    (csr_with(extra=np.zeros(1, np.float32)), r"stores parts \['indices', 'indptr', 'values'\], found"),
    (EncodedTensor("csr", "float32", WEIGHT.shape, CSR, {"block": [4, 1]}), "csr takes no params"),
    (EncodedTensor("csr", "int32", WEIGHT.shape, CSR), "the logical tensor must be float32"),
    (bsr_with(block=(4, 1), params={"block": [3, 1]}), r"block 3x1 does not tile the 4x4 matrix"),
    (bsr_with(block=(4, 1), params={"block": [4]}), r"bsr needs params \{'block'"),
    (bsr_with(block=(4, 1), params={"block": [4, 1], "x": 1}), r"bsr needs params"),
    (bsr_with(block=(2, 1), indices=np.array([0, 1, 3, 0, 1, 2, 4], u16)), r"column index 4 is outside \[0, 4\)"),
    (bsr_with(block=(2, 1), indptr=np.array([0, 3, 8], i32)), r"end at the 7 stored entries"),
    (EncodedTensor("int8", "float32", (2, 2), {"values": np.ones((2, 2), np.int8),
                                               "scales": np.array([1.0, 0.0], np.float32)}), "scales must be finite and > 0"),
    (EncodedTensor("int8", "float32", (2, 2), {"values": np.ones((2, 2), np.int8),
                                               "scales": np.array([1.0, np.nan], np.float32)}), "finite"),
    (EncodedTensor("int8", "float32", (2, 2), {"values": np.ones((2, 2), np.int8), "scales": np.ones(2, np.float32)},
                   {"axis": 2}), r"int8 takes params"),
    (EncodedTensor("int8", "float32", (2, 2), {"values": np.ones((2, 3), np.int8), "scales": np.ones(2, np.float32)}),
     r"part 'values' is int8\[2, 3\], expected int8\[2, 2\]"),
])
def test_inconsistent_encodings_are_refused_naming_the_tensor(tmp_path, tensor, pattern):
    with pytest.raises(ModelFileError, match=rf"tensor 'w' \({tensor.encoding}\): .*{pattern}"):
        write_model(tmp_path / "bad.tasr", manifest(), {"w": tensor})
    assert not list(tmp_path.iterdir())


def _patch_part(path, role, new_bytes):
    """Overwrite a part's bytes in place (crc32 then disagrees: read with verify=False to reach the validator)."""
    blob = bytearray(path.read_bytes())
    header = struct.unpack("<8sHHIQIIQQ12sI", bytes(blob[:64]))
    entry = json.loads(bytes(blob[64:64 + header[4]]))["tensors"][0]
    part = next(p for p in entry["parts"] if p["role"] == role)
    start = header[7] + part["offset"]
    blob[start:start + len(new_bytes)] = new_bytes
    path.write_bytes(bytes(blob))


def test_corrupted_index_bytes_are_refused_at_load_even_without_crc(tmp_path):
    path = tmp_path / "m.tasr"
    write_model(path, manifest(), {"w": csr_with()})
    _patch_part(path, "indices", np.array([9], u16).tobytes())
    with pytest.raises(ModelFileError, match="crc32 mismatch"):
        read_model(path)
    with pytest.raises(ModelFileError, match=r"tensor 'w' \(csr\): column index 9 is outside \[0, 4\)"):
        read_model(path, verify=False)
    write_model(path, manifest(), {"w": csr_with()})
    _patch_part(path, "indptr", np.array([0, 5], i32).tobytes())
    with pytest.raises(ModelFileError, match=r"indptr decreases at row 1 \(5 -> 3\)"):
        read_model(path, verify=False)


def test_a_version_1_0_file_cannot_use_a_1_1_encoding(tmp_path):
    path = tmp_path / "m.tasr"
    write_model(path, manifest(), {"w": csr_with()})
    blob = path.read_bytes()
    fields = list(struct.unpack("<8sHHIQIIQQ12s", blob[:60]))
    text = json.loads(blob[64:64 + fields[4]])
    text["version"] = [1, 0]
    raw = json.dumps(text, separators=(",", ":")).encode()
    data = blob[fields[7]:]
    data_offset = (64 + len(raw) + 63) // 64 * 64
    fields[2], fields[4], fields[5], fields[7] = 0, len(raw), zlib.crc32(raw), data_offset
    head = struct.pack("<8sHHIQIIQQ12s", *fields)
    path.write_bytes(head + struct.pack("<I", zlib.crc32(head)) + raw + bytes(data_offset - 64 - len(raw)) + data)
    with pytest.raises(ModelFileError, match=r"encoding 'csr' needs format version 1.1, but the file says 1.0"):
        read_model(path)


# --------------------------------------------------------------------------- pruning tools (converters/sparsity.py)

from tinyasr_convert.sparse_choice import choose_encoding, encode, encode_weights, sparse_candidates  # noqa: E402
from tinyasr_convert.sparsity import (apply_masks, magnitude_mask, onnx_depthwise, plan, prune, prune_onnx,  # noqa: E402
                                      sparsity_schedule)
from tinyasr.errors import ConversionError  # noqa: E402
from tinyasr.format.graph import Graph, Node, ValueInfo  # noqa: E402


@pytest.mark.parametrize("block", [1, 4, 8])
@pytest.mark.parametrize("sparsity", [0.0, 0.37, 0.9, 1.0])
def test_magnitude_mask_prunes_exactly_the_smallest_blocks(block, sparsity):
    matrix = np.random.default_rng(block).standard_normal((32, 20)).astype(np.float32)
    keep = magnitude_mask(matrix, sparsity, block)
    blocks = keep.reshape(32 // block, block, 20)
    assert (blocks.all(axis=1) | ~blocks.any(axis=1)).all()  # whole blocks kept or pruned
    norms = np.sqrt(np.square(matrix.reshape(32 // block, block, 20)).sum(axis=1))
    kept = blocks.any(axis=1)
    assert (~kept).sum() == round(sparsity * norms.size)
    if 0 < kept.sum() < kept.size:
        assert norms[kept].min() >= norms[~kept].max()


def test_plan_keeps_first_and_last_dense_and_applies_overrides():
    names = ["enc.0.pw", "enc.1.pw", "enc.2.pw", "dec"]
    assert plan(names, 0.8) == {"enc.0.pw": 0.0, "enc.1.pw": 0.8, "enc.2.pw": 0.8, "dec": 0.0}
    assert plan(names, 0.8, {"enc.2.*": 0.5, "dec": 0.3}, keep_first=False) == {
        "enc.0.pw": 0.8, "enc.1.pw": 0.8, "enc.2.pw": 0.5, "dec": 0.3}
    with pytest.raises(ConversionError, match=r"overrides \['enc\.9'\] match no prunable layer"):
        plan(names, 0.5, {"enc.9": 0.1})
    with pytest.raises(ConversionError, match="sparsity must be in"):
        magnitude_mask(np.ones((4, 4)), 1.5)
    with pytest.raises(ConversionError, match="not a multiple of the block of 8"):
        magnitude_mask(np.ones((12, 4)), 0.5, 8)


def test_schedule_ramps_from_initial_to_final():
    values = [sparsity_schedule(step, 100, 0.9, start=10) for step in range(0, 120, 10)]
    assert values[0] == values[1] == 0.0 and values[-1] == values[-2] == pytest.approx(0.9)
    assert all(a <= b for a, b in zip(values, values[1:]))


def _small_quartznet():
    torch = pytest.importorskip("torch")
    from torch_models import QuartzNetLike, build

    return torch, build(QuartzNetLike, features=16, channels=32, blocks=2, repeat=2, vocab=10)


def test_torch_prune_and_masks_survive_fine_tuning():
    torch, model = _small_quartznet()
    depthwise_before = model.encoder[0].depthwise.weight.detach().clone()
    masks = prune(model, 0.75, block=4)
    assert torch.equal(model.encoder[0].depthwise.weight, depthwise_before)  # depthwise convs are never pruned
    names = list(masks)
    assert names[0] == "encoder.0.pointwise.weight" and names[-1] == "decoder.weight"
    parameters = dict(model.named_parameters())
    assert parameters[names[0]].count_nonzero() == parameters[names[0]].numel()  # first and last stay dense
    for name in names[1:-1]:
        assert 1 - parameters[name].count_nonzero().item() / parameters[name].numel() == pytest.approx(0.75, abs=0.01)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    model.train()
    loss = model(torch.randn(2, 16, 40)).square().mean()
    loss.backward()
    optimizer.step()
    assert parameters[names[1]][~masks[names[1]]].abs().sum() > 0  # the step revived pruned weights
    apply_masks(model, masks)
    assert parameters[names[1]][~masks[names[1]]].abs().sum() == 0


def test_depthwise_pruning_is_opt_in_unstructured_and_per_layer():
    torch, model = _small_quartznet()
    before = {name: p.detach().numpy().copy() for name, p in model.named_parameters()}
    masks = prune(model, 0.75, block=4, depthwise=True)
    parameters = dict(model.named_parameters())
    depthwise = [name for name in masks if "depthwise" in name]
    assert depthwise and depthwise[0] == "encoder.0.depthwise.weight"  # the first-layer rule is for matrix layers
    for name in depthwise:
        taps = before[name][:, 0, :]  # [channels, taps]
        expected = taps * magnitude_mask(taps, 0.75, block=1)  # one tap at a time, whatever ``block`` says
        np.testing.assert_array_equal(parameters[name].detach().numpy()[:, 0, :], expected)
    assert parameters["encoder.0.pointwise.weight"].count_nonzero() == parameters["encoder.0.pointwise.weight"].numel()
    with pytest.raises(ConversionError, match="match no prunable layer"):
        prune(model, 0.5, overrides={"*depthwise*": 0.1})  # without depthwise=True they are not prunable


def test_prune_onnx_prunes_initializers_and_the_model_still_runs(tmp_path):
    torch, model = _small_quartznet()
    ort = pytest.importorskip("onnxruntime")
    from onnx import numpy_helper

    path = tmp_path / "m.onnx"
    x = torch.randn(1, 16, 30)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notices
        torch.onnx.export(model, (x,), str(path), dynamo=False, opset_version=17, input_names=["x"])
    pruned, levels = prune_onnx(path, 0.9, overrides={"*decoder*": 0.5}, keep_last=False)
    arrays = {t.name: numpy_helper.to_array(t) for t in pruned.graph.initializer}
    assert sum(level == 0.9 for level in levels.values()) >= 8
    for name, level in levels.items():
        assert 1 - np.count_nonzero(arrays[name]) / arrays[name].size == pytest.approx(level, abs=0.01)
    out = ort.InferenceSession(pruned.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x.numpy()})
    assert np.isfinite(out[0]).all()


# --------------------------------------------------------------------------- encoding choice (converters/sparse_choice.py)


def test_choice_follows_sparsity_and_block_structure():
    """Expected kinds are the measured winners at 64 frames, 1 thread: dense (conv1d's register-tiled kernel) /
    sparse time in benchmarks/bench_sparse.py on 256x256 and 512x512 (64-byte-aligned activations, as the
    runtime allocates them) was, unstructured, 0.56-0.74 at 50 %, 0.97-1.17 at 70 % (too close to call; dense
    is kept), 1.45-1.61 at 80 % and 2.56-2.69 at 90 %; in 4x1 blocks 1.65-1.70 at 50 % and 3.6-5.3 at 90 %."""
    rng = np.random.default_rng(0)
    for size in (256, 512):
        dense = rng.standard_normal((size, size)).astype(np.float32)
        assert choose_encoding(dense) == "dense"
        for sparsity in (0.3, 0.5, 0.7):
            assert choose_encoding(dense * magnitude_mask(dense, sparsity)) == "dense"
        assert choose_encoding(dense * magnitude_mask(dense, 0.9)) == "csr"
        assert choose_encoding(dense * magnitude_mask(dense, 0.95)) == "csr"
        assert choose_encoding(dense * magnitude_mask(dense, 0.5, 4)) == "bsr"
        assert choose_encoding(dense * magnitude_mask(dense, 0.9, 4)) == "bsr"
    assert choose_encoding(np.zeros((2, 70000), np.float32)) == "dense"  # int32 indices: no kernel


def test_encode_round_trips_through_the_file(tmp_path):
    weight = sparse_weight(np.random.default_rng(1), (16, 12, 1), 0.2, 8)
    for kind, value_dtype in (("csr", "float32"), ("bsr", "float16"), ("dense", "float16")):
        tensor = encode(weight, kind, value_dtype)
        with write_and_read(tmp_path, tensor) as model_file:
            decoded = model_file.tensor("w")
            dense = decoded if isinstance(decoded, np.ndarray) else decoded.to_dense()
            np.testing.assert_array_equal(np.asarray(dense, np.float32), weight.astype(value_dtype).astype(np.float32))
            if kind == "bsr":
                assert decoded.block == (8, 1)
    with pytest.raises(ConversionError, match="unknown encoding kind 'coo'"):
        encode(weight, "coo")


def test_encode_weights_picks_only_weights_a_sparse_kernel_runs():
    rng = np.random.default_rng(2)
    sparse = sparse_weight(rng, (256, 256, 1), 0.05)  # large enough for the cost model to prefer csr
    tensors = {"pw": sparse, "dw": sparse_weight(rng, (256, 1, 5), 0.05), "padded": sparse.copy(),
               "shared": sparse.copy(), "fc": sparse[:, :, 0].copy(), "fc_t": sparse[:, :, 0].copy()}
    nodes = [Node("pw", "Conv", ("x", "pw"), ("a",)),
             Node("dw", "Conv", ("a", "dw"), ("b",), {"group": 256, "pads": [2, 2]}),
             Node("padded", "Conv", ("b", "padded"), ("c",), {"pads": [1, 1]}),
             Node("shared", "Conv", ("c", "shared"), ("d",)), Node("mul", "Mul", ("d", "shared"), ("e",)),
             Node("fc", "Gemm", ("f", "fc"), ("g",), {"transB": 1}), Node("fc_t", "Gemm", ("g", "fc_t"), ("h",))]
    graph = Graph([ValueInfo("x", "float32", (1, 256, "T")), ValueInfo("f", "float32", (1, 256))],
                  [ValueInfo("e", "float32", (1, 256, "T")), ValueInfo("h", "float32", (1, 256))], nodes)
    assert set(sparse_candidates(graph, tensors)) == {"pw", "fc"}
    encoded, kinds = encode_weights(graph, tensors, "auto", frames=1000)
    # the depthwise weight is stored csr for its size only (storage_candidates); "padded" has no kernel to skip
    assert kinds == {"pw": "csr", "fc": "csr", "dw": "csr"} and isinstance(encoded["pw"], EncodedTensor)
    assert encode_weights(graph, tensors, "bsr")[1] == {"pw": "bsr", "fc": "bsr", "dw": "csr"}
    assert encode_weights(graph, tensors, "dense")[1] == {}
    tensors["dw"] = sparse_weight(rng, (256, 1, 5), 0.7)  # CSR would not be 0.8x the dense bytes: stays dense
    assert "dw" not in encode_weights(graph, tensors, "auto", frames=1000)[1]
    with pytest.raises(ConversionError, match="--sparse 'fast' is not one of"):
        encode_weights(graph, tensors, "fast")


def test_pruned_model_converted_sparse_matches_dense(tmp_path):
    """The whole path: prune in torch, convert, store with encode_weights, run, compare with dense.

    ("auto" keeps layers this small dense, so the encoding is forced; test_choice covers "auto".)"""
    torch, model = _small_quartznet()
    import tinyasr_convert
    from tinyasr.engine.offline import load_model

    prune(model, 0.9, block=4)
    x = np.random.default_rng(3).standard_normal((1, 16, 70)).astype(np.float32)
    dense_path, sparse_path = tmp_path / "dense.tasr", tmp_path / "sparse.tasr"
    tinyasr_convert.from_torch(model, torch.from_numpy(x), dense_path, input_names=["x"], output_names=["y"],
                          sparse="dense")
    with read_model(dense_path) as dense_file:
        tensors = {name: np.array(dense_file.tensor(name)) for name in dense_file.tensor_names()}
        manifest = {k: dense_file.manifest[k] for k in ("graph", "frontend", "decoder", "provenance")}
        tensors, kinds = encode_weights(dense_file.graph, tensors, "bsr", frames=70)
    write_model(sparse_path, manifest, tensors)
    assert sorted(set(kinds.values())) == ["bsr"] and len(kinds) >= 8
    expected = load_model(dense_path).run({"x": x})["y"]
    np.testing.assert_allclose(load_model(sparse_path).run({"x": x})["y"], expected, rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------- pruned real models against onnxruntime

from _paths import SHARED_DIR  # noqa: E402

PRUNED_MODELS = {  # name: (ONNX file under models/, test input)
    "marblenet_vad": ("marblenet_vad/frame_vad_marblenet.onnx", lambda rng: {
        "audio": np.round(rng.standard_normal((1, 1, 8000)) * 3000).astype(np.int16)}),
    "quartznet_5x5": ("nemo-random/quartznet_5x5/model.onnx", lambda rng: {
        "audio_signal": rng.standard_normal((1, 64, 120)).astype(np.float32)}),
    "matchboxnet_3x1x64_v1": ("nemo-random/matchboxnet_3x1x64_v1/model.onnx", lambda rng: {
        "audio_signal": rng.standard_normal((1, 64, 100)).astype(np.float32)}),
}


@pytest.mark.parametrize("name, kind, depthwise", [
    ("marblenet_vad", "csr", False), ("marblenet_vad", "bsr", False), ("quartznet_5x5", "csr", False),
    ("matchboxnet_3x1x64_v1", "bsr", False), ("quartznet_5x5", "csr", True), ("marblenet_vad", "bsr", True)])
def test_real_models_pruned_to_80_percent_and_stored_sparse_match_onnxruntime(tmp_path, name, kind, depthwise):
    """prune_onnx at 80 % (4x1 blocks for bsr), convert with --sparse csr / bsr: onnxruntime on the pruned
    ONNX is the reference; every pruned matrix layer must be stored in the sparse encoding (first / last stay
    dense).  With depthwise pruning the depthwise convs stay dense in the file and their kernel skips the zeros."""
    ort = pytest.importorskip("onnxruntime")
    from tinyasr_convert import convert_model

    source, make_inputs = PRUNED_MODELS[name]
    path = SHARED_DIR / "models" / source
    if not path.exists():
        pytest.skip(f"{path} not available")
    pruned, levels = prune_onnx(path, 0.8, block=4 if kind == "bsr" else 1, depthwise=depthwise)
    assert sorted(set(levels.values())) == [0.0, 0.8]
    depthwise_names = {layer.name for layer in onnx_depthwise(pruned)} & set(levels)  # those pruned
    assert bool(depthwise_names) == depthwise
    conversion = convert_model(pruned, tmp_path / "m.tasr", sparse=kind)
    entries = describe(conversion.path)["tensors"]
    stored_sparse = [e for e in entries if e["encoding"] != "dense"]
    matrix_levels = [level for layer, level in levels.items() if layer not in depthwise_names]
    # pruned depthwise weights are stored csr, for their size only (sparse_choice.storage_candidates)
    assert len(stored_sparse) == matrix_levels.count(0.8) + len(depthwise_names) == len(conversion.encodings)
    assert sorted(conversion.encodings.values()) == sorted([kind] * matrix_levels.count(0.8)
                                                           + ["csr"] * len(depthwise_names))
    assert all(e["sparsity"] == pytest.approx(0.8, abs=0.01) for e in stored_sparse)

    from tinyasr.engine.offline import load_model

    feeds = make_inputs(np.random.default_rng(7))
    session = ort.InferenceSession(pruned.SerializeToString(), providers=["CPUExecutionProvider"])
    expected = dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds)))
    got = load_model(conversion.path).run(feeds)
    for output, want in expected.items():
        assert got[output].shape == want.shape and got[output].dtype == want.dtype, output
        np.testing.assert_allclose(got[output], want, rtol=0, atol=1e-4, err_msg=f"{name} {output}")
