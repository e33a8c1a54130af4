"""LSTM / GRU against torch (the independent reference) over many shapes, directions, lengths and layouts; the
sparse recurrent product against the dense one; streaming chunk by chunk against the whole sequence.
onnxruntime cases of the ops are in tests/test_ops.py (test_lstm, test_gru)."""

from __future__ import annotations

import numpy as np
import pytest

from tinyasr.errors import GraphError
from tinyasr.format.encodings.sparse import csr_arrays
from tinyasr.format.graph import Node
from tinyasr.kernels.recurrent import (EMPTY_CSR, EMPTY_DENSE, gru_direction, gru_reference, lstm_direction,
                                       lstm_reference)
from tinyasr.ops import lookup, run_op, stream_rule
from tinyasr.ops.streaming_rules import ReceptiveField, Stream

torch = pytest.importorskip("torch")

_TORCH_ORDER = {"LSTM": (0, 3, 1, 2), "GRU": (1, 0, 2)}  # torch gate blocks (i f g o / r z n) in ONNX order


def _onnx_weights(module, op):
    """W, R, B as ONNX stores them, from a one-layer torch LSTM / GRU (the exporter's re-ordering)."""
    directions = ("", "_reverse") if module.bidirectional else ("",)

    def reorder(t):
        return torch.cat([t.chunk(len(_TORCH_ORDER[op]))[i] for i in _TORCH_ORDER[op]])

    def stack(name):
        return torch.stack([reorder(getattr(module, f"{name}_l0{d}")) for d in directions]).detach().numpy()

    bias = np.concatenate([stack("bias_ih"), stack("bias_hh")], axis=1)
    return stack("weight_ih"), stack("weight_hh"), bias


CASES = [  # (steps, batch, features, hidden, bidirectional, batch_first)
    (1, 1, 3, 2, False, False), (7, 1, 16, 8, False, False), (9, 3, 5, 7, True, False),
    (12, 2, 24, 32, True, True), (30, 4, 40, 64, False, True), (5, 5, 8, 128, True, False),
]


@pytest.mark.parametrize("op", ["LSTM", "GRU"])
@pytest.mark.parametrize("steps,batch,features,hidden,bidirectional,batch_first", CASES)
def test_matches_torch(op, steps, batch, features, hidden, bidirectional, batch_first):
    torch.manual_seed(steps * 100 + hidden)
    module = getattr(torch.nn, op)(features, hidden, bidirectional=bidirectional, batch_first=batch_first)
    nd = 2 if bidirectional else 1
    x = torch.randn(batch, steps, features) if batch_first else torch.randn(steps, batch, features)
    h0 = torch.randn(nd, batch, hidden)
    states = (h0, torch.randn(nd, batch, hidden)) if op == "LSTM" else h0
    with torch.no_grad():
        y, finals = module(x, states)
    finals = finals if op == "LSTM" else (finals,)
    layout = int(batch_first)
    given = [s.numpy().transpose(1, 0, 2) if layout else s.numpy() for s in (states if op == "LSTM" else (h0,))]
    attrs = {"hidden_size": hidden, "direction": "bidirectional" if bidirectional else "forward",
             "layout": layout, "linear_before_reset": 1}
    if op == "LSTM":
        attrs.pop("linear_before_reset")
    ours = run_op(op, [x.numpy(), *_onnx_weights(module, op), None, *given], attrs, num_outputs=1 + len(finals))
    # torch's y is [.., T, directions * H]: ONNX keeps the directions apart
    y_ours = ours[0] if layout else ours[0].transpose(0, 2, 1, 3)
    np.testing.assert_allclose(y_ours.reshape(y.shape), y.numpy(), rtol=1e-5, atol=2e-6)
    for mine, theirs in zip(ours[1:], finals):
        np.testing.assert_allclose(mine.transpose(1, 0, 2) if layout else mine, theirs.numpy(), rtol=1e-5,
                                   atol=2e-6)


