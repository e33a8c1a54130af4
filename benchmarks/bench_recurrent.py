"""One LSTM frame (batch 1): the recurrent step with R dense vs 90 % sparse, hidden 256 to 1024; and
greedy transducer decoding of NeMo's test vectors against the same loop over onnxruntime.

The recurrent product at one frame is a matrix x vector product (R is [4H, H]).  Dense reads 16 H^2 bytes;
CSR at 90 % about 1.6 H^2 (float32 values) + 0.8 H^2 (uint16 indices), but each non-zero is a scalar gather,
so while R fits the caches CSR is bound by loads (~0.5 ns a non-zero), not bytes.  Column blocks (8 gate
rows x 1 column pruned together, 90 % of the blocks zero) are one 8-lane multiply-add per block, no gather.
All run tinyasr's kernel (tinyasr/kernels/recurrent.py, ``lstm_direction`` with T = 1, gates fused, so
the gates' cost is in all).  The issue's target: >= 4x.

Decoding: tinyasr.decoding.transducer's greedy search over the stored encoder output of each NeMo transducer in
../shared/models/nemo-random (prediction network and joint read from its decoder_joint ONNX), against the
loop NeMo's ONNX decoding runs: one onnxruntime call of the decoder_joint graph per step, identical tokens.
Best of repeats, functions taking turns (the machine may be shared).  Writes benchmarks/results/recurrent.md.
Run: ``python3 benchmarks/bench_recurrent.py [--quick]``.

``--prediction``: one step of a transducer's prediction network (tinyasr.decoding.transducer.PredictionNetwork
.step: embedding row, input projection W, recurrent step R, gates), its LSTM weights W and R pruned 90 % by
magnitude (tinyasr_convert.sparsity.prune_recurrent): unstructured, stored csr; in 8 x 1 blocks, stored bsr and
run as column blocks; vs the same network dense.  The shared NeMo transducers (lstm_transducer_small: 2 layers,
conformer_transducer_small: 1 layer; H = 128 and 64), NeMo's default prediction network size (H = 640, 1 and 2
layers, vocabulary 1024) and H = 8 (next to no arithmetic: the fixed cost of a step, which bounds the ratio
of small networks).  Writes benchmarks/results/prediction_network.md.
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys

import numpy as np
from numba import njit

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.bench_ternary import best_us  # noqa: E402
from benchmarks.machine import cpu_model  # noqa: E402
from tinyasr.engine import threads  # noqa: E402
from tinyasr.format.encodings.sparse import csr_arrays  # noqa: E402
from tinyasr.kernels.recurrent import BLOCK, EMPTY_CSR, EMPTY_DENSE, column_blocks, lstm_direction  # noqa: E402
from tinyasr.kernels.transducer import _predict, _prediction_scratch, pack_layers  # noqa: E402

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "recurrent.md")
PREDICTION_RESULTS = os.path.join(os.path.dirname(RESULTS), "prediction_network.md")
NEMO = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..", "shared", "models",
                    "nemo-random")
SEQUENCE_FRAMES = 16  # frames a call in the sequence measurement (a longer call is preempted on a busy machine)
# (label, frames a call, called from compiled code) of each measurement of the step
CALLS = (("from Python, 1 frame", 1, False), ("from compiled code, 1 frame", 1, True),
         (f"one call, {SEQUENCE_FRAMES} frames", SEQUENCE_FRAMES, False))
TRANSDUCERS = ("conformer_transducer_small", "fastconformer_tdt_small", "fastconformer_hybrid_small")


@njit
def _frame_calls(calls, pre, dense_t, values, indices, indptr, h, c, one, y):
    """``calls`` one-frame calls of the LSTM step from compiled code: how greedy search's loop steps the
    prediction network (tinyasr/kernels/transducer.py), with no Python dispatch around each call."""
    no_peephole, no_projection = np.zeros(0, np.float32), np.zeros((0, 0), np.float32)
    for _ in range(calls):
        lstm_direction(pre, dense_t, values, indices, indptr, no_peephole, no_projection, h, c, one, False,
                       np.float32(0.0), y)


COMPILED_CALLS = 200  # one-frame calls a timing of _frame_calls makes


def measure(hidden, sparsity, min_seconds, frames=1, compiled=False):
    """Microseconds per frame of each variant, ``frames`` frames per call (1: a call per frame, the prediction
    network's way; more: the LSTM op's way over an encoder's sequence, the call's cost spread over them);
    ``compiled``: one-frame calls made from compiled code (_frame_calls) instead of from Python."""
    rng = np.random.default_rng(hidden)
    r = (rng.standard_normal((4 * hidden, hidden)) / np.sqrt(hidden)).astype(np.float32)
    blocked = r * np.repeat(rng.random((4 * hidden // BLOCK, hidden)) >= sparsity, BLOCK, axis=0)
    r[rng.random(r.shape) < sparsity] = 0.0
    pre = rng.standard_normal((frames, 1, 4 * hidden)).astype(np.float32)
    h, c = np.zeros((1, hidden), np.float32), np.zeros((1, hidden), np.float32)
    y = np.empty((frames, 1, hidden), np.float32)
    one, no_peephole, zero = np.full(1, frames, np.int64), np.zeros(0, np.float32), np.float32(0)
    dense_t, csr, blocks = np.ascontiguousarray(r.T), csr_arrays(r), column_blocks(blocked)
    no_r = column_blocks(np.zeros_like(r))  # the step without its product: the call and the gates
    operands = {"dense": (dense_t,) + EMPTY_CSR, "csr": (EMPTY_DENSE,) + csr, "blocks": (EMPTY_DENSE,) + blocks,
                "no R": (EMPTY_DENSE,) + no_r}
    if compiled:
        us = best_us({name: (lambda r=r: _frame_calls(COMPILED_CALLS, pre, *r, h, c, one, y))
                      for name, r in operands.items()}, min_seconds)
        return {name: value / COMPILED_CALLS for name, value in us.items()}
    us = best_us({name: (lambda r=r: lstm_direction(pre, *r, no_peephole, EMPTY_DENSE, h, c, one, False, zero, y))
                  for name, r in operands.items()}, min_seconds)
    return {name: value / frames for name, value in us.items()}


def _ort_greedy(session, encoder_output, length, blank, max_symbols, durations):
    """NeMo's greedy rules (RNN-T, or TDT when durations) with one decoder_joint run per step."""
    states = [np.zeros((1, 1, i.shape[2]), np.float32) for i in session.get_inputs()[3:5]]
    last, tokens, t, frames = blank, [], 0, encoder_output.shape[2]
    classes = session.get_outputs()[0].shape[-1] - len(durations)
    while t < min(length, frames):
        tries = 0
        while tries < max_symbols:
            logits, _, h, c = session.run(None, {
                "encoder_outputs": encoder_output[:, :, t:t + 1], "targets": np.array([[last]], np.int32),
                "target_length": np.array([1], np.int32), "input_states_1": states[0], "input_states_2": states[1]})
            token = int(np.argmax(logits.reshape(-1)[:classes]))
            step = durations[int(np.argmax(logits.reshape(-1)[classes:]))] if durations else 0
            tries += 1
            if token != blank:
                tokens.append(token)
                last, states = token, [h, c]
            if durations:
                t += step
                if step:
                    break
            elif token == blank:
                break
        if not durations or tries == max_symbols:
            t += 1
    return tokens


