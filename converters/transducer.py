"""NeMo transducer exports -> the prediction network and joint that tinyasr/decoding/transducer.py runs.

NeMo's ``model.export()`` of a transducer writes two files; ``decoder_joint-*.onnx`` holds the prediction
network (``targets`` -> Gather on the embedding -> one ONNX LSTM per layer) and the joint (``encoder_outputs``
-> MatMul + Add (enc), prediction -> MatMul + Add (pred), Add, activation, MatMul + Add (out) -> ``outputs``).
Decoding never runs that graph: it needs the joint's encoder half once per frame and the prediction half once
per token, so this module reads the weights out of it by following the data path from the named inputs,
and refuses, naming the node, a graph of another shape.
"""

from __future__ import annotations

from typing import Dict, List, Tuple

import numpy as np

from tinyasr.decoding.transducer import Joint, LSTMLayer, PredictionNetwork
from tinyasr.errors import ConversionError

_PASS_THROUGH = ("Transpose", "Squeeze", "Unsqueeze", "Identity", "Cast", "Reshape")
_ACTIVATION_OPS = {"Relu": "relu", "Tanh": "tanh", "Sigmoid": "sigmoid"}


class _Graph:
    def __init__(self, model, where: str):
        from onnx import numpy_helper

        self.where = where
        self.tensors: Dict[str, np.ndarray] = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
        for node in model.graph.node:
            if node.op_type == "Constant":
                self.tensors[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
        self.nodes = [n for n in model.graph.node if n.op_type != "Constant"]
        self.consumers: Dict[str, List] = {}
        for node in self.nodes:
            for name in node.input:
                self.consumers.setdefault(name, []).append(node)

    def fail(self, node, message: str):
        raise ConversionError(f"{self.where}: node {node.name!r} ({node.op_type}): {message}")

    def follow(self, name: str):
        """The first node past pass-through ops (transposes, squeezes ...) that reads ``name``."""
        while True:
            readers = self.consumers.get(name, [])
            if len(readers) != 1:
                raise ConversionError(f"{self.where}: value {name!r} is read by {len(readers)} nodes; expected one "
                                      "(NeMo's decoder_joint layout)")
            node = readers[0]
            if node.op_type not in _PASS_THROUGH:
                return node
            name = node.output[0]

    def stored(self, node, position: int, what: str) -> np.ndarray:
        name = node.input[position] if position < len(node.input) else ""
        if name not in self.tensors:
            self.fail(node, f"its {what} is not a stored tensor")
        return self.tensors[name].astype(np.float32)

    def linear(self, matmul) -> Tuple[np.ndarray, np.ndarray, object]:
        """(W [in, out], bias [out], the node after the bias Add) of a MatMul + Add reading a stored W."""
        if matmul.op_type != "MatMul":
            self.fail(matmul, "expected a MatMul of the joint here")
        weight = self.stored(matmul, 1, "weight")
        add = self.follow(matmul.output[0])
        if add.op_type != "Add":
            self.fail(add, "expected the Add of the joint's bias")
        bias_name = next((x for x in add.input if x in self.tensors), None)
        if bias_name is None:
            self.fail(add, "its bias is not a stored tensor")
        return weight, self.tensors[bias_name].astype(np.float32), add


def decoder_joint(model, where: str = "decoder_joint") -> Tuple[PredictionNetwork, Joint]:
    """The prediction network and joint of NeMo's ``decoder_joint`` ONNX export (an onnx.ModelProto)."""
    graph = _Graph(model, where)
    inputs = {v.name for v in model.graph.input}
    for name in ("targets", "encoder_outputs"):
        if name not in inputs:
            raise ConversionError(f"{where}: no input {name!r}; inputs are {sorted(inputs)} (not a NeMo "
                                  "decoder_joint export)")
    gather = graph.follow("targets")
    if gather.op_type != "Gather":
        graph.fail(gather, "expected the Gather of the token embedding")
    embedding = graph.stored(gather, 0, "embedding table")
    node, layers = graph.follow(gather.output[0]), []
    while node.op_type == "LSTM":
        attrs = {a.name: a for a in node.attribute}
        if "direction" in attrs and attrs["direction"].s.decode() != "forward":
            graph.fail(node, "a prediction network LSTM must run forward")
        w, r = graph.stored(node, 1, "W")[0], graph.stored(node, 2, "R")[0]
        bias = graph.stored(node, 3, "B")[0] if len(node.input) > 3 and node.input[3] else np.zeros(
            2 * w.shape[0], np.float32)
        layers.append(LSTMLayer(w, r, bias[:w.shape[0]] + bias[w.shape[0]:]))
        node = graph.follow(node.output[0])
    if not layers:
        graph.fail(node, "expected the prediction network's LSTM")
    pred_w, pred_b, pred_add = graph.linear(node)
    enc_w, enc_b, enc_add = graph.linear(graph.follow("encoder_outputs"))
    join = graph.follow(enc_add.output[0])
    if join.op_type != "Add" or graph.follow(pred_add.output[0]) is not join:
        graph.fail(join, "expected the Add that joins the encoder and prediction projections")
    act = graph.follow(join.output[0])
    if act.op_type not in _ACTIVATION_OPS:
        graph.fail(act, f"the joint activation must be one of {', '.join(_ACTIVATION_OPS)}")
    out_w, out_b, _ = graph.linear(graph.follow(act.output[0]))
    activation = _ACTIVATION_OPS[act.op_type]
    return PredictionNetwork(embedding, layers), Joint(enc_w, enc_b, pred_w, pred_b, out_w, out_b, activation)


def torch_lstm_gates(weight: np.ndarray) -> np.ndarray:
    """torch's LSTM gate blocks (i, f, g, o) along axis 0 in ONNX order (i, o, f, c), as torch.onnx exports."""
    i, f, g, o = np.split(weight, 4)
    return np.concatenate([i, o, f, g])


def nemo_prediction_and_joint(weights: Dict[str, np.ndarray], config: Dict, where: str
                              ) -> Tuple[PredictionNetwork, Joint]:
    """The prediction network (RNNTDecoder: embedding + LSTM layers, with torch ``proj_size`` when
    rnn_hidden_size differs from pred_hidden) and joint (RNNTJoint) from a .nemo's state dict and config."""
    def tensor(name):
        if name not in weights:
            raise ConversionError(f"{where}: the checkpoint has no {name!r}")
        return weights[name].astype(np.float32)

    prefix = "decoder.prediction.dec_rnn.lstm."
    layers = []
    while f"{prefix}weight_ih_l{len(layers)}" in weights:
        n = len(layers)
        bias = tensor(f"{prefix}bias_ih_l{n}") + tensor(f"{prefix}bias_hh_l{n}")
        projection = weights.get(f"{prefix}weight_hr_l{n}")
        layers.append(LSTMLayer(torch_lstm_gates(tensor(f"{prefix}weight_ih_l{n}")),
                                torch_lstm_gates(tensor(f"{prefix}weight_hh_l{n}")), torch_lstm_gates(bias),
                                None if projection is None else projection.astype(np.float32)))
    if not layers:
        raise ConversionError(f"{where}: no prediction-network LSTM ({prefix}weight_ih_l0) in the checkpoint")
    activation = str((config.get("joint") or {}).get("jointnet", {}).get("activation", "relu")).lower()
    if activation not in _ACTIVATION_OPS.values():
        raise ConversionError(f"{where}: joint.jointnet.activation {activation!r} is not one of "
                              f"{', '.join(_ACTIVATION_OPS.values())}")
    joint = Joint(tensor("joint.enc.weight").T, tensor("joint.enc.bias"), tensor("joint.pred.weight").T,
                  tensor("joint.pred.bias"), tensor("joint.joint_net.2.weight").T, tensor("joint.joint_net.2.bias"),
                  activation)
    return PredictionNetwork(tensor("decoder.prediction.embed.weight"), layers), joint


def nemo_decoding_settings(cfg: Dict, where: str) -> Dict:
    """``max_symbols`` and TDT ``durations`` from a NeMo transducer config (``decoding``, ``model_defaults``)."""
    decoding = cfg.get("decoding") if isinstance(cfg.get("decoding"), dict) else {}
    greedy = decoding.get("greedy") if isinstance(decoding.get("greedy"), dict) else {}
    max_symbols = greedy.get("max_symbols", 10)
    if max_symbols is None:  # NeMo: no limit; a runtime needs one (a joint that never emits the blank)
        max_symbols = 10
    defaults = cfg.get("model_defaults") if isinstance(cfg.get("model_defaults"), dict) else {}
    durations = defaults.get("tdt_durations") or decoding.get("durations")
    if decoding.get("model_type") == "tdt" and not durations:
        raise ConversionError(f"{where}: decoding.model_type is 'tdt' but the config gives no durations "
                              "(model_defaults.tdt_durations)")
    extra = (cfg.get("joint") or {}).get("num_extra_outputs", 0) or 0
    if len(durations or ()) != extra:
        raise ConversionError(f"{where}: joint.num_extra_outputs={extra} but the config lists "
                              f"{len(durations or ())} TDT durations")
    settings = {"max_symbols": max_symbols}
    if durations:
        settings["durations"] = list(durations)
    return settings


def encode_prediction_weights(decoder: Dict, tensors: Dict[str, np.ndarray], sparse: str = "auto"
                              ) -> Tuple[Dict, Dict[str, str]]:
    """(the decoder tensors with the prediction network's pruned LSTM W and R stored csr / 8 x 1 bsr, {name: kind}):
    ``sparse`` as the converter's --sparse (tinyasr_convert.sparse_choice.encode_recurrent: "auto" asks the
    recurrent step's cost model; an unpruned R stays dense).  The runtime runs the step sparse from them."""
    from tinyasr_convert.sparse_choice import encode_recurrent

    names = [layer[key] for layer in decoder["prediction"]["layers"] for key in ("w", "r")]
    return encode_recurrent(tensors, list(dict.fromkeys(names)), sparse)


def decoder_entry(prediction: PredictionNetwork, joint: Joint, where: str, **settings
                  ) -> Tuple[Dict, Dict[str, np.ndarray]]:
    """(the manifest's ``transducer`` decoder entry, the tensors it names): the prediction network's and joint's
    weights stored under ``transducer.*`` names, the entry written from TransducerSpec (``settings``: its other
    keys) and checked as the runtime checks it, so a file the converter writes is one the Recognizer loads."""
    from tinyasr.decoding.specs import TransducerSpec
    from tinyasr.decoding.transducer_decoder import transducer_of
    from tinyasr.errors import TinyASRError

    tensors: Dict[str, np.ndarray] = {}

    def stored(name: str, array: np.ndarray) -> str:
        tensors[name] = np.ascontiguousarray(array, np.float32)
        return name

    layers = []
    for i, layer in enumerate(prediction.layers):
        parts = {"w": layer.w, "r": layer.r, "bias": layer.bias}
        if layer.projection is not None:
            parts["projection"] = layer.projection
        layers.append({key: stored(f"transducer.lstm{i}.{key}", value) for key, value in parts.items()})
    arrays = {"encoder_weight": joint.enc_w, "encoder_bias": joint.enc_b, "prediction_weight": joint.pred_w,
              "prediction_bias": joint.pred_b, "output_weight": joint.out_w, "output_bias": joint.out_b}
    joint_entry = {key: stored(f"transducer.joint.{key}", value) for key, value in arrays.items()}
    joint_entry["activation"] = joint.activation
    prediction_entry = {"embedding": stored("transducer.embedding", prediction.embedding), "layers": layers}
    try:
        spec = TransducerSpec(prediction=prediction_entry, joint=joint_entry, **settings)
        transducer_of(spec, tensors, None, where)
    except TinyASRError as exc:
        raise ConversionError(f"{where}: {getattr(exc, 'problem', exc)}") from None
    return spec.to_dict(), tensors
