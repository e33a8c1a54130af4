"""What is inside a .tasr file, per layer: for `tinyasr info` and for people choosing a model.

Sizes, encodings and sparsity come from ``fileformat.describe`` (per tensor); this
module groups them by the node that reads them and adds the graph's interface,
the frontend, the decoder's vocabulary and the provenance.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Dict, List, Optional

from tinyasr.decoding.specs import decoder_spec
from tinyasr.errors import ModelFileError
from tinyasr.format.container import describe, read_model

VOCABULARY_PREVIEW = 12  # entries of a vocabulary or label list shown in the summary
# A compacted Conformer's manifest ``structure`` (converters/nemo_blocks.py conformer_structure): per layer, per
# module, [kept, of] in these units; 0 kept: the module is skipped.
STRUCTURE_UNITS = {"feed_forward1": "units", "self_attn": "heads", "conv": "channels", "feed_forward2": "units"}
MAX_STRUCTURE_LAYERS = 4096


def _layer(node, rows: List[Dict[str, Any]]) -> Dict[str, Any]:
    """One node's stored tensors, added up.  Sparsity counts only tensors whose encoding defines it."""
    measured = [r for r in rows if r["sparsity"] is not None]
    measured_parameters = sum(r["parameters"] for r in measured)
    zeros = sum(r["sparsity"] * r["parameters"] for r in measured)
    return {
        "name": node.name,
        "op": node.op,
        "tensors": [r["name"] for r in rows],
        "encodings": sorted({f"{r['encoding']}/{r['dtype']}" for r in rows}),
        "parameters": sum(r["parameters"] for r in rows),
        "bytes": sum(r["bytes"] for r in rows),
        "sparsity": zeros / measured_parameters if measured_parameters else None,
    }


def _decoder_summary(decoder: Optional[dict]) -> Optional[Dict[str, Any]]:
    """The decoder's settings with defaults written out (tinyasr.decoding.specs); an entry the Recognizer would
    refuse is shown as stored, with the problem."""
    if not decoder:
        return None
    try:
        decoder = decoder_spec(decoder, "decoder").to_dict()
        problem = None
    except ModelFileError as exc:
        problem = exc.problem
    summary = {k: v for k, v in decoder.items() if not (k in ("vocabulary", "labels") and isinstance(v, list))}
    if not problem and decoder["type"] == "transducer":  # tensor names say little: the structure instead
        layers = decoder["prediction"]["layers"]
        summary["prediction"] = f"{len(layers)} LSTM layer(s)" + (
            ", projected" if any("projection" in layer for layer in layers) else "")
        summary["joint"] = decoder["joint"].get("activation", "relu")
        if "ctc" in decoder:
            ctc = _decoder_summary(decoder["ctc"])
            summary["ctc"] = f"output {ctc['output']}, {ctc['vocabulary_size']} tokens (Recognizer(head='ctc'))"
    if problem:
        summary["problem"] = problem
    for key in ("vocabulary", "labels"):
        if isinstance(decoder.get(key), list):  # anything else stays as stored: info describes, the Recognizer judges
            summary[f"{key}_size"] = len(decoder[key])
            summary[f"{key}_preview"] = list(decoder[key][:VOCABULARY_PREVIEW])
    return summary


def _structure_summary(structure) -> Optional[Dict[str, Any]]:
    """The manifest's ``structure`` entry if it is well formed (every layer names each module with integers
    0 <= kept <= of), else {"problem": ...}: info describes, it does not trust."""
    if structure is None:
        return None
    if not isinstance(structure, dict):
        structure = {}
    layers = structure.get("layers")
    if structure.get("family") != "conformer" or not isinstance(layers, list) or len(layers) > MAX_STRUCTURE_LAYERS:
        return {"problem": "the manifest's 'structure' is not a list of Conformer layers"}
    for i, layer in enumerate(layers):
        if not (isinstance(layer, dict) and set(layer) == set(STRUCTURE_UNITS)
                and all(isinstance(v, list) and len(v) == 2 and all(type(n) is int for n in v) and 0 <= v[0] <= v[1]
                        for v in layer.values())):
            return {"problem": f"the manifest's 'structure' layer {i} is not {{module: [kept, of]}} for the modules "
                               f"{list(STRUCTURE_UNITS)}"}
    return {"family": "conformer", "layers": layers}