def measure_decoding(min_seconds):
    """{model: (tinyasr us, onnxruntime loop us)} per greedy decode of the B=1 test vector."""
    import onnx
    import onnxruntime as ort
    from tinyasr.decoding.transducer import Transducer, greedy
    from tinyasr_convert.transducer import decoder_joint

    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    results = {}
    for name in TRANSDUCERS:
        path = os.path.join(NEMO, name)
        z = np.load(os.path.join(path, "test_vectors.npz"))
        model_path = os.path.join(path, "decoder_joint-model.onnx")
        durations = tuple(int(d) for d in z["meta.tdt_durations"]) if "meta.tdt_durations" in z.files else ()
        blank, max_symbols = int(z["meta.blank_index"]), int(z["meta.max_symbols_per_step"])
        model = Transducer(*decoder_joint(onnx.load(model_path)), blank, durations)
        session = ort.InferenceSession(model_path, options, providers=["CPUExecutionProvider"])
        encoder_output, length = z["output.outputs"], int(z["output.encoded_lengths"][0])
        ours = greedy(model, encoder_output[0], length, max_symbols).tokens
        if ours != _ort_greedy(session, encoder_output, length, blank, max_symbols, durations):
            raise SystemExit(f"{name}: tinyasr and the onnxruntime loop decode different tokens")
        us = best_us({"tinyasr": lambda: greedy(model, encoder_output[0], length, max_symbols),
                      "ort": lambda: _ort_greedy(session, encoder_output, length, blank, max_symbols, durations)},
                     min_seconds)
        results[name] = (us["tinyasr"], us["ort"], len(ours), encoder_output.shape[2])
        print(f"{name}: tinyasr {us['tinyasr']:.0f} us, onnxruntime loop {us['ort']:.0f} us, "
              f"{us['ort'] / us['tinyasr']:.1f}x", flush=True)
    return results


