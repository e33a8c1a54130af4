"""Dense training of the LSTM-CTC digit-string model, on the digits recipe's data stream and loop.

    python -m recipes.lstm_digits.train --out runs/lstm_digits/dense --threads 1

The data (``recipes.digits.train.DigitStrings``: FSDD strings of the training speakers, eSpeak NG voices,
no-digit examples, augmentation) and the loop (``recipes.digits.train.fit``: AdamW, one-cycle learning rate,
CTC) are the digits recipe's; only the network differs (``model.LstmCtc``).  Writes ``model.pt``,
``lstm_digits.onnx`` (labels, blank, decoder and front end in its metadata), ``train.log`` and
``results.json`` to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os

import torch

from recipes.digits import data
from recipes.digits.model import export_onnx, parameter_count
from recipes.digits.train import DigitStrings, add_training_arguments, fit
from recipes.lstm_digits.model import LstmCtc

ONNX_NAME = "lstm_digits.onnx"
METADATA = {
    "labels": json.dumps(data.VOCABULARY),
    "blank": str(data.BLANK),
    "decoder": "ctc",
    "frontend": json.dumps(data.FRONTEND.to_dict()),
}


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--hidden", type=int, default=256, help="LSTM units per layer")
    parser.add_argument("--conv-channels", type=int, default=256, help="channels of the stride-2 input convolution")
    parser.add_argument("--layers", type=int, default=2, help="stacked unidirectional LSTM layers")
    parser.add_argument("--stride", type=int, choices=(2, 4), default=2, help="frames in per LSTM step")
    parser.add_argument("--norm", action="store_true", help="batch norm after the input convolutions")


def load_checkpoint(path: str) -> LstmCtc:
    """The LstmCtc saved by ``save`` (model_config + state_dict), in eval mode; SystemExit naming a missing file."""
    if not os.path.exists(path):
        raise SystemExit(f"error: {path} does not exist (run python -m recipes.lstm_digits.train first)")
    checkpoint = torch.load(path, map_location="cpu")
    model = LstmCtc(**checkpoint["model_config"])
    model.load_state_dict(checkpoint["state_dict"])
    return model.eval()


def save(model: LstmCtc, model_config: dict, out: str, results: dict) -> None:
    """model.pt, the ONNX export and results.json into ``out``."""
    torch.save({"model_config": model_config, "state_dict": model.state_dict()}, os.path.join(out, "model.pt"))
    export_onnx(model, os.path.join(out, ONNX_NAME), METADATA)
    results["parameters"] = parameter_count(model)
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump(results, f, indent=2)
    print(json.dumps(results))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_training_arguments(parser, out="runs/lstm_digits/dense", steps=1500, lr=2e-3)
    add_model_arguments(parser)
    parser.add_argument("--init", default=None, help="continue from this model.pt (its configuration wins)")
    args = parser.parse_args(argv)
    if not os.path.isdir(os.path.join(args.fsdd, "recordings")):
        parser.error(f"--fsdd {args.fsdd} holds no recordings/ folder")
    if args.init and not os.path.exists(args.init):
        parser.error(f"--init {args.init} does not exist")

    strings = DigitStrings(args)
    if args.init:
        model = load_checkpoint(args.init).train()
        model_config = torch.load(args.init, map_location="cpu")["model_config"]
    else:
        model_config = {"n_classes": len(data.VOCABULARY) + 1, "conv_channels": args.conv_channels,
                        "hidden": args.hidden, "layers": args.layers, "stride": args.stride, "norm": args.norm}
        model = LstmCtc(**model_config)
    seconds = fit(model, strings, model.output_lengths)
    save(model, model_config, args.out, {"train_seconds": round(seconds, 1), **strings.settings(),
                                          "model_config": model_config, "init": args.init})


if __name__ == "__main__":
    main()
