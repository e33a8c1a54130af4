"""Hugging Face CTC models (``Wav2Vec2ForCTC``, ``HubertForCTC`` and look-alikes) exported to ONNX.

The ONNX graph alone lacks what decoding needs, and the model folder holds it: ``config.json`` (the blank is
``pad_token_id``, the conv strides give the frame time), ``vocab.json`` (token -> id), ``tokenizer_config.json``
(the word delimiter, "|", becomes a space) and ``preprocessor_config.json`` (the sample rate, and
``do_normalize``: the feature extractor scales each utterance to zero mean and unit variance before the
network, outside the export).  ``tinyasr convert model.onnx --config FOLDER`` (or the config.json in it) reads
them; normalisation is prepended to the graph, over the valid samples only when the graph takes an
``attention_mask`` (as the feature extractor does for a padded batch), so a padded batch and the Recognizer's
single utterance both get what the model was trained on.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Dict, Optional

import onnx
from onnx import TensorProto, helper

from tinyasr.decoding.specs import CTCSpec
from tinyasr.errors import ConversionError, TinyASRError

MASK_INPUT = "attention_mask"  # the name transformers gives the sample mask
NORMALIZE_EPSILON = 1e-7  # Wav2Vec2FeatureExtractor.zero_mean_unit_var_norm


def is_huggingface_config(path) -> bool:
    """Whether ``--config`` names a Hugging Face model folder or its config.json (a ``model_type`` key)."""
    path = Path(path)
    config = path / "config.json" if path.is_dir() else path
    if config.suffix.lower() != ".json" or not config.is_file():
        return False
    try:
        return "model_type" in read_json_object(config)
    except ConversionError:
        return False


def settings_from_config(path) -> Dict[str, Any]:
    """``{"decoder", "sample_rate", "normalize"}`` for the model whose folder (or config.json) is ``path``."""
    folder = Path(path) if Path(path).is_dir() else Path(path).parent
    config = read_json_object(folder / "config.json")
    tokenizer = (read_json_object(folder / "tokenizer_config.json")
                 if (folder / "tokenizer_config.json").is_file() else {})
    preprocessor = (read_json_object(folder / "preprocessor_config.json")
                    if (folder / "preprocessor_config.json").is_file() else {})
    vocabulary = _vocabulary(folder / "vocab.json", tokenizer.get("word_delimiter_token", "|"))
    blank = config.get("pad_token_id")
    if isinstance(blank, bool) or not isinstance(blank, int) or not 0 <= blank < len(vocabulary):
        raise ConversionError(f"{folder / 'config.json'}: 'pad_token_id' (the CTC blank) must be a token id from 0 "
                              f"to {len(vocabulary) - 1}, got {blank!r}")
    vocab_size = config.get("vocab_size")
    if vocab_size is not None and vocab_size != len(vocabulary):
        raise ConversionError(f"{folder}: config.json says vocab_size={vocab_size!r} but vocab.json has "
                              f"{len(vocabulary)} tokens")
    rate = preprocessor.get("sampling_rate", 16000)
    if isinstance(rate, bool) or not isinstance(rate, int) or rate <= 0:
        raise ConversionError(f"{folder / 'preprocessor_config.json'}: 'sampling_rate' must be a positive integer, "
                              f"got {rate!r}")
    strides = config.get("conv_stride", [])
    if not isinstance(strides, list) or not all(isinstance(s, int) and s > 0 for s in strides):
        raise ConversionError(f"{folder / 'config.json'}: 'conv_stride' must be a list of positive integers")
    settings = dict(output="logits", blank=blank, vocabulary=vocabulary, vocabulary_type="chars", logits="logits")
    if strides:
        settings["frame_seconds"] = math.prod(strides) / rate
    try:  # written from the spec, so that the runtime reads back what was written
        decoder = CTCSpec(**settings).to_dict()
    except TinyASRError as exc:
        raise ConversionError(f"{folder}: {exc}") from None
    return {"decoder": decoder, "sample_rate": rate, "normalize": bool(preprocessor.get("do_normalize", True))}


def with_input_normalization(model: onnx.ModelProto, source: str) -> onnx.ModelProto:
    """``model`` with Wav2Vec2FeatureExtractor's per-utterance normalisation in front of its float audio input:
    (x - mean) / sqrt(var + 1e-7) over the valid samples (all of them without an ``attention_mask`` input),
    padding set to 0."""
    graph = model.graph
    floats = [v for v in graph.input if v.type.tensor_type.elem_type == TensorProto.FLOAT]
    if len(floats) != 1 or len(floats[0].type.tensor_type.shape.dim) != 2:
        raise ConversionError(f"{source}: do_normalize needs one float audio input [batch, samples]; the graph's "
                              f"inputs are {[v.name for v in graph.input]}")
    audio = floats[0].name
    normalized = f"{audio}/normalized"
    for node in graph.node:
        node.input[:] = [normalized if name == audio else name for name in node.input]
    names = {v.name for v in graph.input}

    def n(name):
        return f"/tinyasr/normalize/{name}"

    axes = helper.make_tensor(n("axes"), TensorProto.INT64, [1], [-1])
    eps = helper.make_tensor(n("epsilon"), TensorProto.FLOAT, [], [NORMALIZE_EPSILON])
    nodes = []
    if MASK_INPUT in names:
        nodes += [helper.make_node("Cast", [MASK_INPUT], [n("mask")], to=TensorProto.FLOAT),
                  helper.make_node("ReduceSum", [n("mask"), n("axes")], [n("count")], keepdims=1),
                  helper.make_node("Mul", [audio, n("mask")], [n("masked")]),
                  helper.make_node("ReduceSum", [n("masked"), n("axes")], [n("sum")], keepdims=1),
                  helper.make_node("Div", [n("sum"), n("count")], [n("mean")]),
                  helper.make_node("Sub", [audio, n("mean")], [n("offset")]),
                  helper.make_node("Mul", [n("offset"), n("mask")], [n("centred")]),
                  helper.make_node("Mul", [n("centred"), n("centred")], [n("square")]),
                  helper.make_node("ReduceSum", [n("square"), n("axes")], [n("square_sum")], keepdims=1),
                  helper.make_node("Div", [n("square_sum"), n("count")], [n("variance")])]
    else:
        nodes += [helper.make_node("ReduceMean", [audio], [n("mean")], axes=[-1], keepdims=1),
                  helper.make_node("Sub", [audio, n("mean")], [n("centred")]),
                  helper.make_node("Mul", [n("centred"), n("centred")], [n("square")]),
                  helper.make_node("ReduceMean", [n("square")], [n("variance")], axes=[-1], keepdims=1)]
    nodes += [helper.make_node("Add", [n("variance"), n("epsilon")], [n("shifted")]),
              helper.make_node("Sqrt", [n("shifted")], [n("std")]),
              helper.make_node("Div", [n("centred"), n("std")], [normalized])]
    for node in nodes:
        node.name = node.output[0]
    old_nodes = list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes + old_nodes)
    graph.initializer.extend([axes, eps])
    return model


def _vocabulary(path: Path, delimiter: Optional[str]):
    """Token texts in id order; the word delimiter becomes a space (tinyasr's "chars" vocabularies end a word
    at whitespace)."""
    tokens = read_json_object(path)
    integers = all(isinstance(i, int) and not isinstance(i, bool) for i in tokens.values())
    if not tokens or not integers or sorted(tokens.values()) != list(range(len(tokens))):
        raise ConversionError(f"{path}: the vocabulary must map each token to a distinct id 0..{len(tokens) - 1}")
    by_id = {i: token for token, i in tokens.items()}
    return [" " if by_id[i] == delimiter else by_id[i] for i in range(len(tokens))]


def read_json_object(path) -> Dict[str, Any]:
    """A JSON file that must hold an object (a model folder's configs, a --frontend-json); ConversionError
    naming the file otherwise."""
    try:
        value = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConversionError(f"{path}: cannot read it as JSON: {exc}") from None
    if not isinstance(value, dict):
        raise ConversionError(f"{path}: expected a JSON object")
    return value


def convert_huggingface(src, out, config, *, sample_rate: Optional[int] = None, **options):
    """Convert a Hugging Face CTC model's ONNX export ``src`` with the folder (or config.json) ``config``:
    decoder and sample rate from the folder (``sample_rate`` given here wins), normalisation prepended when the
    feature extractor does it.  ``options``: those of conversion.convert_model (float16, sparse, compact)."""
    from tinyasr_convert.conversion import convert_model
    from tinyasr_convert.onnx_import import load_onnx

    settings = settings_from_config(config)
    model, name, _ = load_onnx(src)
    if settings["normalize"]:  # the provenance hash is then the changed graph's, and the name says so
        model, name = with_input_normalization(model, name), f"{name} + input normalisation"
    return convert_model(model, out, decoder=settings["decoder"], sample_rate=sample_rate or settings["sample_rate"],
                         source_name=name, **options)
