"""from_torch: QuartzNet / MatchboxNet / Citrinet-like torch models convert and match onnxruntime on the exported ONNX."""

from __future__ import annotations

import collections

import numpy as np
import pytest

torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")

import torch_models  # noqa: E402  (tests/ is on sys.path under pytest's rootdir-relative import mode)
from tinyasr_convert import convert, from_torch  # noqa: E402
from tinyasr.errors import ConversionError  # noqa: E402
from tinyasr.format.container import read_model  # noqa: E402
from tinyasr.engine.offline import load_model  # noqa: E402

TOLERANCE = 1e-4
FLOAT16_TOLERANCE = 1e-2  # max abs on log-probs / logits of magnitude <= ~6; measured 0.3e-3 .. 1.7e-3
MODELS = [(torch_models.QuartzNetLike, 64), (torch_models.MatchboxNetLike, 64), (torch_models.CitrinetLike, 80)]
LENGTHS = (5, 77, 3000)  # 5 frames is shorter than every kernel; 3000 frames = 30 s


@pytest.fixture(scope="module", params=MODELS, ids=lambda p: p[0].__name__)
def converted(request, tmp_path_factory):
    cls, features = request.param
    folder = tmp_path_factory.mktemp(cls.__name__)
    module = torch_models.build(cls)
    example = torch.randn(1, features, 100)
    path = from_torch(module, (example,), folder / "m.tasr", input_names=["features"], output_names=["out"],
                      onnx_path=folder / "m.onnx")
    session = ort.InferenceSession(str(folder / "m.onnx"), providers=["CPUExecutionProvider"])
    return cls, features, path, session, module


def _inputs(features, batch, frames):
    return np.random.default_rng(frames * 10 + batch).standard_normal((batch, features, frames)).astype(np.float32)


def test_matches_onnxruntime_over_lengths_and_batches(converted):
    cls, features, path, session, _ = converted
    model = load_model(path)
    for frames in LENGTHS:
        for batch in (1, 2):
            x = _inputs(features, batch, frames)
            (expected,) = session.run(None, {"features": x})
            got = model.run({"features": x})["out"]
            assert got.shape == expected.shape and got.dtype == np.float32
            np.testing.assert_allclose(got, expected, rtol=0, atol=TOLERANCE, err_msg=f"{cls.__name__} T={frames} B={batch}")


def test_keeps_names_dtypes_and_symbolic_dims(converted):
    cls, features, path, _, _ = converted
    model = load_model(path)
    (inp,) = model.inputs
    assert (inp.name, inp.dtype, inp.shape) == ("features", "float32", ("batch", features, "features_time"))
    (out,) = model.outputs
    assert out.name == "out" and out.shape[0] == "batch"
    assert read_model(path).manifest["provenance"]["source_format"] == "torch"


def test_batchnorm_activation_and_residual_are_fused(converted):
    cls, _, path, _, module = converted
    graph = read_model(path).manifest["graph"]
    ops = collections.Counter(n["op"] for n in graph["nodes"])
    torch_convs = sum(isinstance(m, torch.nn.Conv1d) for m in module.modules())
    assert ops["Conv"] == torch_convs and "BatchNormalization" not in ops
    convs = [n for n in graph["nodes"] if n["op"] == "Conv"]
    residual = [n for n in convs if len(n["inputs"]) == 4]
    blocks = sum(isinstance(m, torch_models.ResidualBlock) for m in module.modules())
    assert len(residual) == blocks and all(n["attrs"]["activation"] == "Relu" for n in residual)
    if cls is not torch_models.CitrinetLike:  # there the ReLUs follow the squeeze-excite Mul, not a Conv
        assert "Relu" not in ops and "Add" not in ops


def test_float16_storage_stays_close(converted, tmp_path):
    cls, features, path, session, _ = converted
    # from the ONNX file the fixture's from_torch wrote (from_torch passes float16 on to the same convert)
    path = convert(path.with_suffix(".onnx"), tmp_path / "h.tasr", float16=True)
    stored = {t["name"]: t["dtype"] for t in read_model(path).manifest["tensors"]}
    assert list(stored.values()).count("float16") >= 10
    full = read_model(path).manifest["provenance"]
    assert full["float16_weights"] is True
    x = _inputs(features, 2, 400)
    (expected,) = session.run(None, {"features": x})
    got = load_model(path).run({"features": x})["out"]
    np.testing.assert_allclose(got, expected, rtol=0, atol=FLOAT16_TOLERANCE)


def test_two_dimensional_convs_match_torch(tmp_path):
    """A Conformer-style 2-D subsampling (dense and depthwise stride 2, ReLU fused) converts and matches torch."""
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, stride=2, padding=1), torch.nn.ReLU(),
                                 torch.nn.Conv2d(4, 4, 3, stride=2, padding=1, groups=4), torch.nn.Conv2d(4, 6, 1),
                                 torch.nn.ReLU()).eval()
    x = torch.randn(2, 1, 37, 20)
    path = from_torch(module, (x,), tmp_path / "x.tasr", input_names=["x"], output_names=["y"])
    with torch.no_grad():
        expected = module(x).numpy()
    np.testing.assert_allclose(load_model(path).run({"x": x.numpy()})["y"], expected, rtol=1e-5, atol=1e-5)


def test_recurrent_layer_is_refused_naming_the_op(tmp_path):
    class Recurrent(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = torch.nn.RNN(8, 8, batch_first=True)  # ONNX RNN (tanh cell): not supported

        def forward(self, x):
            return self.rnn(x)[0]

    with pytest.raises(ConversionError, match=r"op 'RNN' of domain 'ai.onnx' \(opset 17\) is not supported\. Supported: .*Conv"):
        from_torch(Recurrent(), (torch.randn(1, 5, 8),), tmp_path / "x.tasr", input_names=["x"], output_names=["y"],
                   dynamic_axes={"x": {0: "batch", 1: "time"}, "y": {0: "batch", 1: "time"}})


def test_failed_dynamic_axes_probe_says_what_to_do(tmp_path):
    module = torch.nn.Linear(8, 4)  # [B, T, 8]: the last axis is not time, so lengthening it breaks the module
    with pytest.raises(ConversionError, match="Linear: probing for dynamic axes .* pass dynamic_axes explicitly"):
        from_torch(module, (torch.randn(1, 5, 8),), tmp_path / "x.tasr", input_names=["x"], output_names=["y"])


def test_not_a_module_is_refused(tmp_path):
    with pytest.raises(ConversionError, match="needs a torch.nn.Module"):
        from_torch(lambda x: x, (torch.randn(1),), tmp_path / "x.tasr", input_names=["x"], output_names=["y"])
