"""The Conformer-CTC digits recipe (recipes/conformer_digits): its torch model is what tinyasr's .nemo importer
rebuilds, a model pruned the way prune.py prunes converts with the pruned heads, units and modules gone, and the
hard-concrete gate's expected L0 is its closed form.

References: the torch model itself (tinyasr must compute what it computes, padding masked, two lengths), the
gated torch model in evaluation mode (folding the gates must not change the function), the kept structure
worked out here from the chosen gates, and the hard-concrete distribution's probability of a non-zero gate from
the logistic distribution's CDF and from sampling.
"""

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("yaml")

from tinyasr_convert.nemo import convert_nemo

from recipes.conformer_digits.model import (
    MODULES,
    Gates,
    HardConcrete,
    build,
    nemo_config,
    output_lengths,
    save_nemo,
)
from recipes.conformer_digits.prune import expected_size, fold_gates, gate_probabilities
from tinyasr.cli.info import summarize
from tinyasr.engine.offline import load_model

D, LAYERS, HEADS, UNITS = 32, 3, 4, 64
# the gates' evaluation-mode values chosen per layer: 0 removes, a fraction scales (folded into the weights)
REMOVED_HEADS = {0: [1, 3], 1: [], 2: [0]}
REMOVED_UNITS = {0: list(range(10)), 1: list(range(0, UNITS, 2)), 2: []}  # feed_forward1's
REMOVED_MODULES = {1: ["conv"], 2: ["feed_forward2", "self_attn"]}


def _log_alpha(value: float) -> float:
    """The log_alpha whose evaluation-mode gate is ``value`` (0 and 1 are reached with room to spare)."""
    if value <= 0:
        return -12.0
    if value >= 1:
        return 12.0
    s = (value - HardConcrete.GAMMA) / (HardConcrete.ZETA - HardConcrete.GAMMA)
    return math.log(s / (1 - s))


def _model():
    torch.manual_seed(0)
    model = build(nemo_config(d_model=D, n_layers=LAYERS, n_heads=HEADS, ff_expansion_factor=UNITS // D,
                              conv_kernel_size=7, subsampling_conv_channels=8, dropout=0.1))
    for module in model.modules():  # running statistics that are not the identity
        if isinstance(module, torch.nn.BatchNorm1d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    model.gates = Gates(LAYERS, HEADS, UNITS)
    with torch.no_grad():
        for i in range(LAYERS):
            heads = [0.0 if h in REMOVED_HEADS[i] else 0.6 if h == 2 else 1.0 for h in range(HEADS)]
            units = [0.0 if u in REMOVED_UNITS[i] else 0.8 if u == 20 else 1.0 for u in range(UNITS)]
            modules = [0.0 if m in REMOVED_MODULES.get(i, []) else 1.0 for m in MODULES]
            for gate, values in ((model.gates.heads[i], heads), (model.gates.ffn1[i], units),
                                 (model.gates.ffn2[i], [1.0] * UNITS), (model.gates.modules_[i], modules)):
                gate.raw.copy_(torch.tensor([_log_alpha(v) for v in values]) / HardConcrete.LOG_ALPHA_SCALE)
    return model.eval()


def _features():
    rng = np.random.default_rng(1)
    return rng.standard_normal((2, 64, 83)).astype(np.float32), np.array([83, 50])


@pytest.fixture(scope="module")
def pruned(tmp_path_factory):
    """(gated model, folded model, converted .tasr path)."""
    folder = tmp_path_factory.mktemp("conformer_digits")
    gated, folded = _model(), _model()
    with torch.no_grad():
        values = folded.gates.sample()
    fold_gates(folded, values)
    folded.gates = None
    save_nemo(folded, str(folder / "model.nemo"))
    return gated, folded, convert_nemo(folder / "model.nemo", folder / "model.tasr")


def test_tinyasr_computes_what_the_pruned_torch_model_computes(pruned):
    gated, folded, tasr = pruned
    x, lengths = _features()
    with torch.no_grad():
        reference = folded(torch.from_numpy(x), torch.from_numpy(lengths)).numpy()
        before_folding = gated(torch.from_numpy(x), torch.from_numpy(lengths)).numpy()
    got = load_model(tasr).run({"audio_signal": x, "length": lengths})["logprobs"]
    assert got.shape == reference.shape
    for i, n in enumerate(output_lengths(torch.from_numpy(lengths)).tolist()):  # padding frames are not defined
        np.testing.assert_allclose(got[i, :n], reference[i, :n], rtol=0, atol=1e-4)
        np.testing.assert_allclose(before_folding[i, :n], reference[i, :n], rtol=0, atol=1e-5)


def test_the_converted_file_leaves_out_what_the_gates_removed(pruned):
    layers = summarize(pruned[2])["structure"]["layers"]
    for i, layer in enumerate(layers):
        gone = REMOVED_MODULES.get(i, [])
        expected = {
            "feed_forward1": 0 if "feed_forward1" in gone else UNITS - len(REMOVED_UNITS[i]),
            "self_attn": 0 if "self_attn" in gone else HEADS - len(REMOVED_HEADS[i]),
            "conv": 0 if "conv" in gone else D,
            "feed_forward2": 0 if "feed_forward2" in gone else UNITS,
        }
        assert layer == {m: [expected[m], {"self_attn": HEADS, "conv": D}.get(m, UNITS)] for m in MODULES}, i


def test_expected_l0_is_the_closed_form():
    gate = HardConcrete(5)
    log_alpha = np.array([-4.0, -1.5, 0.0, 1.0, 3.0])
    with torch.no_grad():
        gate.raw.copy_(torch.from_numpy(log_alpha / HardConcrete.LOG_ALPHA_SCALE))
    got = gate.expected_l0().detach().numpy()
    # z > 0 iff the stretched s exceeds -gamma / (zeta - gamma), i.e. the logistic noise L = log u - log(1 - u)
    # exceeds beta * logit(that threshold) - log_alpha: one minus the logistic CDF there
    threshold = -HardConcrete.GAMMA / (HardConcrete.ZETA - HardConcrete.GAMMA)
    cut = HardConcrete.BETA * np.log(threshold / (1 - threshold)) - log_alpha
    np.testing.assert_allclose(got, 1 - 1 / (1 + np.exp(-cut)), rtol=1e-6)
    torch.manual_seed(0)
    gate.train()
    with torch.no_grad():
        nonzero = torch.stack([gate() > 0 for _ in range(20000)]).float().mean(0).numpy()
    np.testing.assert_allclose(nonzero, got, atol=0.015)  # binomial sd <= 0.0036 at 20000 draws


def test_the_size_accounting_counts_every_encoder_parameter():
    model = _model()
    ones = [{k: torch.ones_like(v) for k, v in p.items()} for p in gate_probabilities(model.gates)]
    assert int(expected_size(model, ones)) == sum(p.numel() for p in model.encoder.parameters())
    # a removed module takes its own parameters (counted from the module) and nothing else
    without = [dict(p) for p in ones]
    without[0]["modules"] = torch.tensor([1.0, 1.0, 0.0, 1.0])
    conv = sum(p.numel() for p in model.encoder.layers[0].conv.parameters()) + 2 * D  # with its LayerNorm
    assert int(expected_size(model, ones)) - int(expected_size(model, without)) == conv
