"""Train the digit-string CTC model on freshly composed FSDD strings, CPU only.

    python -m recipes.digits.train --out runs/digits

Every step composes a new batch of augmented 1-7 digit strings from the
training speakers (takes 5-49) and eSpeak NG voices, with a share of
examples holding no digit at all (``no_digits``: noise, tones, non-digit
speech; empty target), computes runtime-identical features, applies
a mel-axis warp and SpecAugment-style masks and takes one AdamW step on the CTC loss (one-cycle
learning rate).  The held-out speaker is never read here.  Writes
``model.pt``, ``digits.onnx``, ``train.log`` (JSON lines) and the training
part of ``results.json`` to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import time
from collections.abc import Callable

import numpy as np
import torch

from recipes.digits import data, no_digits
from recipes.digits.evaluate import greedy_ctc, word_error_rate
from recipes.digits.model import (
    DigitNet,
    export_onnx,
    load_tasr_weights,
    output_lengths,
    parameter_count,
)

VALIDATION_SEED = 7  # seen-speaker held-back takes, for the log only (no model selection)


def spec_augment(batch: torch.Tensor, lengths: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """Zero two bands of <= 8 mel bins and two spans of <= 8 frames per utterance (features are mean-0)."""
    batch = batch.clone()
    for i, length in enumerate(lengths.tolist()):
        for _ in range(2):
            width = int(rng.integers(0, 9))
            start = int(rng.integers(0, batch.shape[1] - width + 1))
            batch[i, start : start + width, :] = 0
            width = int(rng.integers(0, 9))
            start = int(rng.integers(0, max(length - width, 0) + 1))
            batch[i, :, start : start + width] = 0
    return batch


def warp_frequency(batch: torch.Tensor, rng: np.random.Generator, max_warp: float = 0.1) -> torch.Tensor:
    """Stretch each utterance's mel axis by a factor in 1 +- max_warp (vocal-tract-length perturbation).

    Speakers differ mostly in formant positions; with five training voices this
    is the cheapest way to show the model more.  Bins past the top repeat the last one.
    """
    n_mels = batch.shape[1]
    out = torch.empty_like(batch)
    for i in range(batch.shape[0]):
        positions = np.clip(np.arange(n_mels) * rng.uniform(1 - max_warp, 1 + max_warp), 0, n_mels - 1)
        low = np.minimum(positions.astype(np.int64), n_mels - 2)
        frac = torch.from_numpy(positions - low).float()[:, None]
        out[i] = batch[i, low] * (1 - frac) + batch[i, low + 1] * frac
    return out


def length_grouped(items, batch: int, rng: np.random.Generator):
    """``items`` (audio, digits) cut into batches of similar length, in random order.

    Features of a batch are zero-padded to its longest example; drawn at random, a tight single digit shares a
    batch with a 7-digit string and is always followed by seconds of padding that a real file lacks, and the
    model learned to wait for it (tight FSDD files came out empty, issue 16).
    """
    ordered = sorted(items, key=lambda item: len(item[0]))
    batches = [ordered[i:i + batch] for i in range(0, len(ordered), batch)]
    return [batches[i] for i in rng.permutation(len(batches))]


def collate(items):
    """Features zero-padded to [B, 64, Tmax], valid frame counts, concatenated CTC targets and their lengths."""
    feats, valid = zip(*(data.features(audio) for audio, _ in items))
    lengths = torch.tensor(valid)
    batch = torch.zeros(len(feats), feats[0].shape[0], max(f.shape[1] for f in feats))
    for i, f in enumerate(feats):
        batch[i, :, : f.shape[1]] = torch.from_numpy(f)
    targets = torch.tensor([d for _, digits in items for d in digits])
    target_lengths = torch.tensor([len(digits) for _, digits in items])
    return batch, lengths, targets, target_lengths


def validate(model: torch.nn.Module, lengths_out: Callable[[torch.Tensor], torch.Tensor], batch, lengths, targets,
             target_lengths) -> float:
    """Greedy WER of ``model`` on one collated batch (evaluation mode for the call, training mode after)."""
    model.eval()
    with torch.no_grad():
        logprobs = model(batch).numpy()
    model.train()
    out_lengths = lengths_out(lengths).tolist()
    refs = torch.split(targets, target_lengths.tolist())
    hyps = [greedy_ctc(lp[:n]) for lp, n in zip(logprobs, out_lengths)]
    return word_error_rate([r.tolist() for r in refs], hyps)


def add_training_arguments(parser: argparse.ArgumentParser, out: str, steps: int = 3000, lr: float = 3e-3) -> None:
    """The data stream's and the loop's options, shared by every recipe trained on the digit strings."""
    parser.add_argument("--out", default=out)
    parser.add_argument("--fsdd", default=data.default_fsdd_dir(), help="FSDD folder holding recordings/")
    parser.add_argument("--steps", type=int, default=steps)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=lr)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--synthetic-voices", type=int, default=2000, help="eSpeak NG voices saying the digits (0: real speech only)"
    )
    parser.add_argument("--synthetic-share", type=float, default=0.3, help="fraction of strings spoken by them")
    parser.add_argument("--no-digit-share", type=float, default=0.2,
                        help="fraction of examples holding no digit (empty target): noise, tones, other speech")
    parser.add_argument("--phrases", type=int, default=3000,
                        help="eSpeak NG phrases of non-digit words among them (0: non-speech only)")
    parser.add_argument("--length-groups", type=int, default=8,
                        help="compose this many batches at once and batch them by length (1: as drawn), so a "
                             "short example is rarely followed by batch padding that a real file lacks")
    parser.add_argument("--schedule", choices=("one-cycle", "constant"), default="one-cycle",
                        help="learning rate: one cycle peaking at --lr, or --lr throughout (fine-tuning with "
                             "--average-from)")
    parser.add_argument("--average-from", type=int, default=0,
                        help="keep the equal-weight average of the weights every --average-every steps from this "
                             "step on and end with it (0: end with the last step's weights)")
    parser.add_argument("--average-every", type=int, default=50)


class DigitStrings:
    """The training data, composed afresh for every step from the parsed ``add_training_arguments`` options.

    ``next_batch()`` gives (features [B, 64, T] zero-padded, valid frames, CTC targets, target lengths), not yet
    augmented on the features (``augment`` does that); ``validation`` is a fixed batch of held-back strings of
    the training speakers (for the log only, no model selection).  Seeds torch, random and numpy from
    ``args.seed``; the held-out speaker is never read.
    """

    def __init__(self, args: argparse.Namespace):
        self.args = args
        os.makedirs(args.out, exist_ok=True)
        torch.set_num_threads(args.threads)
        torch.manual_seed(args.seed)
        random.seed(args.seed)
        self.rng = rng = np.random.default_rng(args.seed)
        parts = data.split(data.load_fsdd(args.fsdd))
        self.takes = data.by_digit(parts["train"])
        self.synthetic_takes = None
        if args.synthetic_voices:
            from recipes.digits.synthetic import synthesize_digits

            self.synthetic_takes = data.by_digit(synthesize_digits(args.synthetic_voices, seed=args.seed))
        self.phrases = []
        if args.phrases and args.no_digit_share:
            from recipes.digits.synthetic import synthesize_phrases

            self.phrases = synthesize_phrases(no_digits.phrase_texts(rng, args.phrases), seed=args.seed + 1)
        self.validation = collate(
            data.compose_many(np.random.default_rng(VALIDATION_SEED), parts["seen_heldback"], 64, 3, 7, augment=False)
        )
        self._batches: list = []

    def _example(self):
        args, rng = self.args, self.rng
        if rng.random() < args.no_digit_share:
            return no_digits.no_digit_example(rng, self.phrases)
        voices = self.synthetic_takes if self.synthetic_takes and rng.random() < args.synthetic_share else self.takes
        return data.compose(rng, voices, int(rng.integers(1, 8)), augment=True)

    def next_batch(self):
        if not self._batches:
            args = self.args
            self._batches = length_grouped([self._example() for _ in range(args.batch * args.length_groups)],
                                           args.batch, self.rng)
        return collate(self._batches.pop())

    def augment(self, batch: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """The mel-axis warp, then SpecAugment's masks."""
        return spec_augment(warp_frequency(batch, self.rng), lengths, self.rng)

    def settings(self) -> dict:
        """The data settings for results.json."""
        args = self.args
        return {
            "threads": args.threads,
            "steps": args.steps,
            "batch": args.batch,
            "seed": args.seed,
            "lr": args.lr,
            "vocabulary": data.VOCABULARY,
            "blank": data.BLANK,
            "held_out_speaker": data.HELD_OUT_SPEAKER,
            "synthetic_voices": args.synthetic_voices,
            "synthetic_share": args.synthetic_share if args.synthetic_voices else 0.0,
            "no_digit_share": args.no_digit_share,
            "phrases": len(self.phrases),
            "length_groups": args.length_groups,
            "schedule": args.schedule,
            "average_from": args.average_from,
            "average_every": args.average_every,
            "frontend": data.FRONTEND.to_dict(),
        }