@pytest.mark.parametrize("op", ["LSTM", "GRU"])
def test_sequence_lengths_match_torch_packed_sequences(op):
    torch.manual_seed(3)
    module = getattr(torch.nn, op)(6, 10, bidirectional=True)
    lengths = [11, 4, 7, 1]
    x = torch.randn(11, len(lengths), 6)
    packed = torch.nn.utils.rnn.pack_padded_sequence(x, torch.tensor(lengths), enforce_sorted=False)
    with torch.no_grad():
        out, finals = module(packed)
    y, _ = torch.nn.utils.rnn.pad_packed_sequence(out, total_length=11)
    finals = finals if op == "LSTM" else (finals,)
    attrs = {"hidden_size": 10, "direction": "bidirectional"}
    if op == "GRU":
        attrs["linear_before_reset"] = 1
    ours = run_op(op, [x.numpy(), *_onnx_weights(module, op), np.array(lengths, np.int32)], attrs,
                  num_outputs=1 + len(finals))
    np.testing.assert_allclose(ours[0].transpose(0, 2, 1, 3).reshape(y.shape), y.numpy(), rtol=1e-5, atol=2e-6)
    for mine, theirs in zip(ours[1:], finals):
        np.testing.assert_allclose(mine, theirs.numpy(), rtol=1e-5, atol=2e-6)


@pytest.mark.parametrize("hidden,proj", [(16, 5), (48, 40)])  # 40: one 32-unit register block and 8 after it
@pytest.mark.parametrize("bidirectional,batch_first", [(False, False), (True, True), (True, False)])
def test_lstm_projection_input_matches_torch_proj_size(bidirectional, batch_first, hidden, proj):
    """tinyasr's ninth LSTM input (torch proj_size, NeMo's RNNEncoder), with initial states, both layouts."""
    torch.manual_seed(7)
    module = torch.nn.LSTM(12, hidden, bidirectional=bidirectional, batch_first=batch_first, proj_size=proj)
    nd, steps, batch = (2 if bidirectional else 1), 9, 3
    x = torch.randn(batch, steps, 12) if batch_first else torch.randn(steps, batch, 12)
    h0, c0 = torch.randn(nd, batch, proj), torch.randn(nd, batch, hidden)
    with torch.no_grad():
        y, (h, c) = module(x, (h0, c0))
    directions = ("", "_reverse") if bidirectional else ("",)
    projection = np.stack([getattr(module, f"weight_hr_l0{d}").detach().numpy() for d in directions])
    layout = int(batch_first)
    states = [s.numpy().transpose(1, 0, 2) if layout else s.numpy() for s in (h0, c0)]
    attrs = {"hidden_size": hidden, "direction": "bidirectional" if bidirectional else "forward", "layout": layout}
    ours = run_op("LSTM", [x.numpy(), *_onnx_weights(module, "LSTM"), None, *states, None, projection], attrs,
                  num_outputs=3)
    y_ours = ours[0] if layout else ours[0].transpose(0, 2, 1, 3)
    np.testing.assert_allclose(y_ours.reshape(y.shape), y.numpy(), rtol=1e-5, atol=2e-6)
    for mine, theirs in zip(ours[1:], (h, c)):
        np.testing.assert_allclose(mine.transpose(1, 0, 2) if layout else mine, theirs.numpy(), rtol=1e-5, atol=2e-6)
    with pytest.raises(GraphError, match="projection .* must be"):
        run_op("LSTM", [x.numpy(), *_onnx_weights(module, "LSTM"), None, None, None, None, projection[:, :, :3]],
               attrs)


