"""WER, file size and speed of the dense and pruned LSTM-CTC digit models, in torch, onnxruntime and tinyasr.

    python -m recipes.lstm_digits.evaluate runs/lstm_digits/dense runs/lstm_digits/sparse80 runs/lstm_digits/sparse90

For every run folder (model.pt + lstm_digits.onnx from train.py / prune.py): the ONNX is converted to
``lstm_digits.tasr`` as plain ``tinyasr convert`` does (``--sparse auto``: the cost model decides how each LSTM R
is stored) and, for pruned models, also to ``lstm_digits_csr.tasr`` (``--sparse csr``: R stored CSR whatever
the cost model says); both get the digits recipe's streaming statistics.  Then:

* WER on the digits recipe's two fixed sets (held-out speaker ``lucas``; training speakers' held-back takes),
  through torch, onnxruntime and tinyasr's Recognizer on the audio; the hypotheses of the three are compared
  string by string (``disagreements`` must be 0), and the largest difference of the log-probabilities of
  tinyasr (both files) and torch from onnxruntime's on the first ``--compare`` held-out strings;
* sizes of the ONNX and .tasr files, and how the converted file stores each LSTM's W and R;
* speed at 1 thread: the network on the features of 10 s of held-out speech (front end excluded), tinyasr on
  every file and onnxruntime on every ONNX, runs alternating between all of them, medians of wall and of
  thread CPU time (the machine is shared); and the recurrent step alone at hidden 256 for the pruned
  sparsities (benchmarks/bench_recurrent.py's ``measure``: random R of the same shape and sparsity).

Everything goes to ``--json`` (default runs/lstm_digits/evaluation.json) and is printed.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
from collections.abc import Callable

import numpy as np
import torch

from benchmarks.bench_conformer import alternating_medians
from benchmarks.bench_recurrent import measure as measure_recurrent_step
from benchmarks.machine import cpu_model
from recipes.digits import data
from recipes.digits.evaluate import (
    eval_sets,
    network_transcriber,
    onnx_transcriber,
    score,
    streaming_stats,
    tinyasr_transcriber,
)
from recipes.lstm_digits.train import ONNX_NAME, load_checkpoint

SPEED_SECONDS = 10.0


def torch_transcriber(checkpoint_path: str) -> Callable[[np.ndarray], list[int]]:
    model = load_checkpoint(checkpoint_path)

    def run(feats: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return model(torch.from_numpy(feats)[None])[0].numpy()

    return network_transcriber(run)


def recording(transcribe: Callable[[np.ndarray], list[int]], hypotheses: list) -> Callable[[np.ndarray], list[int]]:
    """``transcribe`` that also appends each hypothesis to ``hypotheses``, to compare engines string by string."""

    def run(audio: np.ndarray) -> list[int]:
        hypothesis = transcribe(audio)
        hypotheses.append(hypothesis)
        return hypothesis

    return run


def lstm_storage(tasr_path: str) -> dict[str, dict[str, str]]:
    """{LSTM node: {"W": encoding, "R": encoding, "R_zeros": fraction}} as the converted file stores them."""
    from tinyasr.engine.offline import load_model

    model = load_model(tasr_path)
    found = {}
    for node in model.graph.nodes:
        if node.op == "LSTM":
            w, r = (model.tensors[name] for name in node.inputs[1:3])
            dense_r = np.asarray(r.to_dense() if hasattr(r, "to_dense") else r)
            found[node.name] = {"W": type(w).__name__, "R": type(r).__name__,
                                "R_zeros": round(float(np.mean(dense_r == 0)), 4)}
    return found


def logprob_differences(folder: str, onnx_path: str, tasr: dict[str, str], items) -> dict[str, float]:
    """{engine: max |log-prob - onnxruntime's|} over the features of ``items``: the networks, not the decoding."""
    import onnxruntime

    from tinyasr.engine.offline import load_model

    session = onnxruntime.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
    converted = {f"tinyasr {mode}": load_model(path) for mode, path in tasr.items()}
    others = {name: (lambda x, m=m: m.run({"audio_signal": x})["logprobs"]) for name, m in converted.items()}
    model = load_checkpoint(os.path.join(folder, "model.pt"))
    others["torch"] = lambda x: model(torch.from_numpy(x)).detach().numpy()
    worst = {name: 0.0 for name in others}
    for audio, _ in items:
        x = data.features(audio)[0][None]
        reference = session.run(["logprobs"], {"audio_signal": x})[0]
        for name, run in others.items():
            worst[name] = max(worst[name], float(np.abs(run(x) - reference).max()))
    return worst


def convert(onnx_path: str, tasr_path: str, sparse: str, stats: dict) -> None:
    from tinyasr_convert import convert_model

    print(convert_model(onnx_path, tasr_path, sparse=sparse, streaming=stats).summary())


def ten_seconds_of_speech(items) -> np.ndarray:
    """The first 10 s of the held-out speaker's evaluation strings, one after another."""
    audio = np.concatenate([a for a, _ in items])
    length = int(SPEED_SECONDS * data.SAMPLE_RATE)
    if len(audio) < length:
        raise ValueError(f"only {len(audio) / data.SAMPLE_RATE:.1f} s of evaluation audio")
    return audio[:length]


def speed(files: dict[str, str], feats: np.ndarray, runs: int) -> dict[str, dict[str, float]]:
    """{name: {wall_ms, cpu_ms}} per network call on ``feats`` [64, T] at 1 thread; ``files`` maps names to
    .tasr (tinyasr) or .onnx (onnxruntime) paths; calls alternate between all of them."""
    import onnxruntime

    from tinyasr.engine import threads
    from tinyasr.engine.offline import load_model

    threads.set_num_threads(1)
    batch = feats[None]
    fns = []
    for path in files.values():
        if path.endswith(".tasr"):
            model = load_model(path)
            fns.append(lambda m=model: m.run({"audio_signal": batch}))
        else:
            options = onnxruntime.SessionOptions()
            options.intra_op_num_threads = options.inter_op_num_threads = 1
            session = onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])
            fns.append(lambda s=session: s.run(["logprobs"], {"audio_signal": batch}))
    medians = alternating_medians(fns, runs)
    return {name: {"wall_ms": round(wall * 1e3, 2), "cpu_ms": round(cpu * 1e3, 2)}
            for name, (wall, cpu) in zip(files, medians)}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="run folders holding model.pt and lstm_digits.onnx")
    parser.add_argument("--fsdd", default=data.default_fsdd_dir(), help="FSDD folder holding recordings/")
    parser.add_argument("--json", default="runs/lstm_digits/evaluation.json", help="where the results go")
    parser.add_argument("--speed-runs", type=int, default=15, help="timed calls of each network")
    parser.add_argument("--skip-wer", action="store_true", help="sizes and speed only")
    parser.add_argument("--compare", type=int, default=20, help="held-out strings whose log-probs are compared")
    args = parser.parse_args(argv)
    for folder in args.runs:
        for name in ("model.pt", ONNX_NAME):
            if not os.path.exists(os.path.join(folder, name)):
                parser.error(f"{os.path.join(folder, name)} does not exist (train.py / prune.py write it)")
    if not os.path.isdir(os.path.join(args.fsdd, "recordings")):
        parser.error(f"--fsdd {args.fsdd} holds no recordings/ folder")

    torch.set_num_threads(1)
    clips = data.load_fsdd(args.fsdd)
    sets = eval_sets(clips)
    stats = streaming_stats(clips)
    results = {"date": str(datetime.date.today()), "cpu": cpu_model(), "models": {}}
    speed_files = {}
    for folder in args.runs:
        name = os.path.basename(os.path.normpath(folder))
        onnx_path = os.path.join(folder, ONNX_NAME)
        tasr = {"auto": os.path.join(folder, "lstm_digits.tasr")}
        convert(onnx_path, tasr["auto"], "auto", stats)
        with open(os.path.join(folder, "results.json")) as f:
            training = json.load(f)
        if "pruning" in training:
            tasr["csr"] = os.path.join(folder, "lstm_digits_csr.tasr")
            convert(onnx_path, tasr["csr"], "csr", stats)
        entry = {"training": {k: training.get(k) for k in ("steps", "lr", "train_seconds", "parameters", "init",
                                                            "pruning", "model_config")},
                 "onnx_bytes": os.path.getsize(onnx_path)}
        for mode, path in tasr.items():
            entry[f"tasr_{mode}_bytes"] = os.path.getsize(path)
            entry[f"tasr_{mode}_lstm_storage"] = lstm_storage(path)
        entry["max_abs_logprob_difference_from_onnxruntime"] = logprob_differences(
            folder, onnx_path, tasr, sets["unseen"][:args.compare])
        print(name, entry["max_abs_logprob_difference_from_onnxruntime"], flush=True)
        speed_files[f"tinyasr {name}"] = tasr["auto"]
        if "csr" in tasr:
            speed_files[f"tinyasr {name} (csr)"] = tasr["csr"]
        speed_files[f"onnxruntime {name}"] = onnx_path
        if not args.skip_wer:
            engines = {"torch": torch_transcriber(os.path.join(folder, "model.pt")),
                       "onnxruntime": onnx_transcriber(onnx_path),
                       "tinyasr": tinyasr_transcriber(tasr["auto"])}
            for set_name, items in sets.items():
                hypotheses = {engine: [] for engine in engines}
                entry[set_name] = {engine: score(recording(fn, hypotheses[engine]), items)
                                   for engine, fn in engines.items()}
                entry[set_name]["disagreements"] = sum(
                    len({tuple(h[i]) for h in hypotheses.values()}) > 1 for i in range(len(items)))
                print(name, set_name, json.dumps(entry[set_name]), flush=True)
        results["models"][name] = entry

    feats, _ = data.features(ten_seconds_of_speech(sets["unseen"]))
    results["speed"] = {"audio_seconds": SPEED_SECONDS, "feature_frames": int(feats.shape[1]), "threads": 1,
                        "load_before": os.getloadavg(), "runs": args.speed_runs,
                        "network_ms": speed(speed_files, feats, args.speed_runs), "load_after": os.getloadavg()}
    sparsities = sorted({m["training"]["pruning"]["final_sparsity"] for m in results["models"].values()
                         if m["training"].get("pruning")})
    hidden = {m["training"]["model_config"]["hidden"] for m in results["models"].values()}
    results["recurrent_step_us"] = {f"hidden {h}, {s:.0%}": measure_recurrent_step(h, s, 1.5)
                                    for h in hidden for s in sparsities}
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump(results, f, indent=2)
    print(json.dumps({k: results[k] for k in ("speed", "recurrent_step_us", "cpu")}, indent=1))
    return results


if __name__ == "__main__":
    main()
