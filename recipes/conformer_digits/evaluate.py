"""Score the dense and the pruned Conformer-CTC in torch and through tinyasr, and time them in tinyasr.

    python -m recipes.conformer_digits.evaluate --out runs/conformer_digits

For each of ``--out``/model.nemo (dense) and ``--out``/pruned/model.nemo (pruned, when there):

* converts it with tinyasr's plain ``.nemo`` path (``convert_nemo``, as ``tinyasr convert`` does; compaction on)
  and gives the .tasr the digits recipe's front-end padding (``recipes.digits.set_pad``: NeMo's preprocessor
  section cannot say it); checks that the converted file's front end is the training front end
  (``data.FRONTEND``) and computes the same features;
* WER on the digits recipe's two fixed sets (held-out speaker ``lucas``; held-back takes of the training
  speakers) through torch (the .nemo reloaded, lengths masked as at run time) and through ``tinyasr.Recognizer``
  on the audio; the number of strings where the two read differently;
* what ``tinyasr info`` reports kept per layer (heads, FFN units, conv channels, modules), file sizes, and the
  multiply-adds per 10 s that this structure leaves;
* 1-thread speed: ms of tinyasr ``Recognizer.transcribe`` per 10 s of audio (held-back strings joined), dense
  and pruned alternately, median; the CPU model and the load average with it.

Results go to ``--out``/evaluation.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch

from recipes.conformer_digits.model import load_nemo, output_lengths
from recipes.digits import data
from recipes.digits.evaluate import eval_sets, greedy_ctc, score, tinyasr_transcriber
from recipes.digits.set_pad import with_pad_seconds
from tinyasr.features.frontend import FrontendConfig, compute_features
from tinyasr.format.container import read_model

SPEED_SECONDS = 10.0


def convert(nemo_path: str, tasr_path: str) -> None:
    """tinyasr's .nemo conversion, then the training front end's pad_seconds on the converted file."""
    from tinyasr_convert.nemo import convert_nemo

    convert_nemo(nemo_path, tasr_path)
    with_pad_seconds(tasr_path, tasr_path, data.FRONTEND.pad_seconds)


def frontend_matches(tasr_path: str, clips) -> bool:
    """The converted file's front end is ``data.FRONTEND`` and computes the training features bit for bit."""
    with read_model(tasr_path) as model_file:
        runtime = FrontendConfig.from_dict(model_file.manifest["frontend"])
    audio = np.concatenate([clip.samples for clip in clips[:5]])
    ours, valid = compute_features(audio, runtime)
    trained, trained_valid = data.features(audio)
    return runtime == data.FRONTEND and valid == trained_valid and np.array_equal(ours, trained)


def torch_transcriber(nemo_path: str) -> Callable[[np.ndarray], list[int]]:
    """The .nemo reloaded in torch, run on one item with its valid frames (padding masked as at run time)."""
    model = load_nemo(nemo_path)

    def transcribe(audio: np.ndarray) -> list[int]:
        feats, valid = data.features(audio)
        with torch.no_grad():
            logprobs = model(torch.from_numpy(feats)[None], torch.tensor([valid]))[0].numpy()
        return greedy_ctc(logprobs[: int(output_lengths(torch.tensor(valid)))])

    return transcribe


def recorded(transcribe: Callable[[np.ndarray], list[int]], hyps: list) -> Callable[[np.ndarray], list[int]]:
    def run(audio: np.ndarray) -> list[int]:
        hyps.append(transcribe(audio))
        return hyps[-1]

    return run


def structure(tasr_path: str) -> list[dict[str, list[int]]]:
    """Per layer, [kept, of] per module, as ``tinyasr info`` prints it."""
    from tinyasr.cli.info import summarize

    return summarize(tasr_path)["structure"]["layers"]


def encoder_macs(encoder: dict, layers: list[dict[str, list[int]]], feature_frames: int) -> int:
    """Multiply-adds of the encoder and decoder for ``feature_frames`` frames, counted from the config and the
    kept structure (``tinyasr info``'s): subsampling convs and Linear, per layer the kept FFN units, heads (q / k
    / v / output projections, relative positions, scores, weights times values) and conv-module channels."""
    d, heads, kernel = encoder["d_model"], encoder["n_heads"], encoder["conv_kernel_size"]
    d_k, channels, freq, t = d // heads, encoder["subsampling_conv_channels"], encoder["feat_in"], feature_frames
    macs = 0
    for cin in (1, channels):
        t, freq = (t - 1) // 2 + 1, (freq - 1) // 2 + 1
        macs += t * freq * channels * cin * 9
    macs += t * channels * freq * d
    for layer in layers:
        width = layer["self_attn"][0] * d_k
        macs += sum(2 * t * d * layer[m][0] for m in ("feed_forward1", "feed_forward2"))
        macs += 4 * t * d * width + (2 * t - 1) * d * width + 2 * t * t * width + t * (2 * t - 1) * width
        macs += t * layer["conv"][0] * (3 * d + kernel)
    return macs + t * d * (len(data.VOCABULARY) + 1)