def _pruned_networks(embedding, layers):
    """{dense, csr, bsr, empty: PredictionNetwork}: the layers' W and R pruned 90 % (unstructured for csr, 8 x 1
    blocks for bsr), given as the file decodes them; ``empty``: W and R with no block at all (the step without
    its products: the gates, a projection, the copies; dense / empty bounds what any sparse W and R can give)."""
    from tinyasr.decoding.transducer import LSTMLayer, PredictionNetwork
    from tinyasr.format.encodings.sparse import BSRMatrix, CSRMatrix, bsr_arrays
    from tinyasr_convert.sparsity import prune_recurrent

    def stored(matrix, kind):
        pruned = np.zeros_like(matrix) if kind == "empty" else prune_recurrent(matrix, 0.9,
                                                                                1 if kind == "csr" else BLOCK)
        if kind == "csr":
            return CSRMatrix(*csr_arrays(pruned), pruned.shape)
        return BSRMatrix(*bsr_arrays(pruned, (BLOCK, 1)), pruned.shape, (BLOCK, 1))

    networks = {"dense": PredictionNetwork(embedding, layers)}
    for kind in ("csr", "bsr", "empty"):
        networks[kind] = PredictionNetwork(embedding, [LSTMLayer(stored(layer.w, kind), stored(layer.r, kind),
                                                                 layer.bias, layer.projection) for layer in layers])
    return networks


def prediction_cases():
    """(name, embedding, layers): the shared NeMo transducers' prediction networks and NeMo's default size."""
    from tinyasr.decoding.transducer import LSTMLayer
    from tinyasr_convert.nemo import read_nemo
    from tinyasr_convert.transducer import nemo_prediction_and_joint

    for name in ("lstm_transducer_small", "conformer_transducer_small"):
        path = os.path.join(NEMO, name, "model.nemo")
        if os.path.exists(path):
            archive = read_nemo(path)
            prediction, _ = nemo_prediction_and_joint(archive.weights, archive.config, name)
            yield name, prediction.embedding, prediction.layers
    rng = np.random.default_rng(0)
    for hidden, count in ((8, 1), (640, 1), (640, 2)):  # H = 8: next to no arithmetic, the fixed cost of a step
        layers = [LSTMLayer(*(rng.standard_normal(shape).astype(np.float32) / np.float32(np.sqrt(hidden))
                              for shape in ((4 * hidden, hidden), (4 * hidden, hidden), (4 * hidden,))))
                  for _ in range(count)]
        yield f"H {hidden} x {count} layer(s), random", rng.standard_normal((1025, hidden)).astype(np.float32), layers


SEARCH_FRAMES, SEARCH_SYMBOLS = 20, 5  # the search below emits 5 tokens on each of 20 frames


def _emitting_search(network):
    """A function running greedy search over SEARCH_FRAMES frames with a joint that emits token 3 on every try:
    SEARCH_FRAMES x SEARCH_SYMBOLS prediction steps in the compiled loop (tinyasr/kernels/transducer.py), the
    joint (4 inputs, 8 classes) next to nothing."""
    from tinyasr.decoding.transducer import GreedySearch, Joint, Transducer

    classes = 8  # blank 7
    zeros = np.zeros
    out_b = zeros(classes, np.float32)
    out_b[3] = 1.0
    joint = Joint(zeros((4, 4), np.float32), zeros(4, np.float32), zeros((network.width, 4), np.float32),
                  zeros(4, np.float32), zeros((4, classes), np.float32), out_b)
    model = Transducer(network, joint, classes - 1)
    frames = zeros((SEARCH_FRAMES, 4), np.float32)
    return lambda: GreedySearch(model, SEARCH_SYMBOLS).advance(frames)


