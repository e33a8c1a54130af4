"""Transducer end to end (encoder + greedy decoding) from one .tasr against onnxruntime on NeMo's two-file export,
in one process, 1 thread.

    python -m benchmarks.bench_transducer [--runs 5] [--seconds 10] [--write]

Models: the shared random-weight transducers with an ONNX pair (../shared/models/nemo-random:
conformer_transducer_small, fastconformer_tdt_small, fastconformer_hybrid_small), converted by
``tinyasr convert encoder-model.onnx --decoder-joint decoder_joint-model.onnx --config model_config.yaml``.
Input: ``--seconds`` of real speech from ../shared/audio through tinyasr's NeMo front end (the same features to
both sides).  tinyasr: ``Recognizer.transcribe_features`` (encoder graph, then GreedySearch with the joint's
encoder half computed once per frame and the prediction network once per token).  onnxruntime: the encoder
session, then NeMo's greedy loop over the decoder_joint session, one call per (frame, try), as NeMo's
ONNXGreedyBatchedRNNTInfer decodes its own exports (TDT: token and duration argmax per call, NeMo's rules).
Both must give the same tokens (checked).  Alternating runs, median; "decode" columns time the greedy part
alone on the encoder output.  Ratio = onnxruntime time / tinyasr time (> 1: tinyasr faster).

sherpa-onnx (audio -> text, ``OfflineRecognizer.from_transducer(model_type="nemo_transducer")``, greedy, 1
thread): its NeMo transducer loader wants three files, so :func:`sherpa_files` writes them from the same export:
the encoder with the metadata sherpa reads, and decoder / joiner graphs holding the decoder_joint's weights
(the prediction LSTM step; the joint), tokens.txt with ``<blk>`` last.  RNN-T models only: sherpa-onnx 2.0.1
refuses this TDT joint (134 outputs for a 129-token vocabulary) through that loader.  Its front end is its own
(kaldi-style fbank, NeMo normalisation), so token ids may differ; the work per frame is the same.  Ratio =
sherpa-onnx time / tinyasr time.  The machine may be shared: ratios are taken in one process.  ``--write``
stores the tables in benchmarks/results/transducer.md.
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import tempfile
from pathlib import Path

for variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(variable, "1")

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from _paths import SHARED_DIR  # noqa: E402
from benchmarks.bench_dense import median_seconds  # noqa: E402
from benchmarks.bench_sherpa import speech  # noqa: E402
from benchmarks.machine import cpu_model  # noqa: E402

NEMO = SHARED_DIR / "models" / "nemo-random"
MODELS = ["conformer_transducer_small", "fastconformer_tdt_small", "fastconformer_hybrid_small"]
RESULTS = ROOT / "benchmarks" / "results" / "transducer.md"


def convert(name: str, folder: Path) -> Path:
    from tinyasr.cli.main import main

    out = folder / f"{name}.tasr"
    code = main(["convert", str(NEMO / name / "encoder-model.onnx"), "-o", str(out), "--decoder-joint",
                 str(NEMO / name / "decoder_joint-model.onnx"), "--config", str(NEMO / name / "model_config.yaml")])
    if code:
        raise SystemExit(f"conversion of {name} failed")
    return out


class OnnxTransducer:
    """NeMo's two ONNX files run by onnxruntime, decoded by NeMo's greedy rules, one decoder_joint call per try."""

    def __init__(self, name: str, blank: int, durations, max_symbols: int):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = options.inter_op_num_threads = 1
        self.encoder = ort.InferenceSession(str(NEMO / name / "encoder-model.onnx"), options,
                                            providers=["CPUExecutionProvider"])
        self.decoder = ort.InferenceSession(str(NEMO / name / "decoder_joint-model.onnx"), options,
                                            providers=["CPUExecutionProvider"])
        shapes = {i.name: i.shape for i in self.decoder.get_inputs()}
        self.state_shapes = [(shapes[k][0], 1, shapes[k][2]) for k in ("input_states_1", "input_states_2")]
        self.blank, self.durations, self.max_symbols = blank, list(durations or ()), max_symbols

    def encode(self, features: np.ndarray):
        outputs, lengths = self.encoder.run(None, {"audio_signal": features[np.newaxis],
                                                   "length": np.array([features.shape[1]], np.int64)})
        return outputs, int(lengths[0])

    def _step(self, frame, token, states):
        outputs, _, h, c = self.decoder.run(None, {
            "encoder_outputs": frame, "targets": np.array([[token]], np.int32),
            "target_length": np.array([1], np.int32), "input_states_1": states[0], "input_states_2": states[1]})
        return outputs.reshape(-1), (h, c)

    def greedy(self, encoded: np.ndarray, length: int):
        states = tuple(np.zeros(s, np.float32) for s in self.state_shapes)
        last, tokens, t, classes = self.blank, [], 0, self.blank + 1
        while t < length:
            frame = encoded[:, :, t:t + 1]
            for tries in range(1, self.max_symbols + 1):
                logits, new_states = self._step(frame, last, states)
                token = int(np.argmax(logits[:classes]))
                duration = self.durations[int(np.argmax(logits[classes:]))] if self.durations else int(
                    token == self.blank)
                if token != self.blank:
                    tokens.append(token)
                    last, states = token, new_states
                if duration:
                    t += duration + (1 if self.durations and tries == self.max_symbols else 0)
                    break
            else:
                t += 1
        return tokens


def sherpa_files(name: str, folder: Path) -> Path:
    """encoder.onnx (NeMo's, with sherpa's metadata), decoder.onnx, joiner.onnx and tokens.txt for sherpa-onnx's
    nemo_transducer loader, from the model's ONNX pair (one prediction LSTM layer, as all shared models have)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    from tinyasr_convert.nemo import load_config, vocabulary_from_config
    from tinyasr_convert.nemo_blocks import subsampling_factor
    from tinyasr_convert.transducer import decoder_joint

    folder.mkdir(parents=True, exist_ok=True)
    config = load_config(NEMO / name / "model_config.yaml")
    vocabulary = vocabulary_from_config(config)
    prediction, joint = decoder_joint(onnx.load(str(NEMO / name / "decoder_joint-model.onnx")))
    (layer,) = prediction.layers
    hidden = layer.hidden
    encoder = onnx.load(str(NEMO / name / "encoder-model.onnx"))
    for key, value in {"vocab_size": len(vocabulary), "subsampling_factor": subsampling_factor(config["encoder"]),
                       "normalize_type": "per_feature", "pred_rnn_layers": 1, "pred_hidden": hidden}.items():
        encoder.metadata_props.add(key=key, value=str(value))
    onnx.save(encoder, str(folder / "encoder.onnx"))

    def save(graph_name, nodes, inputs, outputs, arrays):
        initializers = [numpy_helper.from_array(np.asarray(a, np.float32 if a.dtype.kind == "f" else a.dtype), n)
                        for n, a in arrays.items()]
        graph = helper.make_graph(nodes, graph_name, [helper.make_tensor_value_info(*i) for i in inputs],
                                  [helper.make_tensor_value_info(*o) for o in outputs], initializers)
        onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8),
                  str(folder / f"{graph_name}.onnx"))

    float32, states = TensorProto.FLOAT, [1, "B", hidden]
    save("decoder", [
        helper.make_node("Cast", ["targets"], ["ids"], to=TensorProto.INT64),
        helper.make_node("Gather", ["embedding", "ids"], ["x"]),
        helper.make_node("Transpose", ["x"], ["steps"], perm=[1, 0, 2]),
        helper.make_node("LSTM", ["steps", "W", "R", "B", "", "states.1", "states.2"], ["y", "h", "c"],
                         hidden_size=hidden),
        helper.make_node("Reshape", ["y", "shape"], ["decoder_output"]),
        helper.make_node("Identity", ["target_length"], ["decoder_output_length"]),
        helper.make_node("Identity", ["h"], ["next_states.1"]), helper.make_node("Identity", ["c"], ["next_states.2"])],
        [("targets", TensorProto.INT32, [1, 1]), ("target_length", TensorProto.INT32, [1]),
         ("states.1", float32, states), ("states.2", float32, states)],
        [("decoder_output", float32, [1, hidden, 1]), ("decoder_output_length", TensorProto.INT32, [1]),
         ("next_states.1", float32, states), ("next_states.2", float32, states)],
        {"embedding": prediction.embedding, "W": layer.w[None], "R": layer.r[None],
         "B": np.concatenate([layer.bias, np.zeros_like(layer.bias)])[None], "shape": np.array([1, -1, 1], np.int64)})
    save("joiner", [
        helper.make_node("Transpose", ["encoder_output"], ["e"], perm=[0, 2, 1]),
        helper.make_node("Transpose", ["decoder_output"], ["d"], perm=[0, 2, 1]),
        helper.make_node("MatMul", ["e", "enc_w"], ["e1"]), helper.make_node("Add", ["e1", "enc_b"], ["e2"]),
        helper.make_node("MatMul", ["d", "pred_w"], ["d1"]), helper.make_node("Add", ["d1", "pred_b"], ["d2"]),
        helper.make_node("Add", ["e2", "d2"], ["s"]), helper.make_node("Relu", ["s"], ["r"]),
        helper.make_node("MatMul", ["r", "out_w"], ["o"]), helper.make_node("Add", ["o", "out_b"], ["logit"])],
        [("encoder_output", float32, [1, joint.enc_w.shape[0], 1]), ("decoder_output", float32, [1, hidden, 1])],
        [("logit", float32, [1, 1, joint.outputs])],
        {"enc_w": joint.enc_w, "enc_b": joint.enc_b, "pred_w": joint.pred_w, "pred_b": joint.pred_b,
         "out_w": joint.out_w, "out_b": joint.out_b})
    (folder / "tokens.txt").write_text("".join(f"{t} {i}\n" for i, t in enumerate(vocabulary))
                                       + f"<blk> {len(vocabulary)}\n", encoding="utf-8")
    return folder


