"""Word error rate of the digit-string model on speakers it has and has not heard.

    python -m recipes.digits.evaluate --out runs/digits

Evaluation strings (3-7 digits, fixed seed, no augmentation) are composed from
(a) the held-out speaker's recordings only and (b) the training speakers'
held-back takes 0-4.  The checkpoint is scored in torch and the exported ONNX
in onnxruntime (they must agree); with ``--convert`` the ONNX is converted to
``digits.tasr`` and scored end to end through ``tinyasr.Recognizer`` on the
audio.  Results are added to ``results.json`` (written by train.py).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from typing import Callable, Dict, List, Sequence

import numpy as np

import torch

from recipes.digits import data
from recipes.digits.model import STRIDE, DigitNet
from tinyasr.batch import edit_distance

EVAL_SEED = 20240
EVAL_STRINGS = 300
EVAL_DIGITS = (3, 7)


def word_error_rate(refs: Sequence[Sequence], hyps: Sequence[Sequence]) -> float:
    """Total word edits over total reference words (corpus WER, not a mean of per-string rates)."""
    if len(refs) != len(hyps):
        raise ValueError(f"{len(refs)} references but {len(hyps)} hypotheses")
    words = sum(len(r) for r in refs)
    return sum(edit_distance(r, h) for r, h in zip(refs, hyps)) / max(words, 1)


def greedy_ctc(logprobs: np.ndarray, blank: int = data.BLANK) -> List[int]:
    """[T, V+1] -> token ids: best class per frame, repeats merged, blanks dropped."""
    best = np.argmax(logprobs, axis=-1)
    keep = np.ones(len(best), dtype=bool)
    keep[1:] = best[1:] != best[:-1]
    return [int(t) for t in best[keep] if t != blank]


def eval_sets(clips) -> Dict[str, list]:
    """The two fixed evaluation sets as lists of (audio, digits)."""
    parts = data.split(clips)
    sets = {}
    for offset, name in enumerate(("unseen", "seen_heldback")):
        rng = np.random.default_rng(EVAL_SEED + offset)
        sets[name] = data.compose_many(rng, parts[name], EVAL_STRINGS, *EVAL_DIGITS, augment=False)
    return sets


def score(transcribe: Callable[[np.ndarray], List[int]], items) -> Dict:
    """WER and string error rate of ``transcribe`` (8 kHz audio -> digit ids) on (audio, digits) ``items``."""
    refs = [digits for _, digits in items]
    hyps = [transcribe(audio) for audio, _ in items]
    return {
        "wer": word_error_rate(refs, hyps),
        "string_error_rate": float(np.mean([r != h for r, h in zip(refs, hyps)])),
        "strings": len(items),
        "words": sum(len(r) for r in refs),
    }


def network_transcriber(run: Callable[[np.ndarray], np.ndarray]) -> Callable[[np.ndarray], List[int]]:
    """Features, ``run`` (features [64, T] -> logprobs [T', V+1]) and greedy decoding.

    Like the tinyasr Recognizer, only output frames computed from valid feature frames are decoded.
    """

    def transcribe(audio: np.ndarray) -> List[int]:
        feats, valid = data.features(audio)
        return greedy_ctc(run(feats)[: -(-valid // STRIDE)])

    return transcribe


def torch_transcriber(checkpoint_path: str) -> Callable[[np.ndarray], List[int]]:
    checkpoint = torch.load(checkpoint_path, map_location="cpu")
    model = DigitNet(**checkpoint["model_config"])
    model.load_state_dict(checkpoint["state_dict"])
    model.eval()

    def run(feats: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return model(torch.from_numpy(feats)[None])[0].numpy()

    return network_transcriber(run)


def onnx_transcriber(onnx_path: str) -> Callable[[np.ndarray], List[int]]:
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 2
    session = onnxruntime.InferenceSession(onnx_path, options, providers=["CPUExecutionProvider"])
    return network_transcriber(lambda feats: session.run(["logprobs"], {"audio_signal": feats[None]})[0][0])


def tinyasr_transcriber(tasr_path: str) -> Callable[[np.ndarray], List[int]]:
    """The whole tinyasr path: Recognizer (its own frontend, runtime and decoder) on 8 kHz samples."""
    from tinyasr.pipeline.recognizer import Recognizer

    recognizer = Recognizer(tasr_path)
    index = {word: i for i, word in enumerate(data.DIGIT_WORDS)}

    def transcribe(audio: np.ndarray) -> List[int]:
        text = recognizer.transcribe(audio, sample_rate=data.SAMPLE_RATE).text
        return [index.get(word, -1) for word in text.split()]

    return transcribe


STATS_STRINGS = 200  # training strings whose features give the fixed streaming statistics
STATS_SEED = 7


def streaming_stats(clips) -> Dict:
    """Per-feature mean / std of un-normalised features over clean training strings (never the held-out speaker).

    The model normalises each utterance; a stream has no whole utterance, so it normalises with these.
    """
    from tinyasr.features.streaming import estimate_feature_stats

    strings = data.compose_many(np.random.default_rng(STATS_SEED), data.split(clips)["train"], STATS_STRINGS,
                                1, 7, augment=False)
    mean, std = estimate_feature_stats((audio for audio, _ in strings), data.FRONTEND)
    return {"feature_mean": [float(v) for v in mean], "feature_std": [float(v) for v in std]}


def convert_to_tasr(onnx_path: str, tasr_path: str, float16: bool, clips) -> None:
    """The exported ONNX carries labels, decoder and frontend as metadata; streaming statistics are added here."""
    from tinyasr_convert import convert_model

    print(convert_model(onnx_path, tasr_path, float16=float16, streaming=streaming_stats(clips)).summary())


def main(argv=None) -> Dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/digits", help="training output folder (model.pt, digits.onnx)")
    parser.add_argument("--fsdd", default=data.default_fsdd_dir(), help="FSDD folder holding recordings/")
    parser.add_argument("--convert", action="store_true", help="convert digits.onnx to digits.tasr and score it too")
    parser.add_argument("--float16", action="store_true", help="with --convert: store weights as float16")
    args = parser.parse_args(argv)

    clips = data.load_fsdd(args.fsdd)
    sets = eval_sets(clips)
    onnx_path = os.path.join(args.out, "digits.onnx")
    tasr_path = os.path.join(args.out, "digits.tasr")
    transcribers = {
        "torch": torch_transcriber(os.path.join(args.out, "model.pt")),
        "onnxruntime": onnx_transcriber(onnx_path),
    }
    if args.convert:
        convert_to_tasr(onnx_path, tasr_path, args.float16, clips)
        transcribers["tinyasr"] = tinyasr_transcriber(tasr_path)

    results_path = os.path.join(args.out, "results.json")
    results = json.load(open(results_path)) if os.path.exists(results_path) else {}
    results["evaluation"] = {
        "seed": EVAL_SEED,
        "digits_per_string": list(EVAL_DIGITS),
        "held_out_speaker": data.HELD_OUT_SPEAKER,
    }
    for engine, transcribe in transcribers.items():
        start = time.perf_counter()
        results[engine] = {name: score(transcribe, items) for name, items in sets.items()}
        results[engine]["seconds"] = round(time.perf_counter() - start, 1)
        print(engine, json.dumps(results[engine]))
    results["onnx_bytes"] = os.path.getsize(onnx_path)
    if args.convert:
        results["tasr_bytes"] = os.path.getsize(tasr_path)
        results["tasr_float16"] = args.float16
    with open(results_path, "w") as f:
        json.dump(results, f, indent=2)
    return results


if __name__ == "__main__":
    main()