def speed(paths: dict[str, str], audio: np.ndarray, repeats: int) -> dict[str, float]:
    """Median ms per ``SPEED_SECONDS`` of audio of each model's Recognizer.transcribe, runs alternating."""
    from tinyasr.pipeline.recognizer import Recognizer

    recognizers = {name: Recognizer(path, num_threads=1) for name, path in paths.items()}
    times: dict[str, list[float]] = {name: [] for name in paths}
    for name, recognizer in recognizers.items():  # warm up: compile, plan buffers
        recognizer.transcribe(audio, sample_rate=data.SAMPLE_RATE)
    for _ in range(repeats):
        for name, recognizer in recognizers.items():
            start = time.perf_counter()
            recognizer.transcribe(audio, sample_rate=data.SAMPLE_RATE)
            times[name].append((time.perf_counter() - start) * 1000 * SPEED_SECONDS / (len(audio) / data.SAMPLE_RATE))
    return {name: round(statistics.median(values), 1) for name, values in times.items()}


def machine() -> dict[str, str]:
    model = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpu": model, "cores": str(os.cpu_count()), "load_average": " ".join(f"{x:.2f}" for x in os.getloadavg()),
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/conformer_digits", help="the training folder (model.nemo, pruned/)")
    parser.add_argument("--fsdd", default=data.default_fsdd_dir(), help="FSDD folder holding recordings/")
    parser.add_argument("--repeats", type=int, default=11, help="timed runs per model")
    parser.add_argument("--strings", type=int, default=0, help="score only the first N strings of each set (0: all)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)

    models = {"dense": os.path.join(args.out, "model.nemo"), "pruned": os.path.join(args.out, "pruned", "model.nemo")}
    models = {name: path for name, path in models.items() if os.path.isfile(path)}
    if "dense" not in models:
        raise SystemExit(f"error: {models.get('dense', os.path.join(args.out, 'model.nemo'))}: no such file "
                         "(run recipes.conformer_digits.train first)")
    try:
        clips = data.load_fsdd(args.fsdd)
    except FileNotFoundError as exc:
        raise SystemExit(f"error: {exc}") from None
    sets = {name: items[: args.strings or None] for name, items in eval_sets(clips).items()}
    results: dict = {"machine": machine(), "held_out_speaker": data.HELD_OUT_SPEAKER}
    tasr = {}
    for name, nemo_path in models.items():
        tasr[name] = os.path.splitext(nemo_path)[0] + ".tasr"
        convert(nemo_path, tasr[name])
        layers = structure(tasr[name])
        frames = compute_features(np.zeros(int(SPEED_SECONDS * data.SAMPLE_RATE), np.float32), data.FRONTEND)[1]
        entry = {"frontend_is_training_frontend": frontend_matches(tasr[name], clips),
                 "nemo_bytes": os.path.getsize(nemo_path), "tasr_bytes": os.path.getsize(tasr[name]),
                 "macs_per_10s": encoder_macs(load_nemo(nemo_path).config["encoder"], layers, frames),
                 "structure": layers}
        for set_name, items in sets.items():
            hyps: dict[str, list] = {"torch": [], "tinyasr": []}
            entry[set_name] = {
                "torch": score(recorded(torch_transcriber(nemo_path), hyps["torch"]), items),
                "tinyasr": score(recorded(tinyasr_transcriber(tasr[name]), hyps["tinyasr"]), items),
                "strings_read_differently": sum(a != b for a, b in zip(hyps["torch"], hyps["tinyasr"])),
            }
        results[name] = entry
        print(name, json.dumps({k: v for k, v in entry.items() if k != "structure"}), flush=True)
    audio, total = [], 0
    for item, _ in sets["seen_heldback"]:
        audio.append(item)
        total += len(item)
        if total >= SPEED_SECONDS * data.SAMPLE_RATE:
            break
    audio = np.concatenate(audio)[: int(SPEED_SECONDS * data.SAMPLE_RATE)]
    results["speed_ms_per_10s"] = speed(tasr, audio, args.repeats)
    results["speed_machine"] = machine()
    with open(os.path.join(args.out, "evaluation.json"), "w") as f:
        json.dump(results, f, indent=2)
    print(json.dumps({k: v for k, v in results.items() if k not in models}, indent=1))
    return results


if __name__ == "__main__":
    main()
