"""Train the dense Conformer-CTC on the digit strings and save it as a NeMo ``.nemo`` archive.

    python -m recipes.conformer_digits.train --out runs/conformer_digits --threads 1

The data stream and the training loop are the digits recipe's (``recipes.digits.train``: ``DigitStrings``,
``fit``): FSDD strings of the training speakers, eSpeak NG voices, no-digit examples, runtime-identical features
(``data.FRONTEND``, which is the front end of the config's ``preprocessor`` section plus its 0.1 s of padding).
The held-out speaker is never read here.  Writes ``model.nemo``, ``train.log`` and ``results.json`` to ``--out``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os

import torch

from recipes.conformer_digits.model import (
    DEFAULTS,
    build,
    encoder_parameter_count,
    nemo_config,
    output_lengths,
    save_nemo,
)
from recipes.digits import data
from recipes.digits.train import DigitStrings, add_training_arguments, fit
from tinyasr.features.frontend import FrontendConfig


class MaskedDigitStrings(DigitStrings):
    """``DigitStrings`` that tells ``model`` each batch's valid frames just before ``fit`` runs it on the batch,
    so that attention and the conv module mask the batch padding in training as NeMo and tinyasr do at run time
    (``fit`` passes the model features alone)."""

    model: torch.nn.Module

    def augment(self, batch: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        self.model.expect_lengths(lengths)
        return super().augment(batch, lengths)


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    for key, value in DEFAULTS.items():
        parser.add_argument(f"--{key.replace('_', '-')}", type=type(value), default=value)


def check_frontend(config: dict) -> None:
    """The training features (``data.FRONTEND``) must be what the converted model's front end computes: the
    config's preprocessor read as tinyasr reads it, with the digits recipe's pad_seconds (set on the .tasr)."""
    runtime = dataclasses.replace(FrontendConfig.from_nemo(config["preprocessor"]), pad_seconds=data.FRONTEND.pad_seconds)
    if runtime != data.FRONTEND:
        raise SystemExit(f"error: the preprocessor section gives {runtime}, training uses {data.FRONTEND}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_training_arguments(parser, out="runs/conformer_digits", steps=1800, lr=2e-3)
    add_model_arguments(parser)
    args = parser.parse_args(argv)

    config = nemo_config(**{key: getattr(args, key) for key in DEFAULTS})
    check_frontend(config)
    strings = MaskedDigitStrings(args)
    model = build(config)
    strings.model = model
    train_seconds = fit(model, strings, output_lengths)
    save_nemo(model, os.path.join(args.out, "model.nemo"))
    results = {"dense": {"train_seconds": round(train_seconds, 1), **strings.settings(),
                         "model": {key: getattr(args, key) for key in DEFAULTS},
                         "encoder_parameters": encoder_parameter_count(model),
                         "parameters": sum(p.numel() for p in model.parameters())}}
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(results, f, indent=2)
    print(json.dumps(results["dense"]))


if __name__ == "__main__":
    main()