@njit
def _predict_calls(calls, token, embedding, table, floats, indices, pointers, h, c, pred_w, pred_b, projected):
    """``calls`` prediction-network steps of ``token`` in compiled code, as greedy search's loop makes them
    (its ``_predict``: every layer, then the joint's prediction projection) without the joint and the argmax."""
    pre, buffers, one = _prediction_scratch(embedding, table)
    for _ in range(calls):
        _predict(token, embedding, table, floats, indices, pointers, h, c, pre, one, buffers, pred_w, pred_b,
                 projected)


def _compiled_steps(network):
    """A function making COMPILED_CALLS steps of ``network`` through _predict_calls (a joint of 4 units)."""
    layers = network.layers
    h = np.zeros(sum(layer.width for layer in layers), np.float32)
    c = np.zeros(sum(layer.hidden for layer in layers), np.float32)
    joint = np.zeros((network.width, 4), np.float32), np.zeros(4, np.float32), np.empty(4, np.float32)
    packed = pack_layers(layers)
    return lambda: _predict_calls(COMPILED_CALLS, 7, network.embedding, *packed, h, c, *joint)


def measure_prediction(min_seconds):
    """[(name, hidden, layers, {dense, csr, bsr: us per step from Python}, {the same: us per step in compiled
    code}, {the same: us per token in the greedy search})]."""
    rows = []
    for name, embedding, layers in prediction_cases():
        networks = _pruned_networks(embedding, layers)
        states = {kind: network.initial_state() for kind, network in networks.items()}
        outputs = {kind: network.step(7, states[kind])[0] for kind, network in networks.items()}
        assert all(np.isfinite(o).all() for o in outputs.values())
        us = best_us({kind: (lambda n=network, s=states[kind]: n.step(7, s)) for kind, network in networks.items()},
                     min_seconds)
        searches = {kind: _emitting_search(network) for kind, network in networks.items()}
        assert all(len(search().tokens) == SEARCH_FRAMES * SEARCH_SYMBOLS for search in searches.values())
        in_search = {kind: v / (SEARCH_FRAMES * SEARCH_SYMBOLS) for kind, v in best_us(searches, min_seconds).items()}
        compiled = {kind: v / COMPILED_CALLS for kind, v in
                    best_us({kind: _compiled_steps(network) for kind, network in networks.items()},
                            min_seconds).items()}
        rows.append((name, layers[0].hidden, len(layers), us, compiled, in_search))
        print(f"{name}: " + "; ".join(
            f"{label} " + ", ".join(f"{k} {v:.2f} us" for k, v in figures.items())
            + f", dense/csr {figures['dense'] / figures['csr']:.2f}x"
            + f", dense/bsr {figures['dense'] / figures['bsr']:.2f}x"
            for label, figures in (("step", us), ("compiled", compiled), ("in the search", in_search))), flush=True)
    return rows


