"""One ONNX model to one .tasr file: import (onnx_import.py) -> passes (passes.py) -> structured compaction
(compaction.py) -> sparse encoding choice (sparse_choice.py) -> manifest + write (here)."""

from __future__ import annotations

import json
import os
import traceback
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

import numpy as np
from tinyasr_convert import compaction
from tinyasr_convert.control_flow import specialise
from tinyasr_convert.onnx_import import TARGET_OPSET, Imported, import_onnx, load_onnx
from tinyasr_convert.passes import fuse_after_compaction, optimize
from tinyasr_convert.sparse_choice import encode_weights
from tinyasr_convert.transducer import encode_prediction_weights

import tinyasr
from tinyasr.audio.resample import MAX_SAMPLE_RATE
from tinyasr.decoding.specs import DECODER_SPECS, CTCSpec, DecoderSpec, decoder_spec, vocabulary_type_of
from tinyasr.errors import ConversionError, GraphError, ModelFileError, TinyASRError
from tinyasr.format.graph import Graph, Node, ValueInfo
from tinyasr.ops import ENCODED_WEIGHT_INPUTS, MATRIX_WEIGHT_OPS

DECODER_TYPES = tuple(DECODER_SPECS)
_PASS_THROUGH = {"Split", "Transpose", "Reshape", "Squeeze", "Unsqueeze", "Identity", "Slice", "Cast"}


@dataclass(frozen=True)
class Conversion:
    """What a conversion produced, for the CLI summary."""

    path: Path
    nodes_before: int
    nodes_after: int
    parameters: int
    nbytes: int
    float16: bool
    encodings: Dict[str, str] = field(default_factory=dict)  # weight name -> csr / bsr, for weights stored sparse
    removed_channels: Dict[str, int] = field(default_factory=dict)  # Conv / FFN MatMul node -> channels compacted away

    def summary(self) -> str:
        storage = "float16" if self.float16 else "float32"
        lines = [
            f"wrote {self.path}: {self.nodes_before} -> {self.nodes_after} nodes, "
            f"{self.parameters:,} parameters ({storage} weights), {self.nbytes:,} bytes"
        ]
        lines += [f"  compacted {node}: {count} zero output channels removed"
                  for node, count in sorted(self.removed_channels.items())]
        lines += [f"  sparse {name}: {kind}" for name, kind in sorted(self.encodings.items())]
        return "\n".join(lines)


def convert(src, out, **options) -> Path:
    """Convert an ONNX model (path or onnx.ModelProto) to a .tasr file; returns its path.  Options: see convert_model."""
    return convert_model(src, out, **options).path


