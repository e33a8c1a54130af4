"""Sparse recurrent weights end to end: an LSTM / GRU R and a transducer prediction network's LSTM R pruned by
magnitude (tinyasr_convert.sparsity.prune_recurrent), stored csr or as 8 x 1 bsr blocks by the converter's
choice, checked at load, and run sparse: outputs against torch and onnxruntime (the independent references) and
against the same model stored dense (equal within float32 rounding)."""

from __future__ import annotations

import numpy as np
import pytest

from tinyasr.errors import ModelFileError
from tinyasr.format.container import EncodedTensor, read_model, write_model
from tinyasr.format.encodings.sparse import BSRMatrix, CSRMatrix, bsr_arrays, csr_arrays
from tinyasr.kernels.recurrent import EMPTY_DENSE, column_blocks, recurrent_operands
from tinyasr_convert.sparse_choice import choose_recurrent_encoding, encode_recurrent
from tinyasr_convert.sparsity import magnitude_mask, prune_recurrent

torch = pytest.importorskip("torch")

_TORCH_GATES = {"LSTM": 4, "GRU": 3}


def _pruned_module(op, sparsity, block, seed, **kwargs):
    """A torch LSTM / GRU whose gate weights W and R (every layer and direction) are pruned by prune_recurrent."""
    torch.manual_seed(seed)
    module = getattr(torch.nn, op)(**kwargs).eval()
    with torch.no_grad():
        for name, weight in module.named_parameters():
            if name.startswith(("weight_hh", "weight_ih")):
                # torch's gate order differs from ONNX's, but gates are whole blocks of H rows (H % 8 == 0), so
                # 8 x 1 blocks of torch's rows are 8 x 1 blocks of ONNX's
                weight.copy_(torch.from_numpy(prune_recurrent(weight.numpy(), sparsity, block)))
    return module


class _Stack(torch.nn.Module):
    def __init__(self, sparsity, block):
        super().__init__()
        self.lstm = _pruned_module("LSTM", sparsity, block, 1, input_size=12, hidden_size=32, num_layers=2,
                                   bidirectional=True, batch_first=True)
        self.gru = _pruned_module("GRU", sparsity, block, 2, input_size=64, hidden_size=24, batch_first=True)

    def forward(self, x):
        return self.gru(self.lstm(x)[0])[0]


@pytest.mark.parametrize("block,kind", [(1, "csr"), (8, "bsr")])
def test_pruned_lstm_and_gru_are_stored_sparse_and_match_torch_onnxruntime_and_dense(tmp_path, block, kind):
    ort = pytest.importorskip("onnxruntime")
    from tinyasr.engine.offline import load_model
    from tinyasr_convert import from_torch

    module = _Stack(0.9, block).eval()
    x = torch.randn(2, 17, 12)
    paths = {}
    for sparse in ("auto", "dense"):
        paths[sparse] = from_torch(module, (x,), tmp_path / f"{sparse}.tasr", input_names=["x"], output_names=["y"],
                                   dynamic_axes={"x": {0: "batch", 1: "time"}, "y": {0: "batch", 1: "time"}},
                                   onnx_path=tmp_path / "m.onnx", sparse=sparse)
    sparse_model, dense_model = load_model(paths["auto"]), load_model(paths["dense"])
    recurrent = [node.inputs[2] for node in sparse_model.graph.nodes if node.op in ("LSTM", "GRU")]
    assert len(recurrent) == 3
    expected_type = CSRMatrix if kind == "csr" else BSRMatrix
    assert all(isinstance(sparse_model.tensors[name], expected_type) for name in recurrent)
    assert all(sparse_model.tensors[name].row_axes == 2 for name in recurrent)
    assert not any(isinstance(dense_model.tensors[name], expected_type) for name in recurrent)

    got = sparse_model.run({"x": x.numpy()})["y"]
    with torch.no_grad():
        np.testing.assert_allclose(got, module(x).numpy(), rtol=1e-5, atol=2e-6)
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(got, session.run(None, {"x": x.numpy()})[0], rtol=1e-5, atol=2e-6)
    np.testing.assert_allclose(got, dense_model.run({"x": x.numpy()})["y"], rtol=1e-6, atol=1e-6)


