"""L0 structured pruning of the trained Conformer-CTC, as Jiang et al. 2023 prune Conformers.

    python -m recipes.conformer_digits.prune --dense runs/conformer_digits/model.nemo \
        --out runs/conformer_digits/pruned --threads 1

1. Hard-concrete gates (Louizos et al. 2018; ``model.HardConcrete``) over each layer's four modules (FFN1, MHSA,
   conv module, FFN2), its attention heads and the hidden units of both FFNs; the student starts as a copy of the
   dense model, gates nearly open.
2. Loss = CTC + layerwise distillation (mean squared difference between each layer's output of the gated student
   and of the frozen dense teacher, on the same augmented batch, valid frames only) + a Lagrangian term
   lambda1 (s - t) + lambda2 (s - t)^2, where s is the expected encoder size (parameters, from the gates'
   probabilities of being non-zero) over the dense encoder's and t the target, lowered linearly from 1 to
   ``--target`` over the first ``--warmup`` of the steps.  The lambdas are trained by gradient ascent (their
   gradient is reversed), so the size is driven to the target instead of merely penalised.
3. The gates are then fixed at their deterministic values and folded into the weights: a unit, head or module
   whose gate is 0 has its rows / columns zeroed (a removed module's output projection zeroed with its bias),
   fractional gates scale the output projections; the model is fine-tuned with those zeros held.
4. ``model.nemo`` is written to ``--out``; tinyasr's converter removes the zeroed heads, units and modules.

The data stream and the training loop are the digits recipe's (``fit``, with ``extra_loss`` / ``after_step``).
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Sequence

import torch
from torch import nn

from recipes.conformer_digits.model import (
    MODULES,
    ConformerCTC,
    Gates,
    encoder_parameter_count,
    load_nemo,
    output_lengths,
    save_nemo,
)
from recipes.conformer_digits.train import MaskedDigitStrings
from recipes.digits.train import add_training_arguments, fit

Held = list[tuple[torch.Tensor, torch.Tensor]]  # (parameter, bool mask of entries pruning keeps at zero)


# ---------------------------------------------------------------------------------------------------------------------
# Expected size


def group_sizes(model: ConformerCTC) -> dict[str, int]:
    """Parameters per gated unit and per module, for one layer (all layers are alike): ``ffn_unit`` (a linear1 row
    with its bias, a linear2 column), ``head`` (its q / k / v rows with biases, its linear_out and linear_pos
    columns / rows, its pos_bias_u / v), ``module_fixed`` (an FFN's or MHSA's output bias and pre-LayerNorm),
    ``conv`` (the whole conv module with its LayerNorm) and ``layer_fixed`` (norm_out)."""
    enc = model.encoder
    d, heads = enc.d_model, enc.layers[0].self_attn.h
    d_k = d // heads
    layer = enc.layers[0]
    return {"ffn_unit": 2 * d + 1, "head": 3 * d_k * (d + 1) + 2 * d_k * d + 2 * d_k, "module_fixed": 3 * d,
            "conv": sum(p.numel() for p in layer.conv.parameters()) + 2 * d, "layer_fixed": 2 * d}


def expected_size(model: ConformerCTC, probabilities: Sequence[dict[str, torch.Tensor]]) -> torch.Tensor:
    """The encoder's expected parameter count when each gate is non-zero with the given probability
    (``probabilities``: per layer, as ``Gates.sample`` returns values); with all ones it is the dense count."""
    sizes = group_sizes(model)
    total = torch.tensor(float(sum(p.numel() for p in model.encoder.pre_encode.parameters())))
    for p in probabilities:
        module = p["modules"]
        ffn = [module[MODULES.index(name)] * (sizes["ffn_unit"] * p[name].sum() + sizes["module_fixed"])
               for name in ("feed_forward1", "feed_forward2")]
        attention = module[MODULES.index("self_attn")] * (sizes["head"] * p["heads"].sum() + sizes["module_fixed"])
        conv = module[MODULES.index("conv")] * sizes["conv"]
        total = total + sum(ffn) + attention + conv + sizes["layer_fixed"]
    return total


def gate_probabilities(gates: Gates) -> list[dict[str, torch.Tensor]]:
    return [{"modules": m.expected_l0(), "heads": h.expected_l0(), "feed_forward1": f1.expected_l0(),
             "feed_forward2": f2.expected_l0()}
            for m, h, f1, f2 in zip(gates.modules_, gates.heads, gates.ffn1, gates.ffn2)]


def kept(values: Sequence[dict[str, torch.Tensor]]) -> list[dict[str, int]]:
    """Per layer, what non-zero gate values keep: FFN units, heads (0 where the module's gate is 0) and the conv
    module (1 / 0), named as tinyasr's ``structure`` names them."""
    layers = []
    for g in values:
        module = g["modules"] > 0
        layers.append({"feed_forward1": int((g["feed_forward1"] > 0).sum()) * int(module[0]),
                       "self_attn": int((g["heads"] > 0).sum()) * int(module[1]), "conv": int(module[2]),
                       "feed_forward2": int((g["feed_forward2"] > 0).sum()) * int(module[3])})
    return layers


# ---------------------------------------------------------------------------------------------------------------------
# Lagrangian and distillation


class _Reversed(torch.autograd.Function):
    """Identity forward, negated gradient: minimising the loss then maximises it over the multipliers."""

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return -grad


class Lagrangian(nn.Module):
    """lambda1 (s - t) + lambda2 (s - t)^2 with the lambdas learned by gradient ascent (scaled like the gates'
    log_alpha, so they move at a useful rate under the shared learning rate)."""

    SCALE = 300.0

    def __init__(self):
        super().__init__()
        self.raw = nn.Parameter(torch.zeros(2))

    def lambdas(self) -> torch.Tensor:
        return self.raw * self.SCALE

    def forward(self, gap: torch.Tensor) -> torch.Tensor:
        lam = _Reversed.apply(self.raw) * self.SCALE
        return lam[0] * gap + lam[1] * gap * gap


def distillation_loss(student: ConformerCTC, teacher: ConformerCTC) -> torch.Tensor:
    """Mean over layers of the squared difference between the student's and the teacher's layer outputs on the
    student's last input, averaged over valid frames and channels."""
    features, lengths = student.last_input
    teacher.layer_outputs = []
    with torch.no_grad():
        teacher(features, lengths)
    valid = (torch.arange(student.layer_outputs[0].shape[1])[None, :] < output_lengths(lengths)[:, None]).float()
    count = valid.sum() * student.layer_outputs[0].shape[2]
    losses = [(((s - t) ** 2) * valid[..., None]).sum() / count
              for s, t in zip(student.layer_outputs, teacher.layer_outputs)]
    return torch.stack(losses).mean()


# ---------------------------------------------------------------------------------------------------------------------
# Folding fixed gates into the weights


def fold_gates(model: ConformerCTC, values: Sequence[dict[str, torch.Tensor]]) -> Held:
    """Multiply fixed gate values into the weights (each FFN's linear2, linear_out, the conv module's
    pointwise_conv2) and zero what a zero gate removes: an FFN unit's linear1 row and bias and linear2 column; a
    head's q / k / v rows and biases, linear_pos rows, pos_bias_u / v rows and linear_out columns; a module's
    output projection with its bias.  The model then computes what the gated model computed in evaluation mode
    (no gates needed).  Returns the zeroed entries, to be held at zero while fine-tuning (``hold``)."""
    held: Held = []

    def zero(param: torch.Tensor, mask: torch.Tensor) -> None:
        if mask.any():
            param[mask] = 0
            held.append((param, mask.clone()))

    with torch.no_grad():
        for layer, g in zip(model.encoder.layers, values):
            module = g["modules"].detach().float()
            for name in ("feed_forward1", "feed_forward2"):
                ff, m = getattr(layer, name), module[MODULES.index(name)]
                z = g[name].detach().float() * m
                ff.linear2.weight.mul_(z[None, :])
                ff.linear2.bias.mul_(m)
                gone = z == 0
                zero(ff.linear1.weight, gone[:, None].expand_as(ff.linear1.weight))
                zero(ff.linear1.bias, gone)
                zero(ff.linear2.weight, gone[None, :].expand_as(ff.linear2.weight))
                zero(ff.linear2.bias, (m == 0).expand_as(ff.linear2.bias))
            attn, m = layer.self_attn, module[MODULES.index("self_attn")]
            z = g["heads"].detach().float() * m
            columns = z.repeat_interleave(attn.d_k)
            attn.linear_out.weight.mul_(columns[None, :])
            attn.linear_out.bias.mul_(m)
            gone = columns == 0
            for linear in (attn.linear_q, attn.linear_k, attn.linear_v):
                zero(linear.weight, gone[:, None].expand_as(linear.weight))
                zero(linear.bias, gone)
            zero(attn.linear_pos.weight, gone[:, None].expand_as(attn.linear_pos.weight))
            for bias in (attn.pos_bias_u, attn.pos_bias_v):
                zero(bias, (z == 0)[:, None].expand_as(bias))
            zero(attn.linear_out.weight, gone[None, :].expand_as(attn.linear_out.weight))
            zero(attn.linear_out.bias, (m == 0).expand_as(attn.linear_out.bias))
            conv, m = layer.conv.pointwise_conv2, module[MODULES.index("conv")]
            conv.weight.mul_(m)
            conv.bias.mul_(m)
            zero(conv.weight, (m == 0).expand_as(conv.weight))
            zero(conv.bias, (m == 0).expand_as(conv.bias))
    return held


def hold(held: Held) -> None:
    """Put the pruned entries back to zero (after an optimizer step moved them by weight decay or momentum)."""
    with torch.no_grad():
        for param, mask in held:
            param[mask] = 0


# ---------------------------------------------------------------------------------------------------------------------


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_training_arguments(parser, out="runs/conformer_digits/pruned", steps=500, lr=1e-3)
    parser.add_argument("--dense", default="runs/conformer_digits/model.nemo", help="the trained dense .nemo")
    parser.add_argument("--target", type=float, default=0.5, help="encoder size to reach, a fraction of the dense")
    parser.add_argument("--warmup", type=float, default=0.5, help="share of the steps over which the target falls")
    parser.add_argument("--distill", type=float, default=1.0, help="weight of the layerwise distillation loss")
    parser.add_argument("--finetune-steps", type=int, default=150)
    parser.add_argument("--finetune-lr", type=float, default=5e-4)
    args = parser.parse_args(argv)
    if not os.path.isfile(args.dense):
        raise SystemExit(f"error: {args.dense}: no such file (train the dense model first)")

    strings = MaskedDigitStrings(args)
    teacher, student = load_nemo(args.dense), load_nemo(args.dense).train()
    for p in teacher.parameters():
        p.requires_grad_(False)
    layer0 = student.encoder.layers[0]
    student.gates = Gates(len(student.encoder.layers), layer0.self_attn.h, layer0.feed_forward1.linear1.out_features)
    student.lagrangian = Lagrangian()
    student.layer_outputs = []
    strings.model = student
    dense_size = encoder_parameter_count(student)
    ones = [{k: torch.ones_like(v) for k, v in p.items()} for p in gate_probabilities(student.gates)]
    assert int(expected_size(student, ones)) == dense_size, "the size accounting misses parameters"

    def target(step: int) -> float:
        return 1.0 - (1.0 - args.target) * min(1.0, step / max(1.0, args.warmup * args.steps))

    def pruning_loss(step: int) -> torch.Tensor:
        ratio = expected_size(student, gate_probabilities(student.gates)) / dense_size
        return args.distill * distillation_loss(student, teacher) + student.lagrangian(ratio - target(step))

    def pruning_log(step: int) -> dict:
        if step % 100 and step != args.steps:
            return {}
        with torch.no_grad():
            ratio = float(expected_size(student, gate_probabilities(student.gates)) / dense_size)
            student.gates.eval()
            layers = kept(student.gates.sample())
            student.gates.train()
        return {"expected_size": round(ratio, 4), "target": round(target(step), 4),
                "lambdas": [round(v, 3) for v in student.lagrangian.lambdas().tolist()],
                "modules_kept": sum(layer["conv"] + sum(layer[m] > 0 for m in MODULES if m != "conv")
                                    for layer in layers),
                "heads_kept": sum(layer["self_attn"] for layer in layers)}

    prune_seconds = fit(student, strings, output_lengths, extra_loss=pruning_loss, after_step=pruning_log)

    student.gates.eval()
    with torch.no_grad():
        values = student.gates.sample()
        final_ratio = float(expected_size(student, [{k: (v > 0).float() for k, v in g.items()} for g in values])
                            / dense_size)
    structure = kept(values)
    held = fold_gates(student, values)
    student.gates = student.lagrangian = None
    student.train()  # fit leaves the model in evaluation mode
    prune_steps, prune_lr = args.steps, args.lr
    args.steps, args.lr = args.finetune_steps, args.finetune_lr
    args.out = os.path.join(args.out, "finetune")  # fit writes train.log to --out: keep the pruning log
    os.makedirs(args.out, exist_ok=True)
    finetune_seconds = 0.0
    if args.finetune_steps:
        finetune_seconds = fit(student, strings, output_lengths,
                               extra_loss=lambda step: args.distill * distillation_loss(student, teacher),
                               after_step=lambda step: hold(held))
    out = os.path.dirname(args.out)
    student.layer_outputs = None
    save_nemo(student, os.path.join(out, "model.nemo"))
    results = {"pruned": {"prune_seconds": round(prune_seconds, 1), "finetune_seconds": round(finetune_seconds, 1),
                          **strings.settings(), "dense": args.dense, "target": args.target, "warmup": args.warmup,
                          "distill": args.distill, "finetune_steps": args.finetune_steps,
                          "finetune_lr": args.finetune_lr, "encoder_size_ratio": round(final_ratio, 4),
                          "dense_encoder_parameters": dense_size, "kept": structure,
                          "gate_values": [{k: [round(x, 3) for x in g[k].tolist()] for k in ("modules", "heads")}
                                          for g in values]}}
    results["pruned"].update(steps=prune_steps, lr=prune_lr)
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump(results, f, indent=2)
    print(json.dumps(results["pruned"]))


if __name__ == "__main__":
    main()