def convert_model(
    src,
    out,
    *,
    labels: Optional[Sequence[str]] = None,
    blank: Optional[int] = None,
    decoder: Union[str, Dict[str, Any], None] = None,
    frontend: Optional[Dict[str, Any]] = None,
    float16: bool = False,
    sparse: str = "auto",
    compact: bool = True,
    streaming: Optional[Dict[str, Any]] = None,
    input_names: Optional[Sequence[str]] = None,
    output_names: Optional[Sequence[str]] = None,
    source_format: str = "onnx",
    source_name: Optional[str] = None,
    sample_rate: Optional[int] = None,
    decoder_tensors: Optional[Dict[str, np.ndarray]] = None,
    input_shapes: Optional[Dict[str, Sequence[int]]] = None,
) -> Conversion:
    """Convert and write; returns a `Conversion` with the figures the CLI prints.

    labels / decoder / frontend given here win over the model's metadata_props
    (keys "labels" (JSON list), "decoder", "frontend" (JSON objects), "blank").
    decoder is a type name from DECODER_TYPES or a full decoder dict (docs/design.md).
    input_names / output_names rename the graph's inputs / outputs in order.
    sparse ("auto", "dense", "csr", "bsr") chooses how 1x1-conv and linear weights with zeros are stored, and
    LSTM / GRU R and a transducer prediction network's LSTM W / R:
    "auto" asks the measured cost model in converters/sparse_choice.py, per weight.  compact removes
    Conv output channels and feed-forward (MatMul -> activation -> MatMul) hidden units that structured pruning
    zeroed (converters/compaction.py); outputs are unchanged.
    streaming: fixed feature statistics for streaming a model that normalises per utterance,
    ``{"feature_mean": [...], "feature_std": [...]}`` (tinyasr.features.streaming.estimate_feature_stats on
    training audio); also read from the model's "streaming" metadata.
    sample_rate: for a graph on raw audio (no front end), the rate in Hz audio is resampled to.
    input_shapes: static shapes for graph inputs, ``{"input": (1, 576)}``, for a graph whose ``If`` nodes test
    shapes (Silero VAD's opset-15 export): the Ifs they decide are inlined (converters/control_flow.py).
    labels for a graph with several one-class outputs of one shape (MarbleNet VAD: score_silence,
    score_active) name them in output order; a Concat joins them into one output ``scores`` the decoder reads.
    decoder_tensors: tensors no graph node reads that the decoder entry names (a transducer's prediction
    network and joint, tinyasr_convert.transducer.decoder_entry), stored as given.
    float16 stores Conv / MatMul / Gemm weights as float16 (the runtime upcasts them at load); measured
    max abs error on the NeMo exports' outputs: 3e-4 (MatchboxNet, MarbleNet logits) to 3.1e-3 (QuartzNet 15x5 log-probs).
    """
    model, name, sha256 = load_onnx(src)
    try:
        return _converted(model, name, sha256, out, source_name, labels, blank, decoder, frontend, float16, sparse,
                          compact, streaming, input_names, output_names, source_format, sample_rate,
                          decoder_tensors or {}, input_shapes or {})
    except GraphError as exc:  # the converted graph does not hold together (e.g. a node reading a value never made)
        raise ConversionError(f"{source_name or name}: the converted graph is inconsistent: {exc}") from None
    except (ValueError, TypeError, IndexError, KeyError, AttributeError, OverflowError, ZeroDivisionError,
            RecursionError, MemoryError) as exc:  # the ONNX file is untrusted: whatever slipped past check_proto
        raise ConversionError(f"{source_name or name}: the model cannot be converted, it is malformed "
                              f"({type(exc).__name__} in {_innermost(exc)}: {str(exc)[:160]})") from None


def _converted(model, name, sha256, out, source_name, labels, blank, decoder, frontend, float16, sparse, compact,
               streaming, input_names, output_names, source_format, sample_rate, decoder_tensors,
               input_shapes) -> Conversion:
    """convert_model's work on a loaded ModelProto (see there)."""
    from tinyasr.format.container import to_float16, write_model

    model = specialise(model, sample_rate, source_name or name, input_shapes)  # Ifs on the rate or shapes (Silero)
    imported = import_onnx(model, source_name or name)
    converted = optimize(imported)
    nodes_before = len(model.graph.node)
    converted = _renamed_io(converted, input_names, output_names)
    removed: Dict[str, int] = {}
    if compact:
        graph, compacted, removed = compaction.compact(converted.graph, converted.tensors)
        converted = Imported(graph, compacted, converted.shapes, converted.dtypes, converted.metadata)
    converted = fuse_after_compaction(converted)
    meta = converted.metadata
    labels = list(labels) if labels is not None else _meta_json(meta, "labels", list)
    blank = blank if blank is not None else _meta_json(meta, "blank", int)
    decoder = decoder if decoder is not None else _meta_json(meta, "decoder", (dict, str))
    frontend = frontend if frontend is not None else _meta_json(meta, "frontend", dict)
    streaming = streaming if streaming is not None else _meta_json(meta, "streaming", dict)
    if labels is not None and not isinstance(decoder, dict):
        converted = replace(converted, graph=_joined_one_class_outputs(converted.graph, len(labels)))
    manifest = {
        "opset": TARGET_OPSET,  # import_onnx brought every op to it
        "graph": converted.graph.to_dict(),
        "frontend": frontend,
        "decoder": _decoder(converted.graph, decoder, labels, blank),
        "provenance": {
            "source": source_name or name,
            "source_sha256": sha256,
            "converter": f"tinyasr {tinyasr.__version__}",
            "source_format": source_format,
            "float16_weights": bool(float16),
        },
    }
    if streaming is not None:
        manifest["streaming"] = _streaming_stats(streaming, frontend)
    if sample_rate is not None:
        manifest["sample_rate"] = _raw_audio_rate(sample_rate, frontend)
    tensors, encodings = encode_weights(converted.graph, converted.tensors, sparse,
                                        value_dtype="float16" if float16 else "float32")
    if float16:
        for tname in _weight_names(converted.graph, tensors):
            tensors[tname] = to_float16(tensors[tname], tname)
    converted.graph.validate(tensors.keys())
    clash = sorted(set(tensors) & set(decoder_tensors))
    if clash:
        raise ConversionError(f"tensor names {clash[:3]} are used by both the graph and the decoder")
    if decoder_tensors:
        _check_transducer_fits(converted.graph, manifest["decoder"], decoder_tensors)
        decoder_tensors, recurrent_kinds = encode_prediction_weights(manifest["decoder"], decoder_tensors, sparse)
        encodings.update(recurrent_kinds)
    tensors.update(decoder_tensors)
    out = Path(out)
    write_model(out, manifest, tensors)
    parameters = sum(int(np.asarray(t).size) for t in converted.tensors.values() if np.asarray(t).dtype.kind == "f")
    return Conversion(out, nodes_before, len(converted.graph.nodes), parameters, os.path.getsize(out), bool(float16),
                      encodings, dict(removed))


