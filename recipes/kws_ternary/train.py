"""Train the FSDD digit classifier twice: dense 1x1 convs, then regenerated ternary ones (equal budget).

    python3 -m recipes.kws_ternary.train --out runs/kws_ternary [--epochs 30] [--variants dense ternary] [--grow depth]

Data: every FSDD recording (8 kHz, one digit each) except the held-out speaker's (recipes.digits.data:
"lucas", never read here).  Features are tinyasr's own log-mel front end, computed once per clip, then
per step cropped / zero-padded to FRAMES at a random offset, mel-warped and masked (SpecAugment).
One thread, AdamW with a one-cycle learning rate, no model selection (the last epoch is kept).
Writes ``{variant}.pt`` (config + state_dict) and ``{variant}.train.json`` to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import asdict, replace
from typing import List, Optional, Tuple

import numpy as np
import torch

from recipes.digits import data
from recipes.digits.train import spec_augment, warp_frequency
from recipes.kws_ternary.model import KWSNet, NetConfig, ternary_config_for_budget, trained_parameters

FRAMES = 64  # 0.64 s at the 10 ms hop: 95 % of FSDD takes are shorter (median 0.39 s, longest 2.3 s)
BATCH = 64


def clip_features(clips) -> List[np.ndarray]:
    """Log-mel features [64, valid frames] of each clip, exactly as the runtime computes them."""
    out = []
    for clip in clips:
        feats, valid = data.features(clip.samples)
        out.append(np.ascontiguousarray(feats[:, :valid]))
    return out


def fit(features: np.ndarray, rng: Optional[np.random.Generator]) -> np.ndarray:
    """[64, FRAMES]: a crop of a long clip or the clip zero-padded (0 = the per-feature mean); centred when
    ``rng`` is None (evaluation, and what the runtime is given), at a random offset otherwise."""
    n = features.shape[1]
    out = np.zeros((features.shape[0], FRAMES), np.float32)
    if n >= FRAMES:
        start = (n - FRAMES) // 2 if rng is None else int(rng.integers(0, n - FRAMES + 1))
        out[:] = features[:, start:start + FRAMES]
    else:
        start = (FRAMES - n) // 2 if rng is None else int(rng.integers(0, FRAMES - n + 1))
        out[:, start:start + n] = features
    return out


def load_split(synthetic_voices: int = 0, seed: int = 0) -> Tuple[List[np.ndarray], np.ndarray, List[np.ndarray],
                                                                   np.ndarray]:
    """(train features, labels, held-out-speaker features, labels); ``synthetic_voices`` eSpeak NG voices
    (recipes.digits.synthetic) saying each digit join the training set."""
    clips = data.load_fsdd(data.default_fsdd_dir())
    train = [c for c in clips if c.speaker != data.HELD_OUT_SPEAKER]
    test = [c for c in clips if c.speaker == data.HELD_OUT_SPEAKER]
    if synthetic_voices:
        from recipes.digits.synthetic import synthesize_digits

        train += synthesize_digits(synthetic_voices, seed=seed)
    return (clip_features(train), np.array([c.digit for c in train]),
            clip_features(test), np.array([c.digit for c in test]))


def train(config: NetConfig, feats, labels, epochs: int, seed: int, log) -> KWSNet:
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = KWSNet(config)
    steps_per_epoch = len(feats) // BATCH
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-3)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=3e-3, total_steps=epochs * steps_per_epoch)
    frames = torch.full((BATCH,), FRAMES)
    for epoch in range(epochs):
        model.train()
        order, correct, total_loss, start = rng.permutation(len(feats)), 0, 0.0, time.time()
        for step in range(steps_per_epoch):
            idx = order[step * BATCH:(step + 1) * BATCH]
            batch = torch.from_numpy(np.stack([fit(feats[i], rng) for i in idx]))
            batch = spec_augment(warp_frequency(batch, rng), frames, rng)
            target = torch.from_numpy(labels[idx])
            logits = model(batch)
            loss = torch.nn.functional.cross_entropy(logits, target, label_smoothing=0.05)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            total_loss += loss.item()
            correct += int((logits.argmax(1) == target).sum())
        log({"epoch": epoch + 1, "loss": total_loss / steps_per_epoch,
             "train_accuracy": correct / (steps_per_epoch * BATCH), "seconds": round(time.time() - start, 1)})
    return model.eval()


def accuracy(model: KWSNet, feats, labels) -> float:
    with torch.no_grad():
        batch = torch.from_numpy(np.stack([fit(f, None) for f in feats]))
        return float((model(batch).argmax(1).numpy() == labels).mean())


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/kws_ternary")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--density", type=float, default=1 / 3)
    parser.add_argument("--variants", nargs="+", default=["dense", "ternary"], choices=["dense", "ternary"])
    parser.add_argument("--grow", default="width", choices=["width", "depth"],
                        help="what the ternary net spends the saved parameter budget on")
    parser.add_argument("--synthetic-voices", type=int, default=0,
                        help="eSpeak NG voices whose ten digits join the training clips (0: FSDD only)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    os.makedirs(args.out, exist_ok=True)
    feats, labels, test_feats, test_labels = load_split(args.synthetic_voices, args.seed)
    dense = NetConfig()
    configs = {"dense": dense, "ternary": ternary_config_for_budget(replace(dense, density=args.density), args.grow)}
    for variant in args.variants:
        config = configs[variant]
        history = []

        def log(entry):
            history.append(entry)
            print(variant, json.dumps(entry), flush=True)

        start = time.time()
        model = train(config, feats, labels, args.epochs, args.seed, log)
        summary = {"variant": variant, "config": asdict(config), "trained_parameters": trained_parameters(model),
                   "epochs": args.epochs, "train_seconds": round(time.time() - start, 1),
                   "synthetic_voices": args.synthetic_voices,
                   "held_out_speaker": data.HELD_OUT_SPEAKER,
                   "torch_held_out_accuracy": accuracy(model, test_feats, test_labels), "history": history}
        print(variant, {k: v for k, v in summary.items() if k != "history"}, flush=True)
        torch.save({"config": asdict(config), "state_dict": model.state_dict()},
                   os.path.join(args.out, f"{variant}.pt"))
        with open(os.path.join(args.out, f"{variant}.train.json"), "w") as f:
            json.dump(summary, f, indent=1)


if __name__ == "__main__":
    main()