def test_a_sparse_lstm_streams_chunk_by_chunk_as_one_run(tmp_path):
    """A streamed LSTM carries its state between chunks with R stored sparse as with R dense."""
    from tinyasr.engine.offline import load_model
    from tinyasr.engine.streaming import GraphStream, StreamPlan
    from tinyasr_convert import from_torch

    class Streamable(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lstm = _pruned_module("LSTM", 0.9, 8, 9, input_size=10, hidden_size=16)

        def forward(self, x):  # [1, features, T] -> [1, hidden, T]
            return self.lstm(x.permute(2, 0, 1))[0].permute(1, 2, 0)

    module = Streamable().eval()
    x = torch.randn(1, 10, 31)
    path = from_torch(module, (x,), tmp_path / "s.tasr", input_names=["x"], output_names=["y"],
                      dynamic_axes={"x": {2: "time"}, "y": {2: "time"}})
    model = load_model(path)
    (node,) = [node for node in model.graph.nodes if node.op == "LSTM"]
    assert isinstance(model.tensors[node.inputs[2]], BSRMatrix)
    stream = GraphStream(StreamPlan.from_model(model))
    chunks = [stream.accept(x.numpy()[:, :, a:b]).get("y") for a, b in ((0, 4), (4, 5), (5, 31))]
    chunks.append(stream.finish().get("y"))
    got = np.concatenate([c for c in chunks if c is not None], axis=2)
    with torch.no_grad():
        np.testing.assert_allclose(got, module(x).numpy(), rtol=1e-5, atol=2e-6)


@pytest.mark.parametrize("op,attrs", [("GRU", {"linear_before_reset": 0}), ("GRU", {"linear_before_reset": 1}),
                                      ("LSTM", {})])
@pytest.mark.parametrize("form", ["csr", "bsr"])
def test_the_ops_with_a_stored_sparse_r_equal_their_dense_run(op, attrs, form):
    """Both directions, two batch rows of different lengths, initial states: R as the file decodes it (csr, or
    8 x 1 bsr run as column blocks) against the same R dense (which tests/test_ops.py checks against
    onnxruntime)."""
    from tinyasr.ops import run_op

    rng = np.random.default_rng(11)
    hidden, gates = 16, _TORCH_GATES[op]
    r = prune_recurrent(rng.standard_normal((2, gates * hidden, hidden)).astype(np.float32), 0.8,
                        1 if form == "csr" else 8)
    matrix = r.reshape(-1, hidden)
    stored = (CSRMatrix(*csr_arrays(matrix), r.shape, 2) if form == "csr"
              else BSRMatrix(*bsr_arrays(matrix, (8, 1)), r.shape, (8, 1), 2))
    inputs = [rng.standard_normal((9, 2, 5)).astype(np.float32),
              rng.standard_normal((2, gates * hidden, 5)).astype(np.float32), None,
              rng.standard_normal((2, 2 * gates * hidden)).astype(np.float32), np.array([9, 6], np.int32),
              rng.standard_normal((2, 2, hidden)).astype(np.float32)]
    if op == "LSTM":
        inputs.append(rng.standard_normal((2, 2, hidden)).astype(np.float32))
    assert recurrent_operands(stored, 1)[0] is EMPTY_DENSE  # runs sparse, not decoded
    attrs = {"hidden_size": hidden, "direction": "bidirectional", **attrs}
    outputs = 3 if op == "LSTM" else 2
    dense = run_op(op, inputs[:2] + [r] + inputs[3:], attrs, num_outputs=outputs)
    sparse = run_op(op, inputs[:2] + [stored] + inputs[3:], attrs, num_outputs=outputs)
    for got, want in zip(sparse, dense):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def test_the_choice_follows_the_pattern_and_the_sparsity():
    rng = np.random.default_rng(0)
    r = rng.standard_normal((2, 4 * 64, 64)).astype(np.float32)
    matrix = r.reshape(-1, 64)
    assert choose_recurrent_encoding(matrix) == "dense"
    assert choose_recurrent_encoding(prune_recurrent(r, 0.9, 1).reshape(-1, 64)) == "csr"
    assert choose_recurrent_encoding(prune_recurrent(r, 0.9, 8).reshape(-1, 64)) == "bsr"
    assert choose_recurrent_encoding(prune_recurrent(r, 0.3, 1).reshape(-1, 64)) == "dense"
    pruned = prune_recurrent(r, 0.9, 8)
    for d in range(2):  # each direction pruned on its own, in whole 8 x 1 blocks
        assert np.count_nonzero(pruned[d]) == 8 * round(0.1 * pruned[d].size / 8)  # 10 % of the blocks kept
        np.testing.assert_array_equal(pruned[d] != 0, magnitude_mask(r[d], 0.9, 8))
    out, kinds = encode_recurrent({"r": pruned}, ["r"], "csr")
    assert kinds == {"r": "csr"} and out["r"].params == {"row_axes": 2}
    out, kinds = encode_recurrent({"r": prune_recurrent(r, 0.9, 1)}, ["r"], "bsr")  # no 8 x 1 blocks: csr
    assert kinds == {"r": "csr"}


def test_stored_forms_give_the_kernels_each_directions_operands():
    """recurrent_operands on a decoded csr / bsr R [2, G*H, P] gives per direction what the kernel's own
    constructors give from that direction's dense matrix."""
    rng = np.random.default_rng(3)
    r = prune_recurrent(rng.standard_normal((2, 96, 16)).astype(np.float32), 0.8, 8)
    matrix = r.reshape(-1, 16)
    csr = CSRMatrix(*csr_arrays(matrix), r.shape, 2)
    bsr = BSRMatrix(*bsr_arrays(matrix, (8, 1)), r.shape, (8, 1), 2)
    for d in range(2):
        dense_t, values, indices, indptr = recurrent_operands(csr, d)
        assert dense_t is EMPTY_DENSE
        rows = np.repeat(np.arange(96), np.diff(indptr))
        rebuilt = np.zeros((96, 16), np.float32)
        rebuilt[rows, indices[indptr[0]:indptr[-1]]] = values[indptr[0]:indptr[-1]]
        np.testing.assert_array_equal(rebuilt, r[d])
        for got, want in zip(recurrent_operands(bsr, d)[1:], column_blocks(r[d])):
            np.testing.assert_array_equal(got, want)
        np.testing.assert_array_equal(recurrent_operands(r, d)[0], r[d].T)
    other = BSRMatrix(*bsr_arrays(matrix, (4, 1)), r.shape, (4, 1), 2)  # no kernel for 4 x 1: dense
    np.testing.assert_array_equal(recurrent_operands(other, 1)[0], r[1].T)


def _graph_manifest():
    graph = {"inputs": [{"name": "x", "dtype": "float32", "shape": [5, 1, 4]}],
             "outputs": [{"name": "y", "dtype": "float32", "shape": [5, 1, 1, 8]}],
             "nodes": [{"name": "lstm", "op": "LSTM", "inputs": ["x", "w", "r"], "outputs": ["y"],
                        "attrs": {"hidden_size": 8}}]}
    return {"graph": graph, "frontend": None, "decoder": None,
            "provenance": {"source": "test", "converter": "test"}}


@pytest.mark.parametrize("params, parts, message", [
    ({"row_axes": 3}, {}, r"row_axes must be an int from 1 to rank - 1 = 2, got 3"),
    ({"row_axes": True}, {}, r"row_axes must be an int"),
    ({"row_axes": 2}, {"indices": np.full(32, 8, np.uint16)}, r"column index 8 is outside \[0, 8\)"),
    ({}, {}, r"part 'indptr' is int32\[33\], expected int32\[2\]"),  # rows are shape[0] without row_axes
])
def test_a_bad_recurrent_encoding_is_refused_at_write_and_load(tmp_path, params, parts, message):
    r = np.zeros((1, 32, 8), np.float32)
    r[0, np.arange(32), np.arange(32) % 8] = 1.0
    values, indices, indptr = csr_arrays(r.reshape(32, 8))
    tensor = EncodedTensor("csr", "float32", r.shape, {"values": values, "indices": indices, "indptr": indptr,
                                                       **parts}, params)
    with pytest.raises(ModelFileError, match=rf"tensor 'r' \(csr\): .*{message}"):
        write_model(tmp_path / "bad.tasr", _graph_manifest(),
                    {"w": np.zeros((1, 32, 4), np.float32), "r": tensor})


def test_a_stored_sparse_r_round_trips(tmp_path):
    rng = np.random.default_rng(4)
    r = prune_recurrent(rng.standard_normal((1, 32, 8)).astype(np.float32), 0.75, 8)
    out, _ = encode_recurrent({"r": r}, ["r"], "bsr")
    write_model(tmp_path / "m.tasr", _graph_manifest(), {"w": np.zeros((1, 32, 4), np.float32), **out})
    with read_model(tmp_path / "m.tasr") as model_file:
        stored = model_file.tensor("r")
        assert isinstance(stored, BSRMatrix) and stored.row_axes == 2 and stored.block == (8, 1)
        np.testing.assert_array_equal(stored.to_dense(), r)
        assert model_file.version == (1, 3)  # row_axes came with 1.3: older readers refuse it, never misread


# --------------------------------------------------------------------------- the prediction network


@pytest.mark.parametrize("block", [1, 8])
@pytest.mark.parametrize("proj_size", [0, 24])
@pytest.mark.parametrize("input_size", [16, 192])  # 192 = 4 x 48: a square CSR W (runs dense, recurrent_operands)
def test_a_pruned_prediction_network_steps_as_torch_and_as_dense(block, proj_size, input_size):
    """A two-layer prediction network (embedding + torch LSTM, with and without proj_size) pruned 90 %, its W and
    R given as the file decodes them: each step equals torch's and the dense path's."""
    from tinyasr.decoding.transducer import LSTMLayer, PredictionNetwork
    from tinyasr_convert.transducer import torch_lstm_gates

    lstm = _pruned_module("LSTM", 0.9, block, 7, input_size=input_size, hidden_size=48, num_layers=2,
                          proj_size=proj_size)
    embedding = np.random.default_rng(7).standard_normal((10, input_size)).astype(np.float32)
    weights = {k: v.detach().numpy() for k, v in lstm.state_dict().items()}

    def stored(matrix, encoded):
        if encoded == "csr":
            return CSRMatrix(*csr_arrays(matrix), matrix.shape)
        if encoded == "bsr":
            return BSRMatrix(*bsr_arrays(matrix, (8, 1)), matrix.shape, (8, 1))
        return matrix

    def layers(encoded):
        made = []
        for n in range(2):
            made.append(LSTMLayer(stored(torch_lstm_gates(weights[f"weight_ih_l{n}"]), encoded),
                                  stored(torch_lstm_gates(weights[f"weight_hh_l{n}"]), encoded),
                                  torch_lstm_gates(weights[f"bias_ih_l{n}"] + weights[f"bias_hh_l{n}"]),
                                  weights.get(f"weight_hr_l{n}")))
        return PredictionNetwork(embedding, made)

    sparse = layers("csr" if block == 1 else "bsr")
    dense = layers("dense")
    assert sparse.layers[0].recurrent[0] is EMPTY_DENSE and dense.layers[0].recurrent[0].size
    assert sparse.layers[1].input_operands is not None and dense.layers[1].input_operands is None
    tokens = [3, 1, 4, 1, 5, 9, 2, 6]
    with torch.no_grad():
        expected = lstm(torch.from_numpy(embedding[tokens])[:, None])[0][:, 0].numpy()
    state_sparse, state_dense = sparse.initial_state(), dense.initial_state()
    for t, token in enumerate(tokens):
        out_sparse, state_sparse = sparse.step(token, state_sparse)
        out_dense, state_dense = dense.step(token, state_dense)
        np.testing.assert_allclose(out_sparse, expected[t], rtol=1e-5, atol=2e-6)
        np.testing.assert_allclose(out_sparse, out_dense, rtol=1e-6, atol=1e-6)
    batch_out, _ = sparse.step(np.array([3, 4]), tuple((np.repeat(h, 2, 0), np.repeat(c, 2, 0))
                                                        for h, c in sparse.initial_state()))
    np.testing.assert_allclose(batch_out[0], expected[0], rtol=1e-5, atol=2e-6)


# --------------------------------------------------------------------------- a transducer file


def test_a_transducer_file_with_a_pruned_prediction_network_decodes_as_its_dense_twin(tmp_path):
    """NeMo's LSTM transducer with its prediction network's R pruned 90 % in 8 x 1 blocks, stored by the
    converter's choice (bsr) and dense: the Recognizer decodes the test vectors to the same tokens from both, and
    every prediction step agrees within float32 rounding; a non-finite stored value is refused naming the key."""
    import json

    from _paths import SHARED_DIR
    from tinyasr.pipeline.recognizer import Recognizer
    from tinyasr_convert.nemo import convert_nemo
    from tinyasr_convert.transducer import encode_prediction_weights

    folder = SHARED_DIR / "models" / "nemo-random" / "lstm_transducer_small"
    if not folder.exists():
        pytest.skip(f"shared NeMo models not available ({folder})")
    source = convert_nemo(folder / "model.nemo", tmp_path / "source.tasr")
    with read_model(source) as model_file:
        manifest = {k: v for k, v in model_file.manifest.items() if k not in ("format", "version", "tensors")}
        tensors = {name: np.array(model_file.tensor(name)) for name in model_file.tensor_names()}
    manifest = json.loads(json.dumps(manifest))
    names = [layer[key] for layer in manifest["decoder"]["prediction"]["layers"] for key in ("w", "r")]
    for name in names:
        tensors[name] = prune_recurrent(tensors[name], 0.9, 8)
    write_model(tmp_path / "dense.tasr", manifest, tensors)
    encoded, kinds = encode_prediction_weights(manifest["decoder"], tensors, "auto")
    assert kinds == {name: "bsr" for name in names}
    write_model(tmp_path / "sparse.tasr", manifest, encoded)

    sparse, dense = Recognizer(tmp_path / "sparse.tasr"), Recognizer(tmp_path / "dense.tasr")
    z = np.load(folder / "test_vectors.npz")
    features, length = z["input.audio_signal"][0], int(z["input.length"][0])
    assert ([t.id for t in sparse.transcribe_features(features, length).tokens]
            == [t.id for t in dense.transcribe_features(features, length).tokens])
    sparse_net, dense_net = sparse._transducer.prediction, dense._transducer.prediction
    assert all(isinstance(layer.r, BSRMatrix) and isinstance(layer.w, BSRMatrix) for layer in sparse_net.layers)
    state_sparse, state_dense = sparse_net.initial_state(), dense_net.initial_state()
    for token in (5, 17, 0, 99, 42):
        out_sparse, state_sparse = sparse_net.step(token, state_sparse)
        out_dense, state_dense = dense_net.step(token, state_dense)
        np.testing.assert_allclose(out_sparse, out_dense, rtol=1e-6, atol=1e-6)

    encoded[names[0]].parts["values"][3] = np.inf
    write_model(tmp_path / "inf.tasr", manifest, encoded)
    with pytest.raises(ModelFileError, match=r"'prediction.layers\[0\].w' names tensor .* NaN or infinite"):
        Recognizer(tmp_path / "inf.tasr").transcribe_features(features, length)
