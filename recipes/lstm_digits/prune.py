"""Gradual magnitude pruning of the LSTM-CTC model's LSTM matrices, with fine-tuning on the digit strings.

    python -m recipes.lstm_digits.prune --init runs/lstm_digits/dense/model.pt --sparsity 0.9 \
        --out runs/lstm_digits/sparse90 --threads 1

Zhu & Gupta (2017): every ``--prune-every`` steps from ``--prune-start`` to ``--prune-end`` (fractions of
``--steps``) each LSTM input matrix W (``weight_ih_l*``) and recurrent matrix R (``weight_hh_l*``) is cut to
``final * (1 - (1 - progress)**3)`` zeros by magnitude (per matrix, the four gates together); the masks are
re-applied after every optimizer step (``fit``'s ``after_step``), so pruned weights stay zero while the rest
fine-tune, and training goes on at the final sparsity after ``--prune-end``.  The cubic ramp prunes fast while
the network has redundant weights and slowly near the end, when every cut costs accuracy.

``--method cs`` is a compressed-sensing flavour after Zhen et al. (2021): instead of zeroing the weights the
schedule would prune, it adds ``--cs-weight`` x their squared norm to the loss (``fit``'s ``extra_loss``), so
training pulls them towards zero (the distance between the weights and their sparse projection, the
compression error, is what the penalty shrinks) and the hard cut at ``--prune-end`` removes little; the masks
are applied from then on.  It is our reading of the method from its summary, not the paper's code.

Data, loop and output files are the dense recipe's (``train.py``); the results add the schedule and the
measured sparsity of every pruned matrix.
"""

from __future__ import annotations

import argparse
import os

import torch
from tinyasr_convert.sparsity import magnitude_mask, sparsity_schedule

from recipes.digits.train import DigitStrings, add_training_arguments, fit
from recipes.lstm_digits.model import recurrent_parameters
from recipes.lstm_digits.train import load_checkpoint, save


class GradualPruning:
    """Zhu & Gupta's schedule over ``parameters`` ({name: weight [rows, columns]}), pruning at steps
    ``start, start + every, ..., end`` (the last one reaching ``final``).

    ``target(step)`` is the sparsity in force after ``step``: the cubic ramp evaluated at the last pruning step
    at or before ``step`` (0 before ``start``).  Calling the object with a step (``fit``'s ``after_step``)
    recomputes the masks at a pruning step (``prune``) and applies them, unless ``hard`` is False before
    ``end`` (``--method cs``: the penalty, not the masks, acts until the final cut).
    """

    def __init__(self, parameters: dict[str, torch.nn.Parameter], final: float, start: int, end: int,
                 every: int, hard: bool = True):
        if not 0.0 < final < 1.0:
            raise ValueError(f"the final sparsity must be in (0, 1), got {final}")
        if not 0 <= start <= end or every < 1:
            raise ValueError(f"pruning needs 0 <= start <= end and every >= 1, got {start}, {end}, {every}")
        self.parameters, self.final, self.start, self.end, self.every, self.hard = (
            parameters, final, start, end, every, hard)
        self.masks = {name: torch.ones_like(p, dtype=torch.bool) for name, p in parameters.items()}

    def pruning_step(self, step: int) -> int | None:
        """The last pruning step at or before ``step`` (None: none yet)."""
        if step < self.start:
            return None
        if step >= self.end:
            return self.end
        return self.start + (step - self.start) // self.every * self.every

    def target(self, step: int) -> float:
        at = self.pruning_step(step)
        return 0.0 if at is None else sparsity_schedule(at, self.end, self.final, 0.0, self.start)

    def prune(self, sparsity: float) -> None:
        """Masks keeping the largest ``1 - sparsity`` of each matrix's weights by magnitude."""
        for name, p in self.parameters.items():
            keep = magnitude_mask(p.detach().numpy(), sparsity)
            self.masks[name] = torch.from_numpy(keep)

    def apply(self) -> None:
        with torch.no_grad():
            for name, p in self.parameters.items():
                p.mul_(self.masks[name])

    def penalty(self, step: int) -> torch.Tensor:
        """Squared norm of the weights that the schedule's sparsity at ``step`` would prune now (``--method cs``)."""
        sparsity = self.target(step)
        total = torch.zeros(())
        if sparsity == 0.0:
            return total
        for p in self.parameters.values():
            drop = ~torch.from_numpy(magnitude_mask(p.detach().numpy(), sparsity))
            total = total + p[drop].square().sum()
        return total

    def measured(self) -> dict[str, float]:
        """{name: fraction of exact zeros} of the pruned matrices."""
        return {name: float((p == 0).float().mean()) for name, p in self.parameters.items()}

    def __call__(self, step: int) -> dict:
        if self.pruning_step(step) == step and (self.hard or step == self.end):
            self.prune(self.target(step))
        if self.hard or step >= self.end:
            self.apply()
        return {"target_sparsity": round(self.target(step), 4)}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_training_arguments(parser, out="runs/lstm_digits/sparse90", steps=800, lr=1e-3)
    parser.add_argument("--init", default="runs/lstm_digits/dense/model.pt", help="the dense model.pt to prune")
    parser.add_argument("--sparsity", type=float, default=0.9, help="final fraction of zeros in each LSTM matrix")
    parser.add_argument("--prune-start", type=float, default=0.0, help="first pruning step, fraction of --steps")
    parser.add_argument("--prune-end", type=float, default=0.6, help="last pruning step, fraction of --steps")
    parser.add_argument("--prune-every", type=int, default=20, help="steps between mask updates")
    parser.add_argument("--method", choices=("magnitude", "cs"), default="magnitude",
                        help="magnitude: masks from the first step; cs: penalty until --prune-end, then masks")
    parser.add_argument("--cs-weight", type=float, default=1e-2, help="--method cs: weight of the penalty")
    args = parser.parse_args(argv)
    if not 0.0 < args.sparsity < 1.0:
        parser.error(f"--sparsity must be in (0, 1), got {args.sparsity}")
    if not 0.0 <= args.prune_start <= args.prune_end <= 1.0:
        parser.error("--prune-start and --prune-end must satisfy 0 <= start <= end <= 1")
    if not os.path.isdir(os.path.join(args.fsdd, "recordings")):
        parser.error(f"--fsdd {args.fsdd} holds no recordings/ folder")

    model = load_checkpoint(args.init).train()
    strings = DigitStrings(args)
    start, end = int(args.prune_start * args.steps), max(int(args.prune_end * args.steps), 1)
    schedule = GradualPruning(recurrent_parameters(model), args.sparsity, start, end, args.prune_every,
                              hard=args.method == "magnitude")
    extra_loss = (lambda step: args.cs_weight * schedule.penalty(step)) if args.method == "cs" else None
    seconds = fit(model, strings, model.output_lengths, extra_loss=extra_loss, after_step=schedule)
    measured = schedule.measured()
    if min(measured.values()) < args.sparsity - 1e-3:
        raise SystemExit(f"error: pruned matrices hold fewer zeros than {args.sparsity}: {measured}")
    model_config = torch.load(args.init, map_location="cpu")["model_config"]
    save(model, model_config, args.out, {
        "train_seconds": round(seconds, 1), **strings.settings(), "model_config": model_config, "init": args.init,
        "pruning": {"method": args.method, "final_sparsity": args.sparsity, "start_step": start, "end_step": end,
                    "every": args.prune_every, "cs_weight": args.cs_weight if args.method == "cs" else None,
                    "measured_sparsity": {k: round(v, 4) for k, v in measured.items()}},
    })


if __name__ == "__main__":
    main()