def fit(model: torch.nn.Module, strings: DigitStrings, lengths_out: Callable[[torch.Tensor], torch.Tensor],
        extra_loss: Callable[[int], torch.Tensor] | None = None,
        after_step: Callable[[int], dict] | None = None) -> float:
    """Train ``model`` ([B, 64, T] features -> [B, T', classes] log-probabilities) with the CTC loss: AdamW, a
    one-cycle learning rate peaking at ``--lr`` (or ``--lr`` throughout), gradient clipping 5; ``lengths_out``
    maps valid feature frames to valid output frames.  ``extra_loss(step)`` is added to the CTC loss (a pruning
    penalty, distillation); ``after_step(step)`` runs after each optimizer step (masks, schedules) and returns
    figures for the log.  With ``--average-from`` the model ends with the average of the kept steps' weights
    (WeightAverage).
    Logs JSON lines to ``--out``/train.log and stdout every 100 steps; returns the training seconds."""
    args = strings.args
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-3)
    if args.schedule == "constant":
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    else:
        schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=args.lr, total_steps=args.steps,
                                                       pct_start=0.1)
    average = (WeightAverage(model, args.average_from, args.average_every, args.steps) if args.average_from
               else None)
    ctc = torch.nn.CTCLoss(blank=data.BLANK, zero_infinity=True)
    start = time.perf_counter()
    running, extra = 0.0, {}
    with open(os.path.join(args.out, "train.log"), "w") as log:

        def record(entry: dict) -> None:
            log.write(json.dumps(entry) + "\n")
            log.flush()
            print(json.dumps(entry), flush=True)

        for step in range(1, args.steps + 1):
            batch, lengths, targets, target_lengths = strings.next_batch()
            logprobs = model(strings.augment(batch, lengths))
            loss = ctc(logprobs.transpose(0, 1), targets, lengths_out(lengths), target_lengths)
            running += loss.item()
            if extra_loss is not None:
                loss = loss + extra_loss(step)
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            optimizer.step()
            schedule.step()
            if after_step is not None:
                extra = after_step(step) or {}
            if average is not None:
                average.add(step)
            if step % 100 == 0 or step == args.steps:
                entry = {
                    "step": step,
                    "loss": round(running / (100 if step % 100 == 0 else step % 100), 4),
                    "lr": round(schedule.get_last_lr()[0], 6),
                    "validation_wer_seen": round(validate(model, lengths_out, *strings.validation), 4),
                    "seconds": round(time.perf_counter() - start, 1),
                    **extra,
                }
                running = 0.0
                record(entry)
        if average is not None:
            average.apply(strings)
            record({"averaged_checkpoints": average.count,
                    "validation_wer_seen": round(validate(model, lengths_out, *strings.validation), 4)})
    model.eval()
    return time.perf_counter() - start


