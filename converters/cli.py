"""`tinyasr convert SRC -o OUT.tasr [options]`: arguments and the command body (tinyasr/cli.py wires it in)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Dict, List, Tuple

import onnx  # noqa: F401  -- importing this module fails with ModuleNotFoundError('onnx') without the convert extra
from tinyasr_convert.conversion import DECODER_TYPES, convert_model
from tinyasr_convert.huggingface import convert_huggingface, is_huggingface_config, read_json_object
from tinyasr_convert.sparse_choice import SPARSE_MODES

from tinyasr.errors import ConversionError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", metavar="SRC", help="the source model (.onnx, or a NeMo .nemo archive)")
    parser.add_argument("-o", "--output", required=True, metavar="OUT.tasr", help="the .tasr file to write")
    parser.add_argument("--labels", metavar="FILE", help="labels / vocabulary: a JSON list, or one label per line; "
                        "for a model with several one-class outputs (MarbleNet VAD: score_silence, score_active) "
                        "one label per output, in output order: they are joined into one output 'scores'")
    parser.add_argument("--sample-rate", type=int, metavar="HZ", help="for a model on raw audio (no front end): "
                        "the rate audio is resampled to; a graph with a sample-rate input (Silero VAD's sr) is "
                        "fixed to it, and the Ifs that switch on it keep only the branch taken")
    parser.add_argument("--input-shape", action="append", default=[], metavar="NAME=D1,D2,...",
                        help="fix an ONNX graph input's shape, e.g. input=1,576 (repeatable): for graphs whose If "
                        "nodes test shapes (Silero VAD's opset-15 export), which are then inlined")
    parser.add_argument("--blank", type=int, metavar="INDEX", help="CTC blank index (default: last, after the labels)")
    parser.add_argument("--decoder", choices=DECODER_TYPES, help="how to read the output (default: from the model's "
                        "metadata, else classification for [batch, classes] outputs and ctc otherwise)")
    parser.add_argument("--frontend-json", metavar="FILE", help="front-end settings (a JSON object) for the manifest")
    parser.add_argument("--config", metavar="FILE", help="for a NeMo ONNX export: the model's NeMo config "
                        "(model_config.yaml / .json, or the .nemo archive it came from) giving front end, "
                        "vocabulary and decoder; explicit --labels / --decoder / --frontend-json win over it.  "
                        "For a Hugging Face CTC export (wav2vec2, HuBERT): its model folder or config.json "
                        "(vocab.json, tokenizer_config.json, preprocessor_config.json beside it)")
    parser.add_argument("--decoder-joint", metavar="FILE", help="for a NeMo transducer's encoder ONNX export "
                        "(encoder-*.onnx, with --config): its decoder_joint-*.onnx; the prediction network and "
                        "joint are stored in the same .tasr")
    parser.add_argument("--sparse", choices=SPARSE_MODES, default="auto",
                        help="storage of 1x1-conv / linear weights that have zeros: auto (default) picks dense, "
                        "csr or bsr per weight by a measured cost model; the others force one encoding")
    parser.add_argument("--no-compact", dest="compact", action="store_false",
                        help="keep what structured pruning zeroed instead of removing it: all-zero Conv output "
                        "channels and feed-forward hidden units; from a .nemo Conformer also heads, conv-module "
                        "channels and whole modules (docs/pruned-conformers.md)")
    parser.add_argument("--float16", action="store_true", help="store Conv / MatMul / Gemm weights as float16 (half size)")


def run(args: argparse.Namespace) -> int:
    """Convert, print a one-line summary, return 0.  Problems raise TinyASRError subclasses."""
    source = Path(args.source)
    folder = Path(args.output).parent
    if not folder.is_dir():
        raise ConversionError(f"{args.output}: cannot write there: {folder} is not an existing directory")
    suffix = source.suffix.lower()
    if suffix == ".nemo":
        return _run_nemo(source, args)
    if suffix != ".onnx":
        raise ConversionError(f"{source}: 'tinyasr convert' reads .onnx and .nemo files "
                              "(torch modules: tinyasr_convert.from_torch in Python)")
    if args.config and is_huggingface_config(args.config):
        return _run_huggingface(source, args)
    if args.decoder_joint and not args.config:
        raise ConversionError("--decoder-joint needs --config (the transducer's model_config.yaml or .nemo)")
    from_config = _nemo_settings(args.config, args.decoder_joint) if args.config else {}
    labels = read_labels(args.labels) if args.labels else None
    # A decoder type, labels or blank given on the command line replace the config's whole decoder entry.
    decoder = args.decoder if (args.decoder or labels is not None or args.blank is not None) else None
    result = convert_model(
        source,
        args.output,
        labels=labels,
        blank=args.blank,
        decoder=decoder if decoder is not None else from_config.get("decoder"),
        frontend=read_json_object(args.frontend_json) if args.frontend_json else from_config.get("frontend"),
        float16=args.float16,
        sparse=args.sparse,
        compact=args.compact,
        sample_rate=args.sample_rate,
        decoder_tensors=from_config.get("decoder_tensors"),
        input_shapes=_input_shapes(args.input_shape),
    )
    print(result.summary())
    return 0


def _input_shapes(given: List[str]) -> Dict[str, Tuple[int, ...]]:
    """``--input-shape NAME=D1,D2`` flags as {name: dims}; a malformed one is refused naming it."""
    shapes = {}
    for text in given:
        name, _, dims = text.partition("=")
        try:
            shapes[name.strip()] = tuple(int(d) for d in dims.split(","))
        except ValueError:
            raise ConversionError(f"--input-shape {text!r}: expected NAME=D1,D2,... with integer dims") from None
        if not name.strip():
            raise ConversionError(f"--input-shape {text!r}: expected NAME=D1,D2,... with integer dims")
    return shapes


def _run_huggingface(source: Path, args: argparse.Namespace) -> int:
    """A Hugging Face CTC export: vocabulary, blank, sample rate and normalisation from its model folder."""
    given = [flag for flag, value in (("--labels", args.labels), ("--blank", args.blank), ("--decoder", args.decoder),
                                      ("--frontend-json", args.frontend_json)) if value is not None]
    if given:
        raise ConversionError(f"{args.config}: {', '.join(given)} cannot be used with a Hugging Face model folder, "
                              "which gives the vocabulary and decoder")
    result = convert_huggingface(source, args.output, args.config, sample_rate=args.sample_rate, float16=args.float16,
                                 sparse=args.sparse, compact=args.compact)
    print(result.summary())
    return 0


def _nemo_settings(config_path, decoder_joint_path=None) -> dict:
    """Front end and decoder of a NeMo ONNX export, from its config or from the .nemo archive it came from; for a
    transducer's encoder export also the decoder's tensors, read from its decoder_joint export."""
    from tinyasr_convert.nemo import is_transducer, load_config, manifest_from_nemo_config, read_nemo
    from tinyasr_convert.nemo import ctc_branch, transducer_manifest

    if str(config_path).lower().endswith(".nemo"):
        archive = read_nemo(config_path)
        config, files = archive.config, archive.files
    else:
        config, files = load_config(config_path), None
    if decoder_joint_path is None:
        if is_transducer(config) and ctc_branch(config)[0] is config:
            raise ConversionError(f"{config_path}: the config is a transducer's: give its decoder_joint ONNX export "
                                  "with --decoder-joint FILE (the source is then its encoder export)")
        return manifest_from_nemo_config(config, files)
    if not is_transducer(config):
        raise ConversionError(f"{config_path}: --decoder-joint is for transducers, but the config's decoder is "
                              f"{(config.get('decoder') or {}).get('_target_')!r}")
    from tinyasr_convert.onnx_import import load_onnx
    from tinyasr_convert.transducer import decoder_joint

    model, name, _ = load_onnx(decoder_joint_path)
    prediction, joint = decoder_joint(model, name)
    manifest, tensors = transducer_manifest(config, files or {}, prediction, joint, str(config_path))
    return dict(manifest, decoder_tensors=tensors)


def _run_nemo(source: Path, args: argparse.Namespace) -> int:
    """A .nemo archive carries its own labels, decoder and front end (converters/nemo.py)."""
    from tinyasr_convert.nemo import convert_nemo

    given = [flag for flag, value in (("--labels", args.labels), ("--blank", args.blank), ("--decoder", args.decoder),
                                      ("--frontend-json", args.frontend_json), ("--sample-rate", args.sample_rate),
                                      ("--config", args.config)) if value is not None]
    if given:
        raise ConversionError(f"{source}: {', '.join(given)} cannot be used with a .nemo source, "
                              "which carries its own labels, decoder and front end")
    path = Path(convert_nemo(source, args.output, float16=args.float16, compact=args.compact))
    print(f"wrote {path}: {path.stat().st_size:,} bytes")
    return 0


def read_labels(path) -> List[str]:
    """Labels from a file: a JSON list of strings, or one label per line (a line may be a single space)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConversionError(f"{path}: cannot read the labels file: {exc}") from None
    if text.lstrip().startswith("["):
        try:
            labels = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConversionError(f"{path}: labels file looks like JSON but does not parse: {exc}") from None
        if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
            raise ConversionError(f"{path}: a JSON labels file must hold a list of strings")
        return labels
    labels = text.split("\n")
    if labels and labels[-1] == "":
        labels.pop()
    if not labels:
        raise ConversionError(f"{path}: the labels file is empty")
    return [line.rstrip("\r") for line in labels]


