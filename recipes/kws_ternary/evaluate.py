"""Convert the trained classifiers to .tasr, run them in tinyasr on the held-out speaker, compare.

    python3 -m recipes.kws_ternary.evaluate --out runs/kws_ternary

For each ``{variant}.pt`` in ``--out``: export to ONNX (ternary layers' generator parameters in the
metadata), convert (the ternary 1x1 convs become ``ternary_seed`` entries), run tinyasr on every
held-out-speaker clip, and report accuracy, agreement with torch, stored bytes and the time per clip
(batch 1, FRAMES frames, one thread; both models timed in this process).  Writes ``results.json``.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import time
import warnings

import numpy as np
import torch

from recipes.digits import data
from recipes.kws_ternary.model import KWSNet, NetConfig
from recipes.kws_ternary.train import FRAMES, fit, load_split


def load(path: str) -> KWSNet:
    checkpoint = torch.load(path, weights_only=True)
    config = NetConfig(**{**checkpoint["config"], "kernels": tuple(checkpoint["config"]["kernels"])})
    model = KWSNet(config)
    model.load_state_dict(checkpoint["state_dict"])
    return model.eval()


def convert(model: KWSNet, out: str) -> None:
    """torch -> ONNX (+ ternary metadata) -> .tasr with the FSDD frontend and the digit labels."""
    import onnx

    import tinyasr_convert
    from tinyasr_convert.ternary import add_ternary_metadata

    buffer = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.zeros(1, 64, FRAMES),), buffer, dynamo=False, opset_version=17,
                          input_names=["features"], output_names=["logits"],
                          dynamic_axes={"features": {0: "batch", 2: "time"}, "logits": {0: "batch"}})
    proto = onnx.load_from_string(buffer.getvalue())
    add_ternary_metadata(proto, model)
    tinyasr_convert.convert(proto, out, labels=list(data.DIGIT_WORDS), decoder="classification",
                       frontend=data.FRONTEND.to_dict())


def stored_bytes(path: str) -> dict:
    from tinyasr.format.container import describe

    info = describe(path)
    by_encoding: dict = {}
    for row in info["tensors"]:
        by_encoding[row["encoding"]] = by_encoding.get(row["encoding"], 0) + row["bytes"]
    return {"file_bytes": os.path.getsize(path), "tensor_bytes": info["tensor_bytes"],
            "tensor_bytes_by_encoding": by_encoding,
            "ternary_layers": sum(r["encoding"] == "ternary_seed" for r in info["tensors"])}


def seconds_per_clip(model, batch: np.ndarray, repeats: int = 3) -> float:
    """Best-of-repeats mean time of one batch-1 run over the clips."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for clip in batch:
            model.run({"features": clip[None]})
        best = min(best, (time.perf_counter() - start) / len(batch))
    return best


def main(argv=None):
    from tinyasr.engine.offline import load_model

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/kws_ternary")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    _, _, test_feats, test_labels = load_split()
    batch = np.stack([fit(f, None) for f in test_feats])
    results = {}
    for variant in ("dense", "ternary"):
        checkpoint = os.path.join(args.out, f"{variant}.pt")
        if not os.path.exists(checkpoint):
            continue
        model = load(checkpoint)
        tasr = os.path.join(args.out, f"{variant}.tasr")
        convert(model, tasr)
        with torch.no_grad():
            expected = model(torch.from_numpy(batch)).numpy()
        runtime = load_model(tasr)
        logits = runtime.run({"features": batch})["logits"]
        results[variant] = {
            "trained_parameters": sum(p.numel() for p in model.parameters()),
            "torch_accuracy": float((expected.argmax(1) == test_labels).mean()),
            "tinyasr_accuracy": float((logits.argmax(1) == test_labels).mean()),
            "max_abs_logit_difference": float(np.abs(logits - expected).max()),
            **stored_bytes(tasr),
            "tinyasr_ms_per_clip": 1e3 * seconds_per_clip(runtime, batch[:100]),
        }
        print(variant, results[variant], flush=True)
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump({"held_out_speaker": data.HELD_OUT_SPEAKER, "clips": len(test_labels), **results}, f, indent=1)


if __name__ == "__main__":
    main()