def summarize(path) -> Dict[str, Any]:
    """A JSON-ready description of the model in ``path``: interface, layers, totals, frontend, decoder, provenance."""
    with read_model(path) as model_file:
        described = describe(model_file)
        rows = {row["name"]: row for row in described["tensors"]}
        graph = model_file.graph
        layers = [_layer(node, [rows[n] for n in dict.fromkeys(node.inputs) if n in rows]) for node in graph.nodes]
        manifest = model_file.manifest
        return {
            "path": described["path"],
            "format_version": described["version"],
            "inputs": [v.to_dict() for v in graph.inputs],
            "outputs": [v.to_dict() for v in graph.outputs],
            "layers": layers,
            "ops": dict(sorted(Counter(node.op for node in graph.nodes).items())),
            "total": {"parameters": described["parameters"], "bytes": described["tensor_bytes"],
                      "tensors": described["tensor_count"], "nodes": len(graph.nodes)},
            "frontend": manifest.get("frontend"),
            "decoder": _decoder_summary(manifest.get("decoder")),
            "provenance": manifest.get("provenance"),
            "structure": _structure_summary(manifest.get("structure")),
        }


def _size(n_bytes: int) -> str:
    for unit, scale in (("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n_bytes >= scale:
            return f"{n_bytes / scale:.1f} {unit}"
    return f"{n_bytes} B"


def _value(v: Dict[str, Any]) -> str:
    return f"{v['name']} {v['dtype']} [{', '.join(map(str, v['shape']))}]"


def _structure_lines(structure: Optional[Dict[str, Any]]) -> List[str]:
    """What a compacted Conformer kept per layer: one line each, e.g. "3  ff1 176/352 units, 2/4 heads, ..."."""
    if not structure:
        return []
    if "problem" in structure:
        return [f"structure  {structure['problem']}"]
    lines = ["", "structure (kept / of), per Conformer layer; skipped: the module was compacted away"]
    for i, layer in enumerate(structure["layers"]):
        parts = []
        for module, unit in STRUCTURE_UNITS.items():
            kept, of = layer[module]
            parts.append(f"{module} {'skipped' if kept == 0 else f'{kept}/{of} {unit}'}")
        lines.append(f"{i:>4}  " + ", ".join(parts))
    return lines


def format_summary(summary: Dict[str, Any]) -> str:
    """The summary as a readable text table."""
    total = summary["total"]
    lines = [f"model      {summary['path']} (tasr {summary['format_version']})"]
    if summary["provenance"]:
        lines.append("provenance " + ", ".join(f"{k}={v}" for k, v in summary["provenance"].items()))
    lines.append("inputs     " + "; ".join(_value(v) for v in summary["inputs"]))
    lines.append("outputs    " + "; ".join(_value(v) for v in summary["outputs"]))
    frontend = summary["frontend"]
    lines.append("frontend   " + (", ".join(f"{k}={v}" for k, v in frontend.items()) if frontend else "none"))
    decoder = summary["decoder"]
    if decoder:
        key = "vocabulary" if "vocabulary_size" in decoder else "labels"
        details = ", ".join(f"{k}={v}" for k, v in decoder.items() if k not in (f"{key}_size", f"{key}_preview"))
        preview = ", ".join(repr(t) for t in decoder.get(f"{key}_preview", []))
        more = " ..." if decoder.get(f"{key}_size", 0) > VOCABULARY_PREVIEW else ""
        listed = f"; {decoder[f'{key}_size']} {key}: {preview}{more}" if f"{key}_size" in decoder else ""
        lines.append(f"decoder    {details}{listed}")
    else:
        lines.append("decoder    none")
    lines += _structure_lines(summary.get("structure"))
    lines.append("")
    header = f"{'#':>4}  {'layer':<28} {'op':<18} {'params':>10} {'size':>10}  {'sparsity':>8}  encodings"
    lines += [header, "-" * len(header)]
    for i, layer in enumerate(summary["layers"]):
        sparsity = "" if layer["sparsity"] is None else f"{100 * layer['sparsity']:.1f}%"
        size = _size(layer["bytes"]) if layer["bytes"] else ""
        lines.append(f"{i:>4}  {layer['name'][:28]:<28} {layer['op'][:18]:<18} {layer['parameters']:>10,} "
                     f"{size:>10}  {sparsity:>8}  {', '.join(layer['encodings'])}".rstrip())
    lines.append("-" * len(header))
    lines.append(f"total: {total['parameters']:,} parameters, {_size(total['bytes'])} in {total['tensors']} tensors, "
                 f"{total['nodes']} nodes; ops: " + ", ".join(f"{op} x{n}" for op, n in summary["ops"].items()))
    return "\n".join(lines)
