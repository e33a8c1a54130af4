"""Streaming: features, resampling, stateful graph execution and online recognition equal the offline results."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tinyasr.audio.io import load_audio

from tinyasr.audio.resample import resample
from tinyasr.errors import GraphError, TinyASRError
from tinyasr.features.frontend import FrontendConfig, compute_features
from tinyasr.format.graph import Graph, Node, ValueInfo
from tinyasr.engine.offline import Model
from tinyasr.features.streaming import FixedNormalizer, RunningNormalizer, StreamingFeatures, estimate_feature_stats
from tinyasr.audio.resample import StreamResampler
from tinyasr.engine.streaming import GraphStream, StreamPlan
from tinyasr.kernels import conv_program
from tinyasr.ops import conv_program as conv_program_step
from tinyasr.cli.stream import PORTAUDIO_HINT
from tinyasr.pipeline.online import EndpointConfig, OnlineStream
from _paths import SHARED_DIR  # noqa: E402

SHARED = str(SHARED_DIR)
AUDIO = os.path.join(SHARED, "audio")
GOFORWARD = os.path.join(AUDIO, "pocketsphinx_goforward.wav")
needs_audio = pytest.mark.skipif(not os.path.exists(GOFORWARD), reason="shared audio not available")

RNG = np.random.default_rng(2024)
SIGNAL = (0.1 * RNG.standard_normal(16000 + 357)).astype(np.float32)
FRONTENDS = {
    "nemo_mel": FrontendConfig(normalize=None),  # pad_to 16: finish() must add the offline padding frames
    "mfcc_reflect": FrontendConfig(kind="mfcc", n_mfcc=13, window_periodic=True, mel_scale="htk", mel_norm=None,
                                   preemph=None, pad_mode="reflect", normalize=None, pad_to=0),
    "digits_8k": FrontendConfig(sample_rate=8000, n_fft=256, win_length=200, hop_length=80, highfreq=4000.0,
                                normalize=None, pad_to=0),
    "digits_8k_padded": FrontendConfig(sample_rate=8000, n_fft=256, win_length=200, hop_length=80,
                                       highfreq=4000.0, normalize=None, pad_to=0, pad_seconds=0.1),  # issue 16
}


def _split(signal: np.ndarray, cuts, axis=-1):
    return np.split(signal, sorted(int(c) % (signal.shape[axis] + 1) for c in cuts), axis=axis)


# ---------------------------------------------------------------- front end and resampler


@settings(max_examples=25, deadline=None)
@given(name=st.sampled_from(sorted(FRONTENDS)), cuts=st.lists(st.integers(0, 10**6), max_size=30))
def test_streamed_features_equal_offline_features(name, cuts):
    config = FRONTENDS[name]
    expected, _ = compute_features(SIGNAL, config)
    stream = StreamingFeatures(config)
    pieces = [stream.accept(piece) for piece in _split(SIGNAL, cuts)] + [stream.finish()]
    got = np.concatenate(pieces, axis=1)
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)  # measured: bit-identical


def test_frames_leave_as_soon_as_their_half_window_of_lookahead_is_in():
    config = FRONTENDS["nemo_mel"]
    stream = StreamingFeatures(config)
    assert stream.accept(SIGNAL[:255]).shape[1] == 0  # frame 0 covers samples [-256, 256)
    assert stream.accept(SIGNAL[255:256]).shape[1] == 1
    assert stream.accept(SIGNAL[256:256 + 160]).shape[1] == 1


@settings(max_examples=20, deadline=None)
@given(rates=st.sampled_from([(16000, 8000), (44100, 16000), (8000, 16000), (48000, 16000), (22050, 8000)]),
       cuts=st.lists(st.integers(0, 10**6), max_size=30))
def test_stream_resampler_equals_offline_resample(rates, cuts):
    expected = resample(SIGNAL, *rates)
    stream = StreamResampler(*rates)
    pieces = []
    for piece in _split(SIGNAL, cuts):
        announced = stream.announce(len(piece))  # what OnlineStream counts while it holds the input
        pieces.append(stream.accept(piece))
        assert announced == len(pieces[-1])
    got = np.concatenate(pieces + [stream.finish()])
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)


def test_normalizers_against_numpy_statistics():
    per_feature = FrontendConfig(normalize="per_feature", pad_to=0)
    raw = FrontendConfig(normalize=None, pad_to=0)
    short = SIGNAL[:4000]  # 25 frames: shorter than the warm-up, so normalised over the whole utterance
    expected, valid = compute_features(short, per_feature)
    stream = StreamingFeatures(per_feature, RunningNormalizer(warmup=50))
    got = np.concatenate([stream.accept(short[:1000]), stream.accept(short[1000:]), stream.finish()], axis=1)
    np.testing.assert_allclose(got[:, :valid], expected[:, :valid], rtol=0, atol=1e-4)

    features, valid = compute_features(SIGNAL, raw)
    mean, std = estimate_feature_stats([SIGNAL[:9000], SIGNAL[9000:]], raw)
    parts = [compute_features(p, raw) for p in (SIGNAL[:9000], SIGNAL[9000:])]
    frames = np.concatenate([f[:, :v] for f, v in parts], axis=1).astype(np.float64)
    np.testing.assert_allclose(mean, frames.mean(axis=1), rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(std, frames.std(axis=1, ddof=1), rtol=1e-6)
    fixed = StreamingFeatures(per_feature, FixedNormalizer(mean, std))
    got = np.concatenate([fixed.accept(SIGNAL), fixed.finish()], axis=1)[:, :valid]
    np.testing.assert_allclose(got, (features[:, :valid] - mean[:, None]) / (std[:, None] + 1e-5), atol=1e-4)


def test_running_normalizer_with_a_prior_equals_statistics_over_prior_frames_and_frames_so_far():
    rng = np.random.default_rng(5)
    prior_frames = rng.standard_normal((3, 20)) * 2.0 + 1.0  # real frames standing for the prior
    frames = rng.standard_normal((3, 30)) * 3.0 - 2.0
    prior = FixedNormalizer(prior_frames.mean(axis=1), prior_frames.std(axis=1, ddof=1))
    normalizer = RunningNormalizer(prior=prior, prior_frames=20)
    got = np.concatenate([normalizer(frames[:, :7]), normalizer(frames[:, 7:8]), normalizer(frames[:, 8:])], axis=1)
    for t in range(frames.shape[1]):
        seen = np.concatenate([prior_frames, frames[:, :t + 1]], axis=1)
        expected = (frames[:, t] - seen.mean(axis=1)) / (seen.std(axis=1, ddof=1) + 1e-5)
        np.testing.assert_allclose(got[:, t], expected, rtol=1e-9, atol=1e-9)


def test_unstreamable_front_ends_are_refused():
    with pytest.raises(TinyASRError, match="remove_mean"):
        StreamingFeatures(FrontendConfig(remove_mean=True, normalize=None))
    with pytest.raises(TinyASRError, match="per_feature.*FixedNormalizer or RunningNormalizer"):
        StreamingFeatures(FrontendConfig())


# ---------------------------------------------------------------- stateful graph execution


def conv_net(causal: bool, features: int = 5, channels: int = 8, classes: int = 4, seed: int = 0) -> Model:
    """A QuartzNet-shaped graph built by hand: strided prologue, depthwise + pointwise with a fused residual,
    a dilated depthwise conv, 1x1 decoder, Transpose, LogSoftmax.  Causal: all padding on the left."""
    rng = np.random.default_rng(seed)
    nodes, tensors = [], {}

    def conv(name, x, c_in, c_out, kernel, stride=1, dilation=1, group=1, residual=None, activation=""):
        span = dilation * (kernel - 1)
        tensors[name + ".w"] = (rng.standard_normal((c_out, c_in // group, kernel)) / np.sqrt(c_in // group * kernel)
                                ).astype(np.float32)
        tensors[name + ".b"] = (0.1 * rng.standard_normal(c_out)).astype(np.float32)
        inputs = (x, name + ".w", name + ".b") + ((residual,) if residual else ())
        nodes.append(Node(name, "Conv", inputs, (name + ".y",), {
            "group": group, "strides": [stride], "dilations": [dilation], "activation": activation,
            "pads": [span, 0] if causal else [span // 2, span - span // 2]}))
        return name + ".y"

    y = conv("prologue", "x", features, channels, 5, stride=2, activation="Relu")
    skip = conv("residual", y, channels, channels, 1)
    y = conv("pointwise", conv("depthwise", y, channels, channels, 7, group=channels), channels, channels, 1,
             residual=skip, activation="Relu")
    y = conv("decoder", conv("dilated", y, channels, channels, 5, dilation=2, group=channels), channels, classes, 1)
    nodes.append(Node("transpose", "Transpose", (y,), ("t",), {"perm": [0, 2, 1]}))
    nodes.append(Node("log_softmax", "LogSoftmax", ("t",), ("logprobs",), {"axis": -1}))
    graph = Graph([ValueInfo("x", "float32", (1, features, "T"))],
                  [ValueInfo("logprobs", "float32", (1, "T2", classes))], nodes)
    return Model(graph, tensors)


def stream_frames(model: Model, x: np.ndarray, cuts) -> np.ndarray:
    stream = GraphStream(StreamPlan.from_model(model))
    outputs = [stream.accept(piece) for piece in _split(x, cuts)] + [stream.finish()]
    return np.concatenate([o["logprobs"] for o in outputs if "logprobs" in o], axis=1)


@settings(max_examples=15, deadline=None)
@given(causal=st.booleans(), frames=st.integers(1, 120), cuts=st.lists(st.integers(0, 10**6), max_size=20))
def test_streamed_graph_equals_offline_run(causal, frames, cuts):
    model = conv_net(causal)
    x = np.random.default_rng(frames).standard_normal((1, 5, frames)).astype(np.float32)
    expected = model.run({"x": x})["logprobs"]
    got = stream_frames(model, x, cuts)
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)  # measured max 5e-7 (BLAS blocking)


def test_depthwise_weights_stored_sparse_stream_as_offline():
    """A pruned depthwise conv stored CSR (for its size) runs from its decoded dense weight in both paths."""
    from tinyasr.format.encodings.sparse import CSRMatrix, csr_arrays

    model = conv_net(causal=False)
    for name in ("depthwise.w", "dilated.w"):
        weight = model.tensors[name] * (np.random.default_rng(1).random(model.tensors[name].shape) < 0.3)
        values, indices, indptr = csr_arrays(weight.reshape(weight.shape[0], -1))
        model = Model(model.graph, {**model.tensors, name: CSRMatrix(values, indices, indptr, weight.shape)})
    x = np.random.default_rng(5).standard_normal((1, 5, 90)).astype(np.float32)
    expected = model.run({"x": x})["logprobs"]
    np.testing.assert_allclose(stream_frames(model, x, [7, 30, 31, 64]), expected, rtol=0, atol=1e-5)  # as above


def _linear_with_residual(residual: str, channels: int = 6) -> Model:
    """x [1, C, T] -> Transpose -> Linear(W, b, Z = ``residual``, Relu): a transformer block's residual connection
    as converters/passes.fuse_linear_residuals writes it."""
    rng = np.random.default_rng(3)
    tensors = {"w": rng.standard_normal((channels, channels)).astype(np.float32),
               "b": rng.standard_normal(channels).astype(np.float32)}
    nodes = [Node("time_major", "Transpose", ("x",), ("xt",), {"perm": [0, 2, 1]}),
             Node("linear", "Linear", ("xt", "w", "b", residual), ("logprobs",), {"activation": "Relu"})]
    graph = Graph([ValueInfo("x", "float32", (1, channels, "T"))],
                  [ValueInfo("logprobs", "float32", (1, "T", channels))], nodes)
    return Model(graph, tensors)


def test_a_linear_with_a_streamed_residual_streams_as_offline():
    """Linear's residual input follows the stream beside its input when its time axis is the output's; one whose
    time axis lies elsewhere is refused by name."""
    model = _linear_with_residual("xt")
    x = np.random.default_rng(4).standard_normal((1, 6, 50)).astype(np.float32)
    expected = model.run({"x": x})["logprobs"]
    xt = x.transpose(0, 2, 1)
    np.testing.assert_allclose(expected, np.maximum(xt @ model.tensors["w"] + model.tensors["b"], 0) + xt,
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(stream_frames(model, x, [1, 7, 30]), expected, rtol=0, atol=1e-6)
    with pytest.raises(GraphError, match="residual's time axis differs"):
        StreamPlan.from_model(_linear_with_residual("x"))


@pytest.mark.parametrize("causal", [True, False])
def test_receptive_field_matches_perturbation_of_the_offline_run(causal):
    """Independent check of the graph walk: change one input frame, see which offline outputs move."""
    model = conv_net(causal)
    field = StreamPlan.from_model(model).receptive_field
    x = np.random.default_rng(0).standard_normal((1, 5, 200)).astype(np.float32)
    base = model.run({"x": x})["logprobs"][0]
    probe = 100
    x[0, :, probe] += 10.0
    changed = np.flatnonzero(np.abs(model.run({"x": x})["logprobs"][0] - base).max(axis=1) > 0)
    # output t reads input frames [t*stride - left, t*stride + right]
    assert field.stride == 2
    assert changed.min() * 2 - field.left <= probe and (changed.min() - 1) * 2 + field.right < probe
    assert changed.max() * 2 + field.right >= probe and (changed.max() + 1) * 2 - field.left > probe
    assert (field.left, field.right) == ((32, 0) if causal else (16, 16))


def test_causal_graph_emits_each_output_without_lookahead():
    model = conv_net(causal=True)
    stream = GraphStream(StreamPlan.from_model(model))
    x = np.random.default_rng(3).standard_normal((1, 5, 40)).astype(np.float32)
    emitted = [stream.accept(x[:, :, t:t + 1]).get("logprobs") for t in range(40)]
    counts = [0 if e is None else e.shape[1] for e in emitted]
    assert counts == [1 if t % 2 == 0 else 0 for t in range(40)]  # stride 2: one output per two input frames


def test_unstreamable_graphs_are_refused_naming_the_node():
    graph = Graph([ValueInfo("x", "float32", (1, 4, "T"))], [ValueInfo("y", "float32", (1, 4, 1))],
                  [Node("pool", "GlobalAveragePool", ("x",), ("y",))])
    with pytest.raises(GraphError, match="node 'pool' \\(GlobalAveragePool\\) cannot stream"):
        StreamPlan(graph, {})
    graph = Graph([ValueInfo("x", "float32", (1, "T")), ValueInfo("length", "int64", (1,))],
                  [ValueInfo("y", "float32", (1, "T"))], [Node("relu", "Relu", ("x",), ("y",))])
    with pytest.raises(GraphError, match="length input"):
        StreamPlan(graph, {})
    graph = Graph([ValueInfo("x", "float32", (1, 4, "T"))], [ValueInfo("y", "float32", (1, 4, "T"))],
                  [Node("softmax", "Softmax", ("x",), ("y",), {"axis": 2})])
    with pytest.raises(GraphError, match="node 'softmax'.*the time axis"):
        StreamPlan(graph, {})


# ---------------------------------------------------------------- streaming rules declared by the ops

# Ops whose output frames each depend on many input frames (or on the input's length): they must refuse.
MIXES_FRAMES = ("GlobalAveragePool", "GlobalMaxPool", "ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin",
                "ReduceProd", "ArgMax", "ArgMin", "Shape", "Size", "Reshape", "Flatten", "Slice", "Gather", "Pad",
                "Expand", "Tile", "Range", "ConstantOfShape")
# Inputs of the time-local ops that need something other than one or two float tensors.
BOOLEAN_OPS = ("And", "Or", "Xor", "Not")
BINARY_OPS = ("Add", "Sub", "Mul", "Div", "Pow", "Less", "LessOrEqual", "Greater", "GreaterOrEqual", "Equal",
              "And", "Or", "Xor", "Max", "Min", "Mod")


def test_every_registered_op_declares_how_it_streams():
    """A new op must say how it streams when it registers; the ops that mix frames refuse."""
    from tinyasr.ops import SUPPORTED_OPS, stream_rule
    from tinyasr.ops.streaming_rules import UNDECLARED, Refuses, StreamRule

    undeclared = [op for op in SUPPORTED_OPS if stream_rule(op) is UNDECLARED]
    assert not undeclared, f"ops registered without streaming=...: {undeclared}"
    assert all(isinstance(stream_rule(op), StreamRule) for op in SUPPORTED_OPS)
    assert [op for op in MIXES_FRAMES if not isinstance(stream_rule(op), Refuses)] == []
    for op in MIXES_FRAMES:
        graph = Graph([ValueInfo("x", "float32", (1, 4, "T"))], [ValueInfo("y", "float32", (1, 4, "T"))],
                      [Node("n", op, ("x",), ("y",))])
        with pytest.raises(GraphError, match=f"node 'n' \\({op}\\) cannot stream: " + r"\w"):
            StreamPlan(graph, {})


def _one_node_model(op: str):
    """``op`` on streamed inputs [1, 3, T] (positive floats, or booleans for logic ops), as a Model."""
    arity = 3 if op == "Where" else 2 if op in BINARY_OPS else 1
    dtype = "bool" if op in BOOLEAN_OPS else "float32"
    names = [f"in{i}" for i in range(arity)]
    nodes = [Node("split", "Split", ("x",), tuple(names), {"axis": 1})] if arity > 1 else []
    if op in BOOLEAN_OPS or op == "Where":
        nodes.append(Node("positive", "Greater", (names[0], "half"), ("cond",)))
        names[0] = "cond"
        if op in BOOLEAN_OPS:
            for i, name in enumerate(names[1:], 1):
                nodes.append(Node(f"positive{i}", "Greater", (name, "half"), (f"cond{i}",)))
                names[i] = f"cond{i}"
    if arity == 1 and dtype == "bool":
        nodes = [Node("positive", "Greater", ("x", "half"), ("cond",))]
        names = ["cond"]
    elif arity == 1:
        names = ["x"]
    attrs = {"to": 1} if op == "Cast" else {"fmod": 1} if op == "Mod" else {}  # float Mod is C's fmod only
    nodes.append(Node("op", op, tuple(names), ("y",), attrs))
    channels = 3 * arity
    out_dtype = "bool" if op in BOOLEAN_OPS or op in BINARY_OPS[5:10] else "float32"
    graph = Graph([ValueInfo("x", "float32", (1, channels, "T"))], [ValueInfo("y", out_dtype, (1, 3, "T"))], nodes)
    return Model(graph, {"half": np.array(1.2, np.float32)}), channels


def test_time_local_ops_stream_as_offline_and_depend_on_their_own_frame_only():
    """Independent of the rules: a time-local op's offline output frame t moves only when input frame t does, and
    its stream in chunks equals the offline run."""
    from tinyasr.ops import SUPPORTED_OPS, stream_rule
    from tinyasr.ops.streaming_rules import TIME_LOCAL

    time_local = [op for op in SUPPORTED_OPS if stream_rule(op) is TIME_LOCAL]
    assert {"Relu", "Add", "Where", "Cast", "Clip", "Erf"} <= set(time_local)
    rng = np.random.default_rng(7)
    for op in time_local:
        model, channels = _one_node_model(op)
        x = rng.uniform(0.5, 2.0, (1, channels, 24)).astype(np.float32)
        expected = model.run({"x": x})["y"]
        probe = x.copy()
        probe[0, :, 9] += 0.75
        moved = np.flatnonzero((model.run({"x": probe})["y"] != expected).reshape(3, 24).any(axis=0))
        assert set(moved) <= {9}, (op, moved)
        stream = GraphStream(StreamPlan.from_model(model))
        outputs = [stream.accept(piece) for piece in _split(x, [5, 6, 17])] + [stream.finish()]
        got = np.concatenate([o["y"] for o in outputs if "y" in o], axis=2)
        # SIMD kernels round a chunk's vector body and scalar tail apart: a few ulp (Sigmoid: 1.2e-7 measured)
        np.testing.assert_allclose(got, expected, rtol=1e-6, atol=0, err_msg=op)


def test_axis_ops_stream_off_the_time_axis_and_refuse_on_it():
    from tinyasr.ops import SUPPORTED_OPS, stream_rule
    from tinyasr.ops.streaming_rules import AxisOp

    axis_ops = [op for op in SUPPORTED_OPS if isinstance(stream_rule(op), AxisOp)]
    assert sorted(axis_ops) == ["Concat", "Glu", "LogSoftmax", "Softmax", "Split"]
    x = np.random.default_rng(3).standard_normal((1, 4, 30)).astype(np.float32)
    for op in axis_ops:
        inputs, outputs = (("x", "x"), ("y",)) if op == "Concat" else (("x",), ("y", "z") if op == "Split" else ("y",))
        channels = 8 if op == "Concat" else 2 if op in ("Split", "Glu") else 4
        for axis, streams in ((1, True), (2, False), (-1, False)):
            graph = Graph([ValueInfo("x", "float32", (1, 4, "T"))], [ValueInfo("y", "float32", (1, channels, "T"))],
                          [Node("n", op, inputs, outputs, {"axis": axis})])
            if not streams:
                with pytest.raises(GraphError, match=f"node 'n' \\({op}\\) cannot stream: .*the time axis"):
                    StreamPlan(graph, {})
                continue
            model = Model(graph, {})
            stream = GraphStream(StreamPlan.from_model(model))
            pieces = [stream.accept(piece) for piece in _split(x, [4, 11])] + [stream.finish()]
            got = np.concatenate([o["y"] for o in pieces if "y" in o], axis=2)
            np.testing.assert_array_equal(got, model.run({"x": x})["y"], err_msg=op)


def test_a_new_op_with_its_own_stateful_step_streams_without_engine_changes(monkeypatch):
    """A toy recurrent op (a running sum over time), registered here with its own step: the streaming schedule
    runs it between a causal conv and a Relu exactly as the offline run does."""
    from tinyasr.ops import registry
    from tinyasr.ops.streaming_rules import UNBOUNDED, Recurrent, StreamStep

    class RunningSumStep(StreamStep):
        def new_state(self):
            return [None]  # the sum of the frames so far, [B, C, 1]

        def advance(self, state, frames, final):
            x = frames[0]
            if x is None:
                return None
            out = np.cumsum(x, axis=2, dtype=np.float64)
            if state[0] is not None:
                out += state[0]
            state[0] = out[:, :, -1:]
            return [out.astype(x.dtype)]

    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    monkeypatch.setattr(registry, "_STREAMING", dict(registry._STREAMING))

    @registry.register("RunningSum", streaming=Recurrent(lambda node, run, constants, stream: RunningSumStep()))
    def running_sum(ctx, inputs, attrs):
        return [np.cumsum(inputs[0], axis=2, dtype=np.float64).astype(inputs[0].dtype)]

    rng = np.random.default_rng(11)
    nodes = [Node("conv", "Conv", ("x", "w"), ("c",), {"pads": [2, 0]}),
             Node("sum", "RunningSum", ("c",), ("s",)), Node("relu", "Relu", ("s",), ("y",))]
    model = Model(Graph([ValueInfo("x", "float32", (1, 3, "T"))], [ValueInfo("y", "float32", (1, 4, "T"))], nodes),
                  {"w": rng.standard_normal((4, 3, 3)).astype(np.float32)})
    plan = StreamPlan.from_model(model)
    assert (plan.receptive_field.left, plan.receptive_field.right) == (UNBOUNDED, 0)
    x = rng.standard_normal((1, 3, 50)).astype(np.float32)
    stream = GraphStream(plan)
    outputs = [stream.accept(piece) for piece in _split(x, [1, 2, 9, 30])] + [stream.finish()]
    got = np.concatenate([o["y"] for o in outputs if "y" in o], axis=2)
    # the conv's BLAS rounding (about 5e-7 a frame, as above) adds up in the sum
    np.testing.assert_allclose(got, model.run({"x": x})["y"], rtol=0, atol=1e-5)


def test_the_engine_names_no_op():
    """The schedules ask each op's rule; no op name is spelled in tinyasr/engine/ (no special cases)."""
    import ast

    import tinyasr.engine
    from tinyasr.ops import SUPPORTED_OPS

    spelled = set()
    for path in Path(tinyasr.engine.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and node.value in SUPPORTED_OPS:
                spelled.add((path.name, node.value))
    assert not spelled


# ---------------------------------------------------------------- online recognition


def energy_ctc_parts(threshold: float = -11.5, frontend: FrontendConfig = FrontendConfig(normalize=None)):
    """Graph, tensors and manifest of a CTC 'recogniser' whose token 'x' wins where the mean log-mel exceeds
    ``threshold`` and blank elsewhere: speech / silence decisions checkable against the features themselves."""
    n = frontend.num_features
    weight = np.stack([np.full(n, 4.0 / n), np.full(n, -4.0 / n)]).astype(np.float32)[:, :, None]
    bias = np.array([-4.0 * threshold, 4.0 * threshold], np.float32)
    graph = Graph([ValueInfo("features", "float32", (1, n, "T"))], [ValueInfo("logprobs", "float32", (1, "T", 2))], [
        Node("score", "Conv", ("features", "w", "b"), ("s",), {"pads": [0, 0]}),
        Node("transpose", "Transpose", ("s",), ("t",), {"perm": [0, 2, 1]}),
        Node("log_softmax", "LogSoftmax", ("t",), ("logprobs",), {"axis": -1}),
    ])
    manifest = {"graph": graph.to_dict(), "frontend": frontend.to_dict(), "provenance": {"source": "tests"},
                "decoder": {"type": "ctc", "output": "logprobs", "blank": 1, "vocabulary": ["x"],
                            "vocabulary_type": "words", "logits": "log_probs"}}
    return graph, {"w": weight, "b": bias}, manifest


def energy_ctc_model(**options) -> Model:
    return Model(*energy_ctc_parts(**options))


def test_normalization_follows_the_manifest_statistics():
    from tinyasr.errors import ModelFileError

    per_feature = FrontendConfig(normalize="per_feature", pad_to=0)
    graph, tensors, manifest = energy_ctc_parts(frontend=per_feature)
    assert isinstance(OnlineStream(Model(graph, tensors, manifest)).normalizer, RunningNormalizer)
    with pytest.raises(ModelFileError, match="feature_mean"):
        OnlineStream(Model(graph, tensors, manifest), normalization="fixed")
    stats = {"feature_mean": [-8.0] * 64, "feature_std": [2.0] * 64}
    stream = OnlineStream(Model(graph, tensors, {**manifest, "streaming": stats}))
    assert isinstance(stream.normalizer, FixedNormalizer) and stream.normalizer.mean[0, 0] == -8.0
    assert OnlineStream(energy_ctc_model()).normalizer is None  # the front end does not normalise: exact


def test_online_stream_refuses_bad_input_clearly():
    from tinyasr.errors import AudioError, InputError

    stream = OnlineStream(energy_ctc_model())
    stream.accept_waveform(np.zeros(800, np.float32), 16000)
    with pytest.raises(InputError, match="sample rate changed from 16000 to 8000"):
        stream.accept_waveform(np.zeros(800, np.float32), 8000)
    with pytest.raises(AudioError, match="NaN"):
        stream.accept_waveform(np.array([0.0, np.nan], np.float32), 16000)
    graph, tensors, manifest = energy_ctc_parts()
    manifest = {**manifest, "decoder": {"type": "classification", "output": "logprobs", "labels": ["a", "b"]}}
    with pytest.raises(InputError, match="needs a CTC or transducer model.*'classification'"):
        OnlineStream(Model(graph, tensors, manifest))


def first_endpoint(stream: OnlineStream, samples: np.ndarray, rate: int = 16000, chunk: float = 0.01):
    """Seconds of audio fed when is_endpoint first turned true (None if never)."""
    step = int(rate * chunk)
    for start in range(0, len(samples), step):
        stream.accept_waveform(samples[start:start + step], rate)
        if stream.is_endpoint:
            return (start + step) / rate
    return None


@needs_audio
def test_endpoint_fires_after_trailing_silence_and_not_inside_speech():
    speech, _ = load_audio(GOFORWARD, 16000)
    samples = np.concatenate([speech, np.zeros(3 * 16000, np.float32)])
    features, valid = compute_features(samples, FrontendConfig(normalize=None, pad_to=0))
    loud = np.flatnonzero(features[:, :valid].mean(axis=0) > -11.5)
    last_speech_end = (loud.max() + 1) * 0.01  # from the features, independently of the stream
    stream = OnlineStream(energy_ctc_model(), endpoint=EndpointConfig.simple(silence_after_speech=1.2))
    fired = first_endpoint(stream, samples)
    # the frame centred at t needs audio up to t + 16 ms; allow one 10 ms chunk of granularity
    assert last_speech_end + 1.2 <= fired <= last_speech_end + 1.2 + 0.016 + 0.02
    assert stream.partial.startswith("x")
    result = stream.finalize()
    assert result.text and not stream.is_endpoint and stream.partial == ""

    silence = np.zeros(3 * 16000, np.float32)
    fired = first_endpoint(OnlineStream(energy_ctc_model()), silence)  # rule 1: 2.4 s without speech
    assert 2.4 <= fired <= 2.4 + 0.016 + 0.02
    noise = (0.3 * RNG.standard_normal(5 * 16000)).astype(np.float32)  # loud: all 'speech'
    fired = first_endpoint(OnlineStream(energy_ctc_model(), endpoint=EndpointConfig.simple(max_utterance=3.0)), noise)
    assert 3.0 <= fired <= 3.0 + 0.016 + 0.02


def _transcribe_streaming(stream: OnlineStream, samples, rate, cuts):
    for piece in _split(samples, cuts):
        stream.accept_waveform(piece, rate)
    return stream.finalize()


def _same_result(a, b):
    assert a.text == b.text and a.duration == pytest.approx(b.duration)
    assert [(t.id, t.start, t.end) for t in a.tokens] == [(t.id, t.start, t.end) for t in b.tokens]
    np.testing.assert_allclose([t.confidence for t in a.tokens], [t.confidence for t in b.tokens], atol=1e-4)


@pytest.fixture(scope="module")
def quartznet_like(tmp_path_factory):
    """The QuartzNet-like torch test model, converted with a (non-normalising) NeMo front end."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("onnx")
    import torch_models
    from tinyasr_convert import from_torch

    from tinyasr.pipeline.recognizer import Recognizer

    module = torch_models.build(torch_models.QuartzNetLike, channels=32, blocks=2)
    path = from_torch(module, (torch.randn(1, 64, 100),), tmp_path_factory.mktemp("qn") / "qn.tasr",
                      input_names=["features"], output_names=["logprobs"], labels=list(" abcdefghijklmnopqrstuvwxyz'"),
                      decoder="ctc", frontend=FrontendConfig(normalize=None).to_dict())
    return Recognizer(path)


@needs_audio
@pytest.mark.parametrize("clip,rate,cuts", [
    ("pocketsphinx_goforward.wav", 16000, list(range(0, 50000, 160))),  # 10 ms chunks
    ("pocketsphinx_goforward.wav", 8000, [5, 777, 4000, 4001, 9000]),  # resampled on the way in
    ("librivox_sense_and_sensibility_01_austen_64kb-0880.wav", 16000, [1280 * i for i in range(40)]),  # 80 ms
])
def test_streamed_transcript_equals_offline_transcript(quartznet_like, clip, rate, cuts):
    samples, _ = load_audio(os.path.join(AUDIO, clip), rate)
    expected = quartznet_like.transcribe(samples, sample_rate=rate)
    stream = OnlineStream(quartznet_like)
    # right receptive field: prologue k33 s2, 2 blocks x 2 repeats of k33 / k39 and the k87 d2 epilogue after
    # the stride, in 10 ms frames; plus the STFT's half window (256 samples)
    right = 16 + 2 * (2 * 16 + 2 * 19) + 2 * 86
    # and the frames its graph runs wait for (3.3 s of look-ahead: batches of an eighth of it, 41 frames, BATCH_SHARE)
    assert stream.latency == pytest.approx(right * 0.01 + 256 / 16000 + 0.40)
    _same_result(_transcribe_streaming(stream, samples, rate, cuts), expected)
    # the stream is ready for the next utterance, with the same state as a fresh one
    _same_result(_transcribe_streaming(stream, samples, rate, cuts[::2]), expected)


class _EagerStream(OnlineStream):
    """The resampler, the gate and the front end given every piece as it comes, not held until the graph can
    run."""

    def _feed(self, samples):
        super()._feed(samples)
        self._flush()


@needs_audio
@pytest.mark.parametrize("step,rate", [(1280, 16000), (592, 16000), (4000, 16000), (1764, 22050), (613, 22050)])
def test_holding_samples_for_the_graph_changes_no_partial_result(quartznet_like, step, rate):
    """OnlineStream runs the resampler, the gate and the front end only when the graph may run
    (OnlineStream._feed); after every piece its partial result, endpoint and trailing silence are those of a
    stream that runs them on every piece (at 22.05 kHz the resampler holds samples back itself)."""
    samples, _ = load_audio(os.path.join(AUDIO, "pocketsphinx_goforward.wav"), rate)
    audio = np.concatenate([samples, np.zeros(rate, np.float32), samples[: len(samples) // 2]])
    held, eager = OnlineStream(quartznet_like), _EagerStream(quartznet_like)
    assert held._batch_inputs > 1  # the model looks ahead: its graph runs on batches
    fresh = 0
    for first in range(0, len(audio), step):
        for stream in (held, eager):
            stream.accept_waveform(audio[first:first + step], rate)
        assert (held._partial is None) == (eager._partial is None)  # the graph gave frames after the same pieces
        fresh += held._partial is None
        _same_result(held.partial_result, eager.partial_result)
        assert (held.is_endpoint, held.trailing_silence) == (eager.is_endpoint, eager.trailing_silence)
    assert fresh >= 4
    _same_result(held.finalize(), eager.finalize())


@needs_audio
def test_streams_on_one_model_in_two_threads_are_independent(quartznet_like):
    clips = [load_audio(os.path.join(AUDIO, c), 16000)[0] for c in
             ("pocketsphinx_goforward.wav", "librivox_sense_and_sensibility_01_austen_64kb-0930.wav")]
    alone = [_transcribe_streaming(OnlineStream(quartznet_like), c, 16000, range(0, len(c), 800)) for c in clips]
    results = [None, None]

    def work(i):
        results[i] = [_transcribe_streaming(OnlineStream(quartznet_like), clips[i], 16000, range(0, len(clips[i]), 800))
                      for _ in range(3)]

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i in range(2):
        for result in results[i]:
            _same_result(result, alone[i])


# ---------------------------------------------------------------- tinyasr stream


def _stream_command(argv):
    """`tinyasr stream ARGV...` through the real command line."""
    from tinyasr.cli.main import main

    return main(["stream", *argv])


@needs_audio
def test_stream_command_prints_final_results_with_times_from_a_file_and_from_stdin(tmp_path, capsys, monkeypatch):
    import io

    import soundfile

    from tinyasr.format.container import write_model

    _, tensors, manifest = energy_ctc_parts()
    write_model(tmp_path / "energy.tasr", manifest, tensors)
    speech, _ = load_audio(GOFORWARD, 16000)
    gap = np.zeros(2 * 16000, np.float32)
    samples = np.concatenate([speech, gap, speech, gap])
    soundfile.write(tmp_path / "two.wav", samples, 16000, subtype="PCM_16")
    assert _stream_command(["-m", str(tmp_path / "energy.tasr"), "--input", str(tmp_path / "two.wav")]) == 0
    from_file = capsys.readouterr()
    lines = from_file.out.splitlines()
    assert len(lines) == 2 and all(line.endswith("x") or " x" in line for line in lines)
    starts = [float(line[1:].split("-")[0]) for line in lines]
    assert starts[0] == 0.0 and starts[1] > speech.size / 16000  # the second utterance starts after the first
    assert "\r" in from_file.err  # partial results on one updating line

    pcm = np.clip(np.round(samples * 32768), -32768, 32767).astype("<i2").tobytes()
    monkeypatch.setattr("sys.stdin", type("Stdin", (), {"buffer": io.BytesIO(pcm)})())
    assert _stream_command(["-m", str(tmp_path / "energy.tasr"), "--input", "-", "--rate", "16000"]) == 0
    assert capsys.readouterr().out.splitlines() == lines


def test_stream_command_explains_a_missing_microphone_library(tmp_path, capsys, monkeypatch):
    import sys

    from tinyasr.format.container import write_model

    _, tensors, manifest = energy_ctc_parts()
    write_model(tmp_path / "energy.tasr", manifest, tensors)
    monkeypatch.setitem(sys.modules, "sounddevice", None)  # import fails as when it is not installed
    assert _stream_command(["-m", str(tmp_path / "energy.tasr")]) == 1
    assert PORTAUDIO_HINT in capsys.readouterr().err and "apt install libportaudio2" in PORTAUDIO_HINT


def test_bundled_model_streams_the_bundled_sample_as_offline():
    """The bundled digits model normalises per utterance; its stored statistics let a stream match offline."""
    from tinyasr import Recognizer

    models = Path(__file__).resolve().parents[1] / "tinyasr" / "models"
    recognizer = Recognizer()
    assert "feature_mean" in recognizer.model.manifest["streaming"]
    samples, rate = load_audio(models / "sample_digits.wav")
    stream = recognizer.stream()
    for start in range(0, samples.size, 1280):  # 80 ms chunks at 16 kHz
        stream.accept_waveform(samples[start:start + 1280], rate)
    assert stream.finalize().text == recognizer.transcribe(samples, sample_rate=rate).text


def test_converter_refuses_malformed_streaming_statistics():
    from tinyasr_convert.conversion import _streaming_stats
    from tinyasr.errors import ConversionError

    frontend = {"n_mels": 3}
    assert _streaming_stats({"feature_mean": [0, 1, 2], "feature_std": [1, 1, 2]}, frontend)["feature_std"] == [1, 1, 2]
    for bad, message in [({"feature_mean": [0, 1]}, "feature_std"),
                         ({"feature_mean": [0, 1], "feature_std": [1, 1]}, "3 features"),
                         ({"feature_mean": [0, 1, 2], "feature_std": [1, 0, 1]}, "std > 0"),
                         ({"feature_mean": [0, float("nan"), 2], "feature_std": [1, 1, 1]}, "finite")]:
        with pytest.raises(ConversionError, match=message):
            _streaming_stats(bad, frontend)


# ---------------------------------------------------------------- the executor's fast paths


def strided_net(kernel: int, stride: int, pads) -> Model:
    """A conv whose stride exceeds its kernel span (frames between outputs are never read), then a 1x1 conv."""
    rng = np.random.default_rng(kernel * 10 + stride)
    tensors = {"w": rng.standard_normal((6, 3, kernel)).astype(np.float32),
               "p": rng.standard_normal((4, 6, 1)).astype(np.float32)}
    nodes = [Node("strided", "Conv", ("x", "w"), ("h",), {"strides": [stride], "pads": list(pads)}),
             Node("pointwise", "Conv", ("h", "p"), ("y",), {"activation": "Relu"})]
    graph = Graph([ValueInfo("x", "float32", (1, 3, "T"))], [ValueInfo("y", "float32", (1, 4, "T2"))], nodes)
    return Model(graph, tensors)


@settings(max_examples=20, deadline=None)
@given(shape=st.sampled_from([(1, 2, (0, 0)), (2, 3, (1, 0)), (1, 3, (0, 2)), (3, 2, (1, 1))]),
       frames=st.integers(4, 40), cuts=st.lists(st.integers(0, 10**6), max_size=12))
def test_stride_longer_than_the_kernel_streams_as_offline(shape, frames, cuts):
    kernel, stride, pads = shape
    model = strided_net(kernel, stride, pads)
    x = np.random.default_rng(frames).standard_normal((1, 3, frames)).astype(np.float32)
    expected = model.run({"x": x})["y"]
    stream = GraphStream(StreamPlan.from_model(model))
    outputs = [stream.accept(piece) for piece in _split(x, cuts)] + [stream.finish()]
    got = np.concatenate([o["y"] for o in outputs if "y" in o], axis=2)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("channels,c_out,kernel,group,stride,dilation,frames", [
    (16, 16, 9, 16, 1, 1, 4),  # depthwise, short-input kernel
    (8, 16, 5, 8, 1, 2, 16),  # depthwise with multiplier 2, dilated, the most frames of the short kernel
    (8, 8, 5, 8, 1, 1, 17),  # depthwise past the short kernel: conv1d
    (8, 8, 5, 8, 2, 1, 3),  # strided depthwise: conv1d
    (32, 12, 1, 1, 1, 1, 5),  # pointwise, few frames
    (32, 12, 1, 1, 2, 1, 12),  # strided pointwise
    (32, 12, 1, 1, 1, 1, 13),  # pointwise past the narrow kernel: conv1d
    (6, 10, 3, 2, 1, 1, 4),  # grouped: conv1d
])
@pytest.mark.parametrize("activation,params,residual,pruned", [
    ("Relu", (), True, 0.0), ("Clip", (-0.5, 0.5), False, 0.0), ("Sigmoid", (), True, 0.0), ("Relu", (), True, 0.8)])
def test_prepared_conv_equals_the_numpy_reference(channels, c_out, kernel, group, stride, dilation, frames,
                                                   activation, params, residual, pruned):
    """``pruned``: that fraction of the weights is zero, as tinyasr_convert.sparsity leaves a depthwise conv; the
    kernels skip zero taps (the short-chunk one only where four channels' taps are all zero)."""
    from tinyasr.kernels.conv1d import SHORT_FRAMES, PreparedConv1d, conv1d, conv1d_reference

    rng = np.random.default_rng(channels + kernel + frames)
    span = dilation * (kernel - 1)
    needed = (frames - 1) * stride + span + 1
    # a streamed conv's buffer: its input, then frames no output reads (kept context of earlier chunks)
    x = rng.standard_normal((2, channels, max(needed, span + SHORT_FRAMES) + 3)).astype(np.float32)
    weight = rng.standard_normal((c_out, channels // group, kernel)).astype(np.float32)
    weight[rng.random(weight.shape) < pruned] = 0.0
    bias = rng.standard_normal(c_out).astype(np.float32)
    z = rng.standard_normal((2, c_out, frames)).astype(np.float32) if residual else None
    options = dict(stride=stride, dilation=dilation, group=group, activation=activation, activation_params=params)
    got = PreparedConv1d(weight, bias, **options)(x, frames, z)
    np.testing.assert_allclose(got, conv1d_reference(x[:, :, :needed], weight, bias, z, **options), rtol=1e-5,
                               atol=1e-5)
    # the same kernels as conv1d on the input alone, so streamed and offline outputs stay identical
    np.testing.assert_array_equal(got, conv1d(np.ascontiguousarray(x[:, :, :needed]), weight, bias, z, **options))


def test_prepared_conv_refuses_inputs_that_do_not_fit():
    from tinyasr.kernels.conv1d import PreparedConv1d

    prepared = PreparedConv1d(np.ones((8, 1, 5), np.float32), group=8)
    with pytest.raises(GraphError, match=r"input X \(1, 4, 40\).*weight W \(8, 1, 5\) with group=8"):
        prepared(np.ones((1, 4, 40), np.float32), 4)
    with pytest.raises(GraphError, match="for 4 output frames"):
        prepared(np.ones((1, 8, 7), np.float32), 4)  # 4 outputs read 8 frames
    with pytest.raises(GraphError, match="does not fit input X with 9 channels"):
        PreparedConv1d(np.ones((8, 1, 5), np.float32), group=9)
    with pytest.raises(GraphError, match="unknown activation 'Gelu'"):
        PreparedConv1d(np.ones((8, 8, 1), np.float32), activation="Gelu")


def test_stream_refuses_a_change_of_channels_naming_the_node():
    stream = GraphStream(StreamPlan.from_model(conv_net(causal=False)))
    stream.accept(np.zeros((1, 5, 10), np.float32))
    with pytest.raises(TinyASRError, match="node 'prologue' \\(Conv\\): input frames of shape \\(1, 6, 3\\)"):
        stream.accept(np.zeros((1, 6, 3), np.float32))
    fresh = GraphStream(StreamPlan.from_model(conv_net(causal=False)))
    with pytest.raises(TinyASRError, match="node 'prologue' \\(Conv\\).*weight W \\(8, 5, 5\\)"):
        fresh.accept(np.zeros((1, 6, 30), np.float32))


@settings(max_examples=10, deadline=None)
@given(frames=st.integers(6, 50), cuts=st.lists(st.integers(0, 10**6), max_size=12))
def test_branches_with_different_delays_meet_in_an_elementwise_op(frames, cuts):
    """Add waits for the slower branch: a k7 conv (3 frames of look-ahead) beside a 1x1 conv (none)."""
    rng = np.random.default_rng(1)
    tensors = {"wide": rng.standard_normal((4, 4, 7)).astype(np.float32),
               "narrow": rng.standard_normal((4, 4, 1)).astype(np.float32)}
    nodes = [Node("wide", "Conv", ("x", "wide"), ("a",), {"pads": [3, 3]}),
             Node("narrow", "Conv", ("x", "narrow"), ("b",), {}),
             Node("add", "Add", ("a", "b"), ("s",)), Node("tanh", "Tanh", ("s",), ("y",))]
    model = Model(Graph([ValueInfo("x", "float32", (1, 4, "T"))], [ValueInfo("y", "float32", (1, 4, "T"))], nodes),
                  tensors)
    x = rng.standard_normal((1, 4, frames)).astype(np.float32)
    stream = GraphStream(StreamPlan.from_model(model))
    outputs = [stream.accept(piece) for piece in _split(x, cuts)] + [stream.finish()]
    got = np.concatenate([o["y"] for o in outputs if "y" in o], axis=2)
    np.testing.assert_allclose(got, model.run({"x": x})["y"], rtol=0, atol=1e-5)


@needs_audio
def test_a_stream_gets_the_offline_confidence_and_flag(tmp_path):
    """The stream's final Result carries the same speech decision, confidence and out-of-vocabulary flag as
    Recognizer.transcribe of the same audio (issue 16: both decode behind the same SpeechGate)."""
    from tinyasr.audio.io import load_audio
    from tinyasr.format.container import write_model
    from tinyasr.pipeline.recognizer import Recognizer

    _, tensors, manifest = energy_ctc_parts()
    manifest["decoder"].update(oov_score="certainty", oov_threshold=1.0)
    write_model(tmp_path / "flagging.tasr", manifest, tensors)
    recognizer = Recognizer(tmp_path / "flagging.tasr")
    samples, _ = load_audio(SHARED_DIR / "audio" / "pocketsphinx_goforward.wav", 16000)
    offline = recognizer.transcribe(samples, sample_rate=16000)
    stream = recognizer.stream(endpoint=EndpointConfig.simple(max_utterance=1e9, silence_after_speech=1e9,
                                                              silence_only=1e9))
    for i in range(0, samples.size, 1600):
        stream.accept_waveform(samples[i:i + 1600], 16000)
    online = stream.finalize()
    assert online.text == offline.text and online.text
    assert online.out_of_vocabulary and offline.out_of_vocabulary
    assert online.confidence == pytest.approx(offline.confidence, abs=0.02)


@needs_audio
def test_beam_search_streams_as_offline(quartznet_like, tmp_path):
    """With beam search, an LM and hotwords, the stream carries the search on chunk by chunk (its partial text is
    the best prefix so far) and its final result is Recognizer.transcribe's beam search of the same audio."""
    from tinyasr.decoding.lm import witten_bell, write_arpa
    from tinyasr.decoding.specs import BeamSearch

    write_arpa(witten_bell(["go forward ten meters", "go back", "turn left"], order=2), tmp_path / "lm.arpa")
    decoding = BeamSearch(beam=4, lm=str(tmp_path / "lm.arpa"), alpha=0.3, hotwords=["go forward:3"])
    # two clips: longer than the model's right receptive field (3.3 s), so partial results come before the end
    samples = np.concatenate([load_audio(os.path.join(AUDIO, clip), 16000)[0] for clip in (
        "pocketsphinx_goforward.wav", "librivox_sense_and_sensibility_01_austen_64kb-0930.wav")])
    expected = quartznet_like.transcribe(samples, sample_rate=16000, decoding=decoding)
    assert expected.text != quartznet_like.transcribe(samples, sample_rate=16000).text  # the search changed it
    stream = OnlineStream(quartznet_like, decoding=decoding)
    partials = []
    for piece in _split(samples, range(0, len(samples), 1280)):  # 80 ms chunks, a partial after each
        stream.accept_waveform(piece, 16000)
        partials.append(stream.partial)
    assert len(set(partials)) > 3 and partials[-1]
    _same_result(stream.finalize(), expected)
    # the Recognizer's own decoding is its streams' default; a second utterance starts a fresh search
    stream = quartznet_like.with_decoding(decoding).stream()
    _same_result(_transcribe_streaming(stream, samples, 16000, [16000]), expected)
    _same_result(_transcribe_streaming(stream, samples, 16000, [8000, 30000]), expected)


def test_stream_command_takes_the_decoding_options(capsys):
    """``tinyasr stream --beam N --hotword ...`` streams with beam search: a strong hotword shows it is used."""
    sample = str(Path(__file__).resolve().parents[1] / "tinyasr" / "models" / "sample_digits.wav")
    texts = []
    for options in ([], ["--beam", "4"], ["--beam", "4", "--hotword", "four:15"]):
        assert _stream_command(["--input", sample, *options]) == 0
        texts.append(capsys.readouterr().out.split("]", 1)[1].split())
    assert texts[0] == texts[1] and texts[2].count("four") > texts[1].count("four")


# ---------------------------------------------------------------- runs of convs as one compiled program


def separable_chain(channels: int, kernel: int, stride: int, dilation: int, causal: bool, batch: int = 1,
                    seed: int = 0, half: bool = False) -> Model:
    """Depthwise + pointwise convs only (what ops/conv_program.py compiles): a strided, dilated depthwise conv, a
    pointwise conv adding a strided 1x1 residual branch, a causal depthwise conv, a pointwise conv to 7 classes,
    with each activation the program applies.  ``half``: the pointwise weights are float16 values (as a model
    converted with --float16 loads), which the program keeps as float16."""
    rng = np.random.default_rng(seed)
    wide = channels + 3
    tensors = {
        "dw1": rng.standard_normal((channels, 1, kernel)).astype(np.float32),
        "dw1.b": rng.standard_normal(channels).astype(np.float32),
        "res": (rng.standard_normal((wide, channels, 1)) / np.sqrt(channels)).astype(np.float32),
        "pw1": (rng.standard_normal((wide, channels, 1)) / np.sqrt(channels)).astype(np.float32),
        "pw1.b": rng.standard_normal(wide).astype(np.float32),
        "dw2": rng.standard_normal((wide, 1, 3)).astype(np.float32),
        "pw2": (rng.standard_normal((7, wide, 1)) / np.sqrt(wide)).astype(np.float32),
    }
    if half:
        for name in ("res", "pw1", "pw2"):
            tensors[name] = tensors[name].astype(np.float16).astype(np.float32)
    span = dilation * (kernel - 1)
    pads = [span, 0] if causal else [span // 2, span - span // 2]
    nodes = [
        Node("dw1", "Conv", ("x", "dw1", "dw1.b"), ("a",), {"group": channels, "strides": [stride],
                                                             "dilations": [dilation], "pads": pads,
                                                             "activation": "Relu"}),
        Node("res", "Conv", ("x", "res"), ("r",), {"strides": [stride]}),
        Node("pw1", "Conv", ("a", "pw1", "pw1.b", "r"), ("b",), {"activation": "Clip", "activation_params": [-1, 1]}),
        Node("dw2", "Conv", ("b", "dw2"), ("c",), {"group": wide, "dilations": [2], "pads": [4, 0],
                                                   "activation": "Tanh"}),
        Node("pw2", "Conv", ("c", "pw2"), ("y",), {"activation": "Sigmoid"}),
    ]
    graph = Graph([ValueInfo("x", "float32", (batch, channels, "T"))], [ValueInfo("y", "float32", (batch, 7, "T2"))],
                  nodes)
    return Model(graph, tensors)


def _stream(plan: StreamPlan, x: np.ndarray, cuts) -> np.ndarray:
    stream = GraphStream(plan)
    outputs = [stream.accept(piece) for piece in _split(x, cuts)] + [stream.finish()]
    return np.concatenate([o["y"] for o in outputs if "y" in o], axis=2)


@settings(max_examples=30, deadline=None)
@given(channels=st.sampled_from([5, 16, 20, 37]), kernel=st.sampled_from([1, 2, 5, 9]), stride=st.integers(1, 3),
       dilation=st.integers(1, 2), causal=st.booleans(), batch=st.integers(1, 2), frames=st.integers(1, 70),
       cuts=st.lists(st.integers(0, 10**6), max_size=20), half=st.booleans(), flush=st.sampled_from([1, 3, 64]))
def test_a_run_of_convs_streams_as_one_program_equal_to_node_by_node_and_offline(channels, kernel, stride, dilation,
                                                                                 causal, batch, frames, cuts, half,
                                                                                 flush):
    """Channel counts around the program's 16-lane vectors, a stride longer than the kernel (frames no output
    reads), a residual that arrives before the main path's first frame, every activation, batch items, pointwise
    weights kept as float16 or not, the end of the input flushed in rounds of 1, 3 or 64 outputs per conv."""
    model = separable_chain(channels, kernel, stride, dilation, causal, batch, half=half)
    x = np.random.default_rng(frames).standard_normal((batch, channels, frames)).astype(np.float32)
    plan = StreamPlan.from_model(model)
    assert [type(s.step).__name__ for s in plan.steps] == ["ConvProgram"]
    program = plan.steps[0].step
    program.flush_frames = flush
    assert program.members == model.graph.nodes
    pointwise = program.table[:, conv_program.KIND] == conv_program.POINTWISE
    assert list(program.table[pointwise, conv_program.HALF]) == [int(half and conv_program.widens_half_natively())] * 3
    reference = StreamPlan.from_model(model, fuse=False)
    assert len(reference.steps) == 5
    try:
        expected = model.run({"x": x})["y"]
    except GraphError:  # the input is shorter than a kernel: both streams must say so, naming the conv
        for each in (plan, reference):
            with pytest.raises(GraphError, match=r"node 'dw1' \(Conv\): the input is too short for kernel span"):
                _stream(each, x, cuts)
        return
    got = _stream(plan, x, cuts)
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=0, atol=2e-6)
    np.testing.assert_allclose(got, _stream(reference, x, cuts), rtol=0, atol=2e-6)


def test_float16_pointwise_weights_give_the_program_the_same_sums(monkeypatch):
    """Pointwise weights kept as float16 bits and widened in registers: bit for bit what the same values give as
    float32 (a model stored with --float16 streams with half the weight bytes and the same results)."""
    if not conv_program.widens_half_natively():
        pytest.skip("this CPU has no float16 conversion instruction: the program keeps float32 weights")
    model = separable_chain(37, 5, 1, 1, causal=True, half=True)
    x = np.random.default_rng(1).standard_normal((1, 37, 45)).astype(np.float32)
    cuts = [4, 8, 12, 30]
    half_plan = StreamPlan.from_model(model)
    assert half_plan.steps[0].step.table[:, conv_program.HALF].sum() == 3
    halves = _stream(half_plan, x, cuts)
    monkeypatch.setattr(conv_program, "half_strips", lambda packed: None)
    floats_plan = StreamPlan.from_model(model)
    assert not floats_plan.steps[0].step.table[:, conv_program.HALF].any()
    np.testing.assert_array_equal(halves, _stream(floats_plan, x, cuts))


@pytest.mark.parametrize("half", [False, True])
def test_a_program_asks_for_its_weights_as_read_once_where_that_measured_faster_with_the_same_results(monkeypatch,
                                                                                                      half):
    """The weights' prefetch (read once, READ_ONCE_AHEAD rows early, or none) is chosen by timing both on the
    program's own rounds (tuning.fastest, one family per weight size), and changes no bit of the stream."""
    model = separable_chain(37, 5, 2, 1, causal=True, half=half)
    x = np.random.default_rng(2).standard_normal((1, 37, 70)).astype(np.float32)
    cuts = [3, 8, 16, 40]
    streams = {}
    for choice, ahead in (("kept", 0), ("read once", conv_program.READ_ONCE_AHEAD)):
        asked = []

        def fastest(family, candidates, *cache, choice=choice, asked=asked):
            asked.append((family, sorted(candidates)))
            for run in candidates.values():  # each runs rounds on a state of its own, not the stream's
                run()
                run()
            return choice

        monkeypatch.setattr(conv_program_step.tuning, "fastest", fastest)
        plan = StreamPlan.from_model(model)
        program = plan.steps[0].step
        assert program.weights_ahead == ahead
        # the pointwise weights as the program holds them: Cout padded to whole strips of LANES, float16 or 32
        value_bytes = 2 if half and conv_program.widens_half_natively() else 4
        strips = [-(-rows // conv_program.LANES) * conv_program.LANES for rows in (40, 40, 7)]
        weight_bytes = value_bytes * (strips[0] * 37 + strips[1] * 37 + strips[2] * 40)
        assert asked == [(f"streamed conv program: weights read once or kept, {weight_bytes} bytes in 3 pointwise "
                          "convs", ["kept", "read once"])]
        streams[choice] = _stream(plan, x, cuts)
    np.testing.assert_array_equal(streams["kept"], streams["read once"])
    np.testing.assert_allclose(streams["kept"], model.run({"x": x})["y"], rtol=0, atol=2e-6)


def test_a_conv_program_names_the_conv_that_gets_no_frames_or_the_wrong_shape():
    plan = StreamPlan.from_model(separable_chain(16, 5, 1, 1, causal=True))
    with pytest.raises(GraphError, match=r"node 'dw1' \(Conv\): received no frames"):
        GraphStream(plan).finish()
    stream = GraphStream(plan)
    with pytest.raises(TinyASRError, match=r"node 'dw1' \(Conv\): input 'x': frames of shape \(1, 15, 4\), "
                                           r"expected \[batch, 16, time\]"):
        stream.accept(np.zeros((1, 15, 4), np.float32))
    stream.accept(np.zeros((1, 16, 4), np.float32))
    with pytest.raises(TinyASRError, match=r"node 'dw1' \(Conv\): .*after frames of batch 1"):
        stream.accept(np.zeros((2, 16, 4), np.float32))


def test_quartznet_streams_as_one_program(quartznet_like):
    """The NeMo QuartzNet-like model: every conv in one program, its log-probabilities those of the node-by-node
    stream and of the offline run."""
    model = quartznet_like.model
    plan, reference = StreamPlan.from_model(model), StreamPlan.from_model(model, fuse=False)
    programs = [s.step for s in plan.steps if type(s.step).__name__ == "ConvProgram"]
    convs = [n for n in model.graph.nodes if n.op == "Conv"]
    assert len(programs) == 1 and programs[0].members == convs
    name = plan.input.name
    x = np.random.default_rng(3).standard_normal((1, int(plan.input.shape[1]), 157)).astype(np.float32)
    output = plan.output_slots[0][0]
    axis = dict(plan.outputs)[output].axis
    results = []
    for each in (plan, reference):
        stream = GraphStream(each)
        pieces = [stream.accept(p) for p in np.array_split(x, [8, 16, 40, 41, 100], axis=2)] + [stream.finish()]
        results.append(np.concatenate([p[output] for p in pieces if output in p], axis=axis))
    expected = model.run({name: x})[output]
    np.testing.assert_allclose(results[0], expected, rtol=0, atol=1e-4)
    np.testing.assert_allclose(results[0], results[1], rtol=0, atol=1e-4)