# ---------------------------------------------------------------------------------------------------------------------


def _streaming_stats(stats, frontend) -> Dict[str, List[float]]:
    """Checked streaming statistics: one finite mean and one positive std per feature of the front end."""
    try:
        mean = [float(v) for v in stats["feature_mean"]]
        std = [float(v) for v in stats["feature_std"]]
    except (KeyError, TypeError, ValueError) as exc:
        raise ConversionError(f"streaming statistics need numeric lists 'feature_mean' and 'feature_std' ({exc})") from None
    features = (frontend or {}).get("n_mfcc") or (frontend or {}).get("n_mels")
    if len(mean) != len(std) or (features and len(mean) != features):
        raise ConversionError(f"streaming statistics have {len(mean)} means and {len(std)} stds; "
                              f"the front end has {features} features")
    if not (np.isfinite(mean).all() and np.isfinite(std).all() and min(std, default=1.0) > 0):
        raise ConversionError("streaming statistics must be finite, with every std > 0")
    return {"feature_mean": mean, "feature_std": std}


def _raw_audio_rate(rate, frontend) -> int:
    """A checked rate for a graph on raw audio; a model with a front end has the front end's rate."""
    if frontend:
        raise ConversionError(f"a sample rate ({rate} Hz) was given for a model with a front end, whose "
                              f"sample_rate ({frontend.get('sample_rate')}) is the one audio is resampled to")
    if isinstance(rate, bool) or not isinstance(rate, int) or not 0 < rate <= MAX_SAMPLE_RATE:
        raise ConversionError(f"sample rate must be an integer from 1 to {MAX_SAMPLE_RATE} Hz, got {rate!r}")
    return rate


def _joined_one_class_outputs(graph: Graph, labels: int) -> Graph:
    """With one label per output for a graph whose float outputs all have one class and the same shape,
    the graph plus a Concat of them on the class axis as output ``scores``; otherwise the graph as it is."""
    parts = [v for v in graph.outputs if np.dtype(v.dtype).kind == "f" and len(v.shape) >= 2]
    if labels < 2 or len(parts) != labels or any(v.shape[-1] != 1 or v.shape != parts[0].shape for v in parts):
        return graph
    name = "scores"
    while name in {v.name for v in graph.outputs} | {o for n in graph.nodes for o in n.outputs}:
        name = "_" + name
    joined = ValueInfo(name, parts[0].dtype, tuple(parts[0].shape[:-1]) + (labels,))
    node = Node(f"{name}_concat", "Concat", tuple(v.name for v in parts), (name,), {"axis": -1})
    return Graph(graph.inputs, [joined] + list(graph.outputs), list(graph.nodes) + [node])