class WeightAverage:
    """The equal-weight average of a model's parameters taken every ``every`` steps from step ``start`` on
    (stochastic weight averaging, Izmailov et al. 2018): seed to seed, the digit model's held-out WER and tight
    single digits move by about the distance to their targets, and an average of nearby weights sits in a flatter
    part of the loss than any one of them.  BatchNorm statistics are recomputed for the averaged weights."""

    def __init__(self, model: torch.nn.Module, start: int, every: int, last_step: int):
        if not 1 <= start <= last_step or every < 1:
            raise ValueError(f"--average-from {start} --average-every {every}: the average needs a first step in "
                             f"1..--steps ({last_step}) and a positive interval")
        self.model, self.start, self.every = model, start, every
        self.sums = {name: torch.zeros_like(p) for name, p in model.named_parameters()}
        self.count = 0

    def add(self, step: int) -> None:
        if step >= self.start and (step - self.start) % self.every == 0:
            with torch.no_grad():
                for name, p in self.model.named_parameters():
                    self.sums[name] += p
            self.count += 1

    def apply(self, strings: "DigitStrings", batches: int = 60) -> None:
        """Load the average into the model, then run ``batches`` augmented training batches through it in train
        mode with cumulative BatchNorm statistics."""
        with torch.no_grad():
            for name, p in self.model.named_parameters():
                p.copy_(self.sums[name] / self.count)
            norms = [m for m in self.model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
            momenta = [m.momentum for m in norms]
            for m in norms:
                m.reset_running_stats()
                m.momentum = None  # a cumulative average over the batches
            self.model.train()
            for _ in range(batches):
                batch, lengths, _, _ = strings.next_batch()
                self.model(strings.augment(batch, lengths))
            for m, momentum in zip(norms, momenta):
                m.momentum = momentum


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_training_arguments(parser, out="runs/digits")
    parser.add_argument("--channels", type=int, default=192)
    # the bundled model's settings (2026-12-06, night): 192 channels and 12 % no-digit examples, seed 1, then 800
    # steps at a constant 3e-4 from it with the weights averaged (--init, --schedule constant, --average-from
    # 100); 96 channels with 20 % deleted digits, 128 / 160 channels missed more tight single digits
    # (recipes/digits/README.md)
    parser.set_defaults(no_digit_share=0.12)
    parser.add_argument("--init", default=None,
                        help="start from this converted DigitNet .tasr (e.g. tinyasr/models/digits.tasr) and extend it")
    args = parser.parse_args(argv)

    strings = DigitStrings(args)
    model_config = {"n_classes": len(data.VOCABULARY) + 1, "channels": args.channels}
    model = DigitNet(**model_config)
    if args.init:
        load_tasr_weights(model, args.init, strings.validation[0])
    train_seconds = fit(model, strings, output_lengths)

    torch.save({"model_config": model_config, "state_dict": model.state_dict()}, os.path.join(args.out, "model.pt"))
    metadata = {
        "labels": json.dumps(data.VOCABULARY),
        "blank": str(data.BLANK),
        "decoder": "ctc",
        "frontend": json.dumps(data.FRONTEND.to_dict()),
    }
    export_onnx(model, os.path.join(args.out, "digits.onnx"), metadata)
    results = {"train_seconds": round(train_seconds, 1), **strings.settings(), "init": args.init,
               "parameters": parameter_count(model)}
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(results, f, indent=2)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