def test_kernel_matches_its_numpy_reference_both_directions():
    rng = np.random.default_rng(0)
    steps, batch, hidden = 6, 3, 5
    pre = rng.standard_normal((steps, batch, 4 * hidden)).astype(np.float32)
    r = (rng.standard_normal((4 * hidden, hidden)) * 0.5).astype(np.float32)
    h0, c0 = rng.standard_normal((2, batch, hidden)).astype(np.float32)
    lengths = np.array([6, 0, 3])
    for reverse in (False, True):
        y_ref, h_ref, c_ref = lstm_reference(pre, r, h0, c0, lengths, reverse)
        h, c, y = h0.copy(), c0.copy(), np.empty((steps, batch, hidden), np.float32)
        lstm_direction(pre, np.ascontiguousarray(r.T), *EMPTY_CSR, np.zeros(0, np.float32), EMPTY_DENSE, h, c, lengths,
                       reverse, np.float32(0), y)
        np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(h[[0, 2]], h_ref[[0, 2]], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(c, c_ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("linear_before_reset", [False, True])
def test_gru_kernel_matches_its_numpy_reference(linear_before_reset):
    rng = np.random.default_rng(1)
    steps, batch, hidden = 5, 2, 4
    x_proj = rng.standard_normal((steps, batch, 3 * hidden)).astype(np.float32)
    wb, rb = rng.standard_normal((2, 3 * hidden)).astype(np.float32)
    r = (rng.standard_normal((3 * hidden, hidden)) * 0.5).astype(np.float32)
    h0 = rng.standard_normal((batch, hidden)).astype(np.float32)
    lengths = np.array([5, 2])
    for reverse in (False, True):
        y_ref, h_ref = gru_reference(x_proj, wb, r, rb, h0, lengths, linear_before_reset, reverse)
        pre = x_proj + wb
        pre[..., :2 * hidden] += rb[:2 * hidden]
        h, y = h0.copy(), np.empty((steps, batch, hidden), np.float32)
        gru_direction(pre, np.ascontiguousarray(r.T), *EMPTY_CSR, np.ascontiguousarray(rb[2 * hidden:]), h, lengths,
                      reverse, np.float32(0), linear_before_reset, y)
        np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(h, h_ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("hidden,sparsity", [(8, 0.5), (64, 0.9), (256, 0.9)])
def test_sparse_recurrent_product_equals_dense(hidden, sparsity):
    """The CSR path of the kernel (R stored as gate rows x hidden) gives the dense path's result."""
    rng = np.random.default_rng(hidden)
    steps, batch = 5, 2
    pre = rng.standard_normal((steps, batch, 4 * hidden)).astype(np.float32)
    r = (rng.standard_normal((4 * hidden, hidden)) / np.sqrt(hidden)).astype(np.float32)
    r[rng.random(r.shape) < sparsity] = 0.0
    lengths = np.full(batch, steps)
    no_peephole = np.zeros(0, np.float32)
    runs = []
    for dense_t, csr in ((np.ascontiguousarray(r.T), EMPTY_CSR), (EMPTY_DENSE, csr_arrays(r))):
        h, c = np.zeros((2, batch, hidden), np.float32)
        y = np.empty((steps, batch, hidden), np.float32)
        lstm_direction(pre, dense_t, *csr, no_peephole, EMPTY_DENSE, h, c, lengths, False, np.float32(0), y)
        runs.append((y, h, c))
    for dense_out, sparse_out in zip(*runs):
        np.testing.assert_allclose(sparse_out, dense_out, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("op", ["LSTM", "GRU"])
def test_streams_chunk_by_chunk_as_one_run(op):
    rng = np.random.default_rng(1)
    inputs = [rng.standard_normal((17, 1, 6)).astype(np.float32)]
    gates = 4 if op == "LSTM" else 3
    inputs += [(rng.standard_normal(s) * 0.4).astype(np.float32) for s in ((1, gates * 8, 6), (1, gates * 8, 8),
                                                                          (1, 2 * gates * 8))]
    attrs = {"hidden_size": 8}
    whole = run_op(op, inputs, attrs, num_outputs=1)[0]
    node = Node("rnn", op, ("x", "W", "R", "B"), ("y",), attrs)
    stream = Stream(3, 0, ReceptiveField(0, 0, 1))
    planned = stream_rule(op).plan(node, lookup(op), (None, *inputs[1:]),
                                   (stream, None, None, None))
    assert planned.outputs[0].axis == 0 and planned.outputs[0].rank == 4
    state = planned.step.new_state()
    chunks = [planned.step.advance(state, [inputs[0][a:b]], False)[0] for a, b in ((0, 5), (5, 6), (6, 17))]
    np.testing.assert_allclose(np.concatenate(chunks), whole, rtol=1e-6, atol=1e-6)


def test_streaming_refusals_name_the_reason():
    stream = Stream(3, 0, ReceptiveField(0, 0, 1))
    rule = stream_rule("LSTM")
    cases = [({"direction": "bidirectional"}, ("y",), "reads frames that have not arrived"),
             ({}, ("y", "y_h"), "final-state outputs Y_h / Y_c are read")]
    for attrs, outputs, message in cases:
        node = Node("rnn", "LSTM", ("x", "W", "R"), outputs, {"hidden_size": 2, **attrs})
        with pytest.raises(GraphError, match=message):
            rule.plan(node, None, (None, None, None), (stream, None, None))


@pytest.mark.parametrize("attrs,shapes,message", [
    ({"hidden_size": 2, "activations": ["Relu", "Tanh", "Tanh"]}, None, "activations .* not supported"),
    ({"hidden_size": 2, "direction": "sideways"}, None, "direction 'sideways'"),
    ({"hidden_size": 2, "input_forget": 1}, None, "input_forget"),
    ({"hidden_size": 3}, None, r"do not match 1 direction\(s\) of hidden size 3"),
    ({"hidden_size": 2}, ((4, 1, 5), (1, 8, 3), (1, 8, 2)), "X has 5 features but W expects 3"),
])
def test_errors_name_the_problem(attrs, shapes, message):
    shapes = shapes or ((4, 1, 3), (1, 8, 3), (1, 8, 2))
    inputs = [np.zeros(s, np.float32) for s in shapes]
    with pytest.raises(GraphError, match=message):
        run_op("LSTM", inputs, attrs, num_outputs=3)


def test_torch_export_of_a_stacked_lstm_converts_and_matches(tmp_path):
    """torch.onnx's LSTM export (two layers, bidirectional, batch-first, Y_h unused) through the converter."""
    from tinyasr.engine.offline import load_model
    from tinyasr_convert import from_torch

    class Stack(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lstm = torch.nn.LSTM(12, 16, num_layers=2, bidirectional=True, batch_first=True)
            self.gru = torch.nn.GRU(32, 8, batch_first=True)

        def forward(self, x):
            return self.gru(self.lstm(x)[0])[0]

    torch.manual_seed(5)
    module = Stack().eval()
    x = torch.randn(2, 23, 12)
    path = from_torch(module, (x,), tmp_path / "lstm.tasr", input_names=["x"], output_names=["y"],
                      dynamic_axes={"x": {0: "batch", 1: "time"}, "y": {0: "batch", 1: "time"}})
    with torch.no_grad():
        expected = module(x).numpy()
    np.testing.assert_allclose(load_model(path).run({"x": x.numpy()})["y"], expected, rtol=1e-5, atol=2e-6)


def test_converted_lstm_streams_with_unread_final_states_dropped(tmp_path):
    """torch names Y_h / Y_c even when nothing reads them; the converter drops them, so the node streams, and the
    chunked output equals the offline one."""
    from tinyasr.engine.offline import load_model
    from tinyasr.engine.streaming import GraphStream, StreamPlan
    from tinyasr_convert import from_torch

    class Streamable(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lstm = torch.nn.LSTM(10, 12)

        def forward(self, x):  # [1, features, T] -> [1, hidden, T]
            return self.lstm(x.permute(2, 0, 1))[0].permute(1, 2, 0)

    torch.manual_seed(9)
    x = torch.randn(1, 10, 31)
    path = from_torch(Streamable(), (x,), tmp_path / "s.tasr", input_names=["x"], output_names=["y"],
                      dynamic_axes={"x": {2: "time"}, "y": {2: "time"}})
    model = load_model(path)
    (lstm_node,) = [node for node in model.graph.nodes if node.op == "LSTM"]
    assert len(lstm_node.outputs) == 1
    whole = model.run({"x": x.numpy()})["y"]
    stream = GraphStream(StreamPlan.from_model(model))
    chunks = [stream.accept(x.numpy()[:, :, a:b]).get("y") for a, b in ((0, 4), (4, 5), (5, 31))]
    chunks.append(stream.finish().get("y"))
    got = np.concatenate([c for c in chunks if c is not None], axis=2)
    np.testing.assert_allclose(got, whole, rtol=1e-6, atol=1e-6)