def _innermost(exc: BaseException) -> str:
    """``function (file:line)`` where ``exc`` was raised, for a message the next engineer can act on."""
    frame = traceback.extract_tb(exc.__traceback__)[-1]
    return f"{frame.name} ({os.path.basename(frame.filename)}:{frame.lineno})"


def _meta_json(meta: Dict[str, str], key: str, kinds):
    if key not in meta:
        return None
    try:
        value = json.loads(meta[key])
    except json.JSONDecodeError:
        value = meta[key]  # a bare decoder type name
    if not isinstance(value, kinds):
        raise ConversionError(f"model metadata {key!r} must be JSON of type {kinds}, got {meta[key][:80]!r}")
    return value


def _decoder(graph: Graph, decoder, labels, blank) -> Optional[Dict[str, Any]]:
    """The manifest's decoder entry, written from its spec (tinyasr.decoding.specs) so that the runtime reads back
    exactly what was checked here; the class count must fit the output's last dim when that is static."""
    if isinstance(decoder, dict):
        try:
            spec = decoder_spec(decoder, "decoder")
        except ModelFileError as exc:
            raise ConversionError(exc.problem) from None
        _check_decoder_fits(graph, spec)
        return spec.to_dict()
    if decoder is None and labels is None:
        if blank is not None:
            raise ConversionError(f"a CTC blank index ({blank}) was given without labels; give the vocabulary too "
                                  "(--labels FILE)")
        return None
    output = graph.outputs[0]
    if decoder is None:
        decoder = "classification" if len(output.shape) == 2 else "ctc"
    if decoder not in DECODER_TYPES:
        raise ConversionError(f"decoder {decoder!r} is not one of {', '.join(DECODER_TYPES)}")
    if labels is None:
        raise ConversionError(f"decoder {decoder!r} needs labels (--labels FILE or the model's 'labels' metadata)")
    if not all(isinstance(x, str) for x in labels):
        raise ConversionError("labels must be a list of strings")
    classes = output.shape[-1] if output.shape else None
    logits = _logits_kind(graph, output.name)
    if decoder != "ctc":
        if isinstance(classes, int) and classes != len(labels):
            raise ConversionError(f"{len(labels)} labels given but output {output.name!r} has {classes} classes")
        return _built(DECODER_SPECS[decoder], output=output.name, labels=list(labels), logits=logits).to_dict()
    vocabulary = list(labels)
    if blank is None:
        blank = len(vocabulary)  # NeMo's convention: the blank is the last logit, not in the label list
    if isinstance(classes, int) and classes not in (len(vocabulary), len(vocabulary) + 1):
        raise ConversionError(
            f"{len(vocabulary)} labels given but CTC output {output.name!r} has {classes} classes "
            "(expected the labels plus one blank)"
        )
    if isinstance(classes, int) and not 0 <= blank < classes:
        raise ConversionError(f"blank index {blank} is outside the {classes} classes of output {output.name!r}")
    return _built(CTCSpec, output=output.name, blank=int(blank), vocabulary=vocabulary,
                  vocabulary_type=vocabulary_type_of(vocabulary), logits=logits).to_dict()


def _built(spec_class, **settings) -> DecoderSpec:
    """A decoder spec from the converter's own settings; a value the spec refuses is a ConversionError."""
    try:
        return spec_class(**settings)
    except TinyASRError as exc:
        raise ConversionError(str(exc)) from None


