"""The LSTM-CTC digits recipe (recipes/lstm_digits): its gradual pruning follows Zhu & Gupta's cubic schedule
(checked against the polynomial expanded by hand) with exactly that many zeros in the masks and weights; a
randomly initialised recipe model pruned to 90 % exports, converts with its LSTM R stored CSR, and tinyasr
computes what onnxruntime (the reference) and torch compute."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnxruntime = pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

from recipes.digits.model import export_onnx
from recipes.lstm_digits.model import LstmCtc, recurrent_parameters
from recipes.lstm_digits.prune import GradualPruning
from recipes.lstm_digits.train import METADATA

FINAL, START, END, EVERY = 0.9, 3, 23, 4


def cubic(step: int) -> float:
    """Sparsity in force after ``step``: s_f * (3p - 3p^2 + p^3) (= s_f (1 - (1 - p)^3)) at the last pruning step,
    pruning at START, START + EVERY, ... and at END."""
    if step < START:
        return 0.0
    at = END if step >= END else START + EVERY * ((step - START) // EVERY)
    p = (at - START) / (END - START)
    return FINAL * (3 * p - 3 * p * p + p ** 3)


def small_model(seed: int = 0, stride: int = 2, norm: bool = False) -> LstmCtc:
    """A random recipe model; its batch norms (``norm``) get random statistics, so folding them is tested."""
    torch.manual_seed(seed)
    model = LstmCtc(conv_channels=24, hidden=64, layers=2, stride=stride, norm=norm)
    with torch.no_grad():
        for bn in (model.norm, model.norm2):
            if bn is not None:
                bn.running_mean.normal_(), bn.running_var.uniform_(0.5, 2.0), bn.weight.normal_(1.0, 0.2)
                bn.bias.normal_()
    return model.eval()


def test_schedule_is_cubic_and_masks_hold_that_many_zeros():
    model = small_model()
    parameters = recurrent_parameters(model)
    assert sorted(parameters) == ["lstm.weight_hh_l0", "lstm.weight_hh_l1", "lstm.weight_ih_l0", "lstm.weight_ih_l1"]
    schedule = GradualPruning(parameters, FINAL, START, END, EVERY)
    for step in range(1, END + 6):
        with torch.no_grad():  # an optimizer step moves every weight, pruned ones too
            for p in model.parameters():
                p.add_(0.01 * torch.randn_like(p))
        logged = schedule(step)
        assert schedule.target(step) == pytest.approx(cubic(step), abs=1e-12)
        assert logged["target_sparsity"] == pytest.approx(cubic(step), abs=1e-4)
        for name, weight in parameters.items():
            expected = round(cubic(step) * weight.numel())
            assert int((~schedule.masks[name]).sum()) == expected, (step, name)
            assert int((weight == 0).sum()) == expected, (step, name)
    assert schedule.measured() == {name: pytest.approx(FINAL, abs=1e-3) for name in parameters}


def test_masks_keep_the_largest_weights():
    model = small_model(1)
    parameters = recurrent_parameters(model)
    before = {name: p.detach().clone() for name, p in parameters.items()}
    GradualPruning(parameters, 0.8, 0, 1, 1)(1)
    for name, p in parameters.items():
        kept = before[name].abs()[p != 0]
        dropped = before[name].abs()[p == 0]
        assert kept.min() >= dropped.max()


def test_compressed_sensing_variant_penalises_then_cuts_at_the_end():
    model = small_model(2)
    parameters = recurrent_parameters(model)
    schedule = GradualPruning(parameters, FINAL, START, END, EVERY, hard=False)
    step = START + 2 * EVERY
    schedule(step)
    assert all(int((p == 0).sum()) == 0 for p in parameters.values())  # nothing cut before END
    smallest = sum(np.sort(p.detach().numpy().ravel() ** 2)[: round(cubic(step) * p.numel())].sum()
                   for p in parameters.values())
    assert float(schedule.penalty(step)) == pytest.approx(float(smallest), rel=1e-4)
    schedule(END)
    assert schedule.measured() == {name: pytest.approx(FINAL, abs=1e-3) for name in parameters}


@pytest.mark.parametrize("stride,norm", [(2, False), (4, True)])
def test_pruned_model_converts_sparse_and_matches_onnxruntime(tmp_path, stride, norm):
    from tinyasr_convert import convert_model

    from tinyasr.engine.offline import load_model
    from tinyasr.format.encodings.sparse import CSRMatrix

    model = small_model(3, stride, norm)
    GradualPruning(recurrent_parameters(model), FINAL, 0, 1, 1)(1)
    onnx_path, tasr_path = str(tmp_path / "lstm.onnx"), str(tmp_path / "lstm.tasr")
    export_onnx(model, onnx_path, METADATA)
    convert_model(onnx_path, tasr_path)  # as plain `tinyasr convert`: labels etc. from the ONNX metadata
    converted = load_model(tasr_path)
    lstms = [node for node in converted.graph.nodes if node.op == "LSTM"]
    assert len(lstms) == 2
    for node in lstms:
        r = converted.tensors[node.inputs[2]]
        assert isinstance(r, CSRMatrix)
        assert np.mean(np.asarray(r.to_dense()) == 0) == pytest.approx(FINAL, abs=1e-3)
    assert json.loads(METADATA["labels"]) == converted.manifest["decoder"]["vocabulary"]

    features = np.random.default_rng(4).standard_normal((1, 64, 137)).astype(np.float32)
    session = onnxruntime.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
    reference = session.run(["logprobs"], {"audio_signal": features})[0]
    ours = converted.run({"audio_signal": features})["logprobs"]
    frames = int(model.output_lengths(torch.tensor([137]))[0])
    assert frames == -(-137 // stride)
    assert ours.shape == reference.shape == (1, frames, 11)
    np.testing.assert_allclose(ours, reference, atol=1e-4, rtol=0)
    with torch.no_grad():
        np.testing.assert_allclose(ours, model(torch.from_numpy(features)).numpy(), atol=1e-4, rtol=0)