def write_prediction(seconds):
    rows = measure_prediction(seconds)
    lines = ["# Transducer prediction network, one step (B = 1), LSTM W and R 90 % pruned vs dense", "",
             f"{datetime.date.today()}, {cpu_model()}, 1 thread, best of repeats (machine shared: noisy).",
             "Produced by `python3 benchmarks/bench_recurrent.py --prediction`.  csr: unstructured pruning; "
             "bsr: 8 x 1 blocks, run as column blocks.  Microseconds per step.  \"from Python\": "
             "`PredictionNetwork.step` (what beam search calls: per layer a call of each kernel, ~2 us of Numba "
             "dispatch each); \"compiled\": the step as greedy search's compiled loop runs it (every layer and the "
             "joint's prediction projection, no Python); \"in search\": per emitted token of greedy search, the "
             "joint, its argmax and the token's confidence included.  \"W, R empty\": the network with no weight "
             "in W and R (what no sparsity removes: the gates, lstm_transducer_small's dense 128 -> 64 projection, "
             "the copies); \"bound\": dense / empty, the most any sparse W and R could give.", ""]
    for label, column in (("from Python", 3), ("compiled", 4), ("in search", 5)):
        lines += [f"{label}:", "", "| network | hidden | layers | dense us | csr us | dense / csr | bsr us | "
                  "dense / bsr | W, R empty us | bound |", "|---|---|---|---|---|---|---|---|---|---|"]
        for row in rows:
            name, hidden, count, us = row[0], row[1], row[2], row[column]
            lines.append(f"| {name} | {hidden} | {count} | {us['dense']:.2f} | {us['csr']:.2f} | "
                         f"{us['dense'] / us['csr']:.2f}x | {us['bsr']:.2f} | {us['dense'] / us['bsr']:.2f}x | "
                         f"{us['empty']:.2f} | {us['dense'] / us['empty']:.2f}x |")
        lines.append("")
    with open(PREDICTION_RESULTS, "w") as f:
        f.write("\n".join(lines).rstrip() + "\n")
    print(f"wrote {PREDICTION_RESULTS}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="shorter timing (noisier)")
    parser.add_argument("--prediction", action="store_true", help="the prediction network step only")
    args = parser.parse_args()
    seconds = 0.3 if args.quick else 1.5
    threads.set_num_threads(1)  # numpy's BLAS (the dense input projection) too
    print(cpu_model())
    if args.prediction:
        write_prediction(seconds)
        return
    rows = []
    for hidden in (256, 512, 1024):
        for call, frames, compiled in CALLS:
            us = measure(hidden, 0.9, seconds, frames, compiled)
            rows.append((hidden, call, us))
            print(f"H={hidden}, {call}: " + ", ".join(f"{k} {v:.1f} us" for k, v in us.items())
                  + f"; dense/csr {us['dense'] / us['csr']:.2f}x, dense/blocks {us['dense'] / us['blocks']:.2f}x",
                  flush=True)
    lines = ["# LSTM recurrent step, one frame, batch 1, R 90 % sparse (CSR; 8-row column blocks) vs dense",
             "", f"{datetime.date.today()}, {cpu_model()}, 1 thread, best of repeats (machine shared: noisy).",
             "Produced by `python3 benchmarks/bench_recurrent.py`.", "",
             "Microseconds per frame.  Calls: one frame a call from Python (beam search's batched step; Numba's "
             "dispatch of the kernel's 13 arguments, ~2 us, in every frame); one frame a call from compiled code "
             "(greedy search's loop, tinyasr/kernels/transducer.py); "
             f"{SEQUENCE_FRAMES} frames a call (the LSTM op over an encoder's sequence).  `no R`: the same step "
             "with an all-zero R (the call and the gates, what no sparsity removes); `bound`: dense / no R, the "
             "most any sparse R could give.", "",
             "| hidden | call | dense us | CSR us | dense / CSR | column blocks us | dense / blocks | no R us "
             "| bound |",
             "|---|---|---|---|---|---|---|---|---|"]
    for hidden, call, us in rows:
        lines.append(f"| {hidden} | {call} | {us['dense']:.1f} | {us['csr']:.1f} | {us['dense'] / us['csr']:.2f}x "
                     f"| {us['blocks']:.1f} | {us['dense'] / us['blocks']:.2f}x | {us['no R']:.1f} "
                     f"| {us['dense'] / us['no R']:.1f}x |")
    if os.path.isdir(NEMO):
        lines += ["", "Greedy transducer decoding of the test vector's encoder output (B = 1), same tokens:", "",
                  "| model | tokens / frames | tinyasr us | onnxruntime step loop us | ratio |", "|---|---|---|---|---|"]
        for name, (ours, theirs, tokens, frames) in measure_decoding(seconds).items():
            lines.append(f"| {name} | {tokens} / {frames} | {ours:.0f} | {theirs:.0f} | {theirs / ours:.1f}x |")
    os.makedirs(os.path.dirname(RESULTS), exist_ok=True)
    with open(RESULTS, "w") as f:
        f.write("\n".join(lines) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