def _check_decoder_fits(graph: Graph, spec: DecoderSpec) -> None:
    """A given decoder entry (e.g. from a NeMo config) must name a graph output whose class count fits its labels."""
    try:
        output = spec.output_of(graph.outputs, "decoder")
    except ModelFileError as exc:
        raise ConversionError(f"{exc.problem}: is the config or decoder for another model?") from None
    classes = output.shape[-1] if output.shape else None
    if isinstance(classes, int) and not spec.fits(classes):
        raise ConversionError(f"the decoder lists {len(spec.classes)} labels but output {output.name!r} has {classes} "
                              "classes: is the config or decoder for another model?")


def _check_transducer_fits(graph: Graph, decoder: Dict[str, Any], tensors: Dict[str, np.ndarray]) -> None:
    """A transducer's prediction network and joint (from another file: the decoder_joint export) must fit the
    encoder graph: checked as the Recognizer will check them, against the encoder output's feature size."""
    from tinyasr.decoding.transducer_decoder import transducer_of

    try:
        spec = decoder_spec(decoder, "decoder")
        encoder = spec.output_of(graph.outputs, "decoder")
        if len(encoder.shape) != 3:
            raise ConversionError(f"the transducer reads output {encoder.name!r} of shape {list(encoder.shape)}; "
                                  "expected the encoder's [batch, features, frames]")
        transducer_of(spec, tensors, encoder.shape[1], "decoder")
    except ModelFileError as exc:
        raise ConversionError(f"{exc.problem}: are the encoder and the decoder from one model?") from None


def _logits_kind(graph: Graph, name: str) -> str:
    """"log_probs" / "probs" / "logits": what the op that (through pure reshaping ops) produced `name` computes."""
    producers = {o: n for n in graph.nodes for o in n.outputs}
    node = producers.get(name)
    while node is not None and node.op in _PASS_THROUGH:
        node = producers.get(node.inputs[0])
    if node is not None and node.op == "Concat":  # one-class outputs joined (_joined_one_class_outputs)
        kinds = {_logits_kind(graph, part) for part in node.inputs}
        return kinds.pop() if len(kinds) == 1 else "logits"
    if node is not None and node.op == "LogSoftmax":
        return "log_probs"
    if node is not None and node.op == "Softmax":
        return "probs"
    return "logits"


def _weight_names(graph: Graph, tensors) -> List[str]:
    """Stored float32 tensors that are the weight operand of a MATRIX_WEIGHT_OPS node (what float16 storage halves):
    the inputs where the runtime accepts an encoded tensor."""
    names = []
    for node in graph.nodes:
        if node.op not in MATRIX_WEIGHT_OPS:
            continue
        for i in ENCODED_WEIGHT_INPUTS.get(node.op, ()):
            name = node.inputs[i] if len(node.inputs) > i else ""
            t = tensors.get(name)
            if isinstance(t, np.ndarray) and t.dtype == np.float32 and t.ndim >= 2 and name not in names:
                names.append(name)
    return names


def _renamed_io(model: Imported, input_names, output_names) -> Imported:
    """Rename graph inputs / outputs (in order) everywhere they appear."""
    rename: Dict[str, str] = {}
    for given, values, what in ((input_names, model.graph.inputs, "inputs"), (output_names, model.graph.outputs, "outputs")):
        if given is None:
            continue
        if len(given) != len(values):
            raise ConversionError(f"{len(given)} {what[:-1]} names given for the model's {len(values)} {what}: "
                                  f"{[v.name for v in values]}")
        rename.update({v.name: n for v, n in zip(values, given) if v.name != n})
    if not rename:
        return model
    clash = set(rename.values()) & set(model.tensors)
    if clash:
        raise ConversionError(f"new input/output names {sorted(clash)} are already names of stored tensors")

    def value(v: ValueInfo) -> ValueInfo:
        return replace(v, name=rename.get(v.name, v.name))

    nodes = [Node(n.name, n.op, tuple(rename.get(x, x) for x in n.inputs), tuple(rename.get(x, x) for x in n.outputs), n.attrs)
             for n in model.graph.nodes]
    graph = Graph([value(v) for v in model.graph.inputs], [value(v) for v in model.graph.outputs], nodes)
    return Imported(graph, model.tensors, model.shapes, model.dtypes, model.metadata)
