"""Transducer decoding cost per second of audio: greedy against modified beam search (beam 2 / 4 / 8), and what
the beam buys in total log-probability, on the shared NeMo transducers' stored encoder outputs.

Decoding only (the encoder output is the test vector's): tinyasr.decoding.transducer.greedy with NeMo's
max_symbols, and tinyasr.decoding.transducer_beam (one symbol per frame, as k2 / sherpa-onnx), prediction
network and joint read from the decoder_joint ONNX (the LSTM transducer: its .nemo).  Audio seconds are the
feature frames x 10 ms of the three test utterances (2.0 s, 1.6 s, 0.97 s).  "log P vs greedy": the summed
gain of ``sequence_log_prob`` (every alignment, NeMo's max_symbols per frame) of the beam's tokens over the
greedy tokens' on the three utterances (positive: the beam found likelier text).  Best of repeats, the
decoders taking turns (the machine may be shared), numpy's BLAS at 1 thread (set before numpy loads).
Writes benchmarks/results/transducer_beam.md.  Run: ``python3 benchmarks/bench_transducer_beam.py [--quick]``.
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys

for variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(variable, "1")

import numpy as np  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchmarks.bench_ternary import best_us  # noqa: E402
from benchmarks.machine import cpu_model  # noqa: E402
from tinyasr.decoding.specs import BeamSearch  # noqa: E402
from tinyasr.decoding.transducer import Transducer, greedy  # noqa: E402
from tinyasr.decoding.transducer_beam import TransducerBeamDecoder, sequence_log_prob  # noqa: E402

RESULTS = os.path.join(ROOT, "benchmarks", "results", "transducer_beam.md")
NEMO = os.path.join(ROOT, "..", "shared", "models", "nemo-random")
MODELS = ("conformer_transducer_small", "fastconformer_tdt_small", "fastconformer_hybrid_small",
          "lstm_transducer_small")
BEAMS = (2, 4, 8)
FEATURE_SECONDS = 0.01


def load(name):
    """(Transducer, max_symbols, [(encoder output [D, T], valid frames)], audio seconds) of a shared model."""
    import onnx
    from tinyasr_convert.nemo import read_nemo
    from tinyasr_convert.transducer import decoder_joint, nemo_prediction_and_joint

    folder = os.path.join(NEMO, name)
    z = np.load(os.path.join(folder, "test_vectors.npz"))
    if os.path.exists(os.path.join(folder, "decoder_joint-model.onnx")):
        parts, outputs = decoder_joint(onnx.load(os.path.join(folder, "decoder_joint-model.onnx"))), "output"
    else:
        archive = read_nemo(os.path.join(folder, "model.nemo"))
        parts, outputs = nemo_prediction_and_joint(archive.weights, archive.config, name), "torch.output"
    durations = z["meta.tdt_durations"] if "meta.tdt_durations" in z.files else ()
    model = Transducer(*parts, int(z["meta.blank_index"]), durations)
    utterances = [(z[f"{prefix}{outputs}.outputs"][b], int(z[f"{prefix}{outputs}.encoded_lengths"][b]))
                  for prefix, b in (("", 0), ("case2.", 0), ("case2.", 1))]
    seconds = float(z["input.length"].sum() + z["case2.input.length"].sum()) * FEATURE_SECONDS
    return model, int(z["meta.max_symbols_per_step"]), utterances, seconds


def measure(name, min_seconds):
    model, max_symbols, utterances, seconds = load(name)
    decoders = {beam: TransducerBeamDecoder(model, BeamSearch(beam=beam)) for beam in BEAMS}

    def run_greedy():
        return [greedy(model, e, n, max_symbols).tokens for e, n in utterances]

    runs = {"greedy": run_greedy}
    for beam, decoder in decoders.items():
        runs[f"beam {beam}"] = lambda decoder=decoder: [decoder.decode(e, n).tokens for e, n in utterances]
    us = best_us(runs, min_seconds)
    greedy_scores = [sequence_log_prob(model, e, t, n, max_symbols) for (e, n), t in zip(utterances, run_greedy())]
    gains = {"greedy": 0.0}
    for label, run in list(runs.items())[1:]:
        gains[label] = sum(sequence_log_prob(model, e, t, n, max_symbols) - g
                           for (e, n), t, g in zip(utterances, run(), greedy_scores))
    return {label: (us[label] / 1e3 / seconds, gains[label]) for label in runs}, seconds


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="shorter timing (noisier)")
    args = parser.parse_args()
    seconds = 0.5 if args.quick else 3.0
    lines = ["# Transducer decoding: greedy vs modified beam search (decoding only, per second of audio)", "",
             f"{datetime.date.today()}, {cpu_model()}, 1 thread, best of repeats (machine shared: noisy).",
             "Produced by `python3 benchmarks/bench_transducer_beam.py`.  log P vs greedy: summed over the 3 test",
             "utterances, sequence_log_prob of the beam's tokens minus the greedy tokens' (>= 0: never worse).", "",
             "| model | decoder | ms per s of audio | x greedy's time | log P vs greedy |", "|---|---|---|---|---|"]
    for name in MODELS:
        figures, audio = measure(name, seconds)
        base = figures["greedy"][0]
        for label, (ms, gain) in figures.items():
            lines.append(f"| {name} | {label} | {ms:.2f} | {ms / base:.1f}x | {gain:+.1f} |")
            print(f"{name} ({audio:.2f} s of audio): {label}: {ms:.2f} ms/s, {ms / base:.1f}x greedy, "
                  f"log P {gain:+.1f}", flush=True)
    os.makedirs(os.path.dirname(RESULTS), exist_ok=True)
    with open(RESULTS, "w") as f:
        f.write("\n".join(lines) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