def sherpa_transcribe(recognizer, samples: np.ndarray) -> str:
    stream = recognizer.create_stream()
    stream.accept_waveform(16000, samples)
    recognizer.decode_stream(stream)
    return stream.result.text


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args(argv)

    from tinyasr.features.frontend import compute_features
    from tinyasr.pipeline.recognizer import Recognizer

    samples = speech(args.seconds)
    rows, sherpa_rows = [], []
    with tempfile.TemporaryDirectory() as folder:
        for name in MODELS:
            recognizer = Recognizer(convert(name, Path(folder)), num_threads=1)
            spec = recognizer.decoder
            if not spec.durations:
                import sherpa_onnx

                files = sherpa_files(name, Path(folder) / name)
                theirs = sherpa_onnx.OfflineRecognizer.from_transducer(
                    *(str(files / f) for f in ("encoder.onnx", "decoder.onnx", "joiner.onnx", "tokens.txt")),
                    num_threads=1, feature_dim=80, decoding_method="greedy_search", model_type="nemo_transducer")
                sherpa_transcribe(theirs, samples)
                times = median_seconds(lambda: recognizer.transcribe(samples, sample_rate=16000),
                                       lambda: sherpa_transcribe(theirs, samples), runs=args.runs)
                sherpa_rows.append((name, *times))
                print(f"{name}: audio -> text tinyasr {times[0] * 1e3:.1f} ms, sherpa-onnx {sherpa_onnx.__version__} "
                      f"{times[1] * 1e3:.1f} ms (x{times[1] / times[0]:.2f})", flush=True)
            features, _ = compute_features(samples, recognizer.frontend)
            reference = OnnxTransducer(name, spec.blank, spec.durations, spec.max_symbols)
            encoded, length = reference.encode(features)
            ours = [t.id for t in recognizer.transcribe_features(features).tokens]
            theirs = reference.greedy(encoded, length)
            if ours != theirs:
                raise SystemExit(f"{name}: tinyasr and onnxruntime disagree on the tokens")

            def tinyasr_decode():
                from tinyasr.decoding.transducer_decoder import transducer_result
                transducer_result(recognizer._transducer, spec, encoded[0], length, frame_seconds=0.04,
                                  duration=args.seconds)

            end_to_end = median_seconds(lambda: recognizer.transcribe_features(features),
                                        lambda: reference.greedy(*reference.encode(features)), runs=args.runs)
            decode = median_seconds(tinyasr_decode, lambda: reference.greedy(encoded, length), runs=args.runs)
            rows.append((name, length, len(ours), *end_to_end, *decode))
            print(f"{name}: {length} frames, {len(ours)} tokens: end to end tinyasr {end_to_end[0] * 1e3:.1f} ms, "
                  f"onnxruntime {end_to_end[1] * 1e3:.1f} ms (x{end_to_end[1] / end_to_end[0]:.2f}); decode "
                  f"{decode[0] * 1e3:.1f} / {decode[1] * 1e3:.1f} ms (x{decode[1] / decode[0]:.2f})", flush=True)
    table = [f"# Transducer end to end: tinyasr vs onnxruntime ({datetime.date.today()}, {cpu_model()}, 1 thread)",
             "", f"{args.seconds:g} s of speech, median of {args.runs} alternating runs; "
             "`python -m benchmarks.bench_transducer --write`.", "",
             "| model | encoder frames | tokens | tinyasr ms | onnxruntime ms | ratio | decode tinyasr ms | "
             "decode onnxruntime ms | decode ratio |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, frames, tokens, ours, theirs, ours_d, theirs_d in rows:
        table.append(f"| {name} | {frames} | {tokens} | {ours * 1e3:.1f} | {theirs * 1e3:.1f} | {theirs / ours:.2f} "
                     f"| {ours_d * 1e3:.1f} | {theirs_d * 1e3:.1f} | {theirs_d / ours_d:.2f} |")
    table += ["", f"Audio -> text against sherpa-onnx (greedy, 1 thread; RNN-T models), {args.seconds:g} s of speech:", "",
              "| model | tinyasr ms | sherpa-onnx ms | sherpa-onnx / tinyasr |", "|---|---:|---:|---:|"]
    table += [f"| {name} | {ours * 1e3:.1f} | {theirs * 1e3:.1f} | {theirs / ours:.2f} |"
              for name, ours, theirs in sherpa_rows]
    print("\n".join(table))
    if args.write:
        RESULTS.write_text("\n".join(table) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
