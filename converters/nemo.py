"""NeMo `.nemo` archives -> .tasr, without NeMo and without running any of the archive's code.

A `.nemo` file is a tar (NeMo >= 2 writes it uncompressed, older releases gzip
it) holding ``model_config.yaml``, ``model_weights.ckpt`` (a torch zip
checkpoint of the state dict) and, for subword models, tokenizer files.  Members
are read in memory, never extracted; a member whose path or link target leaves
the archive makes the whole archive suspect and it is refused.  The checkpoint
pickle goes through an unpickler that knows only the names a state dict needs
(OrderedDict, torch's tensor-rebuild functions and storage types) and builds
numpy arrays from the zip's data records, so torch is not needed and no other
object can be constructed.  The graph is rebuilt from the config
(`nemo_blocks.py`) exactly as NeMo's ONNX export computes it.
"""

from __future__ import annotations

import io
import math
import pickle
import posixpath
import tarfile
import zipfile
import zlib
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np

from tinyasr.decoding.specs import ClassificationSpec, CTCSpec, vocabulary_type_of
from tinyasr.errors import ConversionError, TinyASRError
from tinyasr.model_cache import file_sha256

CONFIG_MEMBER = "model_config.yaml"
WEIGHTS_MEMBER = "model_weights.ckpt"
MAX_SMALL_MEMBER = 64 << 20  # tokenizer / config files are kilobytes; refuse to read anything huge into memory

# ---------------------------------------------------------------------------------------------------------------------
# The archive


@dataclass
class NemoArchive:
    """What a .nemo archive holds: its config, its weights (numpy) and its small member files by name."""

    path: str
    sha256: str
    config: Dict[str, Any]
    weights: Dict[str, np.ndarray]
    files: Dict[str, bytes]


def _member_name(path: str, member: tarfile.TarInfo) -> str:
    """The member's path inside the archive ("./a" -> "a"); ConversionError if it, or its link target, escapes."""
    name = member.name.replace("\\", "/")
    if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        raise ConversionError(f"{path}: archive member {member.name!r} has an absolute path; refusing the archive")
    clean = posixpath.normpath(name)
    if clean == ".." or clean.startswith("../"):
        raise ConversionError(f"{path}: archive member {member.name!r} points outside the archive ('..'); "
                              "refusing the archive")
    if member.issym() or member.islnk():
        base = posixpath.dirname(clean) if member.issym() else ""
        target = posixpath.normpath(posixpath.join(base, member.linkname.replace("\\", "/")))
        if member.linkname.startswith("/") or target == ".." or target.startswith("../"):
            raise ConversionError(f"{path}: archive member {member.name!r} links to {member.linkname!r}, outside "
                                  "the archive; refusing the archive")
    elif not (member.isfile() or member.isdir()):
        raise ConversionError(f"{path}: archive member {member.name!r} is a device or pipe, not a file; "
                              "refusing the archive")
    return "" if clean == "." else clean


def read_nemo(src) -> NemoArchive:
    """Read a .nemo archive (tar or tar.gz) in memory; ConversionError naming the file and the problem."""
    path = Path(src)
    try:
        tar = tarfile.open(path, "r:*")
    except FileNotFoundError:
        raise ConversionError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise ConversionError(f"{path}: is a directory, not a .nemo archive") from None
    except (tarfile.TarError, OSError) as exc:
        reason = str(exc).splitlines()[0].rstrip(":")  # tarfile lists every compression it tried, one per line
        raise ConversionError(f"{path}: not a .nemo archive (a tar file was expected: {reason})") from None
    with tar:
        members: Dict[str, tarfile.TarInfo] = {}
        try:
            for member in tar:
                name = _member_name(str(path), member)
                if member.isfile():
                    if name in members:
                        raise ConversionError(f"{path}: archive member {name!r} occurs twice; refusing the archive")
                    members[name] = member
        except (tarfile.TarError, EOFError, OSError) as exc:
            raise ConversionError(f"{path}: the archive is damaged or truncated ({exc})") from None
        listing = ", ".join(sorted(members)) or "nothing"
        for required in (CONFIG_MEMBER, WEIGHTS_MEMBER):
            if required not in members:
                raise ConversionError(f"{path}: the archive has no {required} (it holds: {listing})")
        files = {}
        for name, member in members.items():
            if name != WEIGHTS_MEMBER and member.size <= MAX_SMALL_MEMBER:
                files[name] = tar.extractfile(member).read()
        config = _parse_config(files[CONFIG_MEMBER], f"{path}:{CONFIG_MEMBER}")
        weights = read_checkpoint(tar.extractfile(members[WEIGHTS_MEMBER]), f"{path}:{WEIGHTS_MEMBER}")
    return NemoArchive(str(path), file_sha256(path), config, weights, files)


def _parse_config(text: bytes, where: str) -> Dict[str, Any]:
    """YAML (or JSON, a YAML subset) through yaml.safe_load: plain data only, no tags that build objects."""
    try:
        import yaml
    except ImportError:
        raise ConversionError("reading NeMo configs needs PyYAML: pip install 'tinyasr[convert]'") from None
    try:
        config = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConversionError(f"{where}: not valid YAML ({exc})") from None
    if not isinstance(config, dict):
        raise ConversionError(f"{where}: the config is a {type(config).__name__}, not a mapping")
    return {key: _modern_section(value) for key, value in config.items()}


def _modern_section(section: Any) -> Any:
    """NeMo 1.0 beta configs say {cls: X, params: {...}} where later ones say {_target_: X, ...}."""
    if isinstance(section, dict) and "cls" in section and "_target_" not in section:
        params = section.get("params") or {}
        if isinstance(params, dict) and set(section) <= {"cls", "params"}:
            return {"_target_": section["cls"], **params}
    return section


def load_config(src) -> Dict[str, Any]:
    """A NeMo model config from model_config.yaml / .json, or from a .nemo archive (only its config is read)."""
    path = Path(src)
    if not path.is_file():
        raise ConversionError(f"{path}: no such config file (a model_config.yaml or a .nemo archive was expected)")
    if path.suffix == ".nemo" or tarfile.is_tarfile(path):
        try:
            with tarfile.open(path, "r:*") as tar:
                for member in tar:
                    if _member_name(str(path), member) == CONFIG_MEMBER and member.isfile():
                        return _parse_config(tar.extractfile(member).read(), f"{path}:{CONFIG_MEMBER}")
        except (tarfile.TarError, OSError) as exc:
            raise ConversionError(f"{path}: not a readable .nemo archive ({exc})") from None
        raise ConversionError(f"{path}: the archive has no {CONFIG_MEMBER}")
    try:
        return _parse_config(path.read_bytes(), str(path))
    except OSError as exc:
        raise ConversionError(f"{path}: cannot read the config: {exc.strerror or exc}") from None


# ---------------------------------------------------------------------------------------------------------------------
# The checkpoint: a torch zip file read by a restricted unpickler

_STORAGE_DTYPES = {
    "FloatStorage": "f4", "DoubleStorage": "f8", "HalfStorage": "f2", "BFloat16Storage": "bf16",
    "LongStorage": "i8", "IntStorage": "i4", "ShortStorage": "i2", "CharStorage": "i1",
    "ByteStorage": "u1", "BoolStorage": "?",
}


class _StorageType:
    """Stands in for ``torch.FloatStorage`` and friends: only its element type matters."""

    def __init__(self, name: str):
        self.name, self.code = name, _STORAGE_DTYPES[name]


class _TensorRebuilder:
    """``torch._utils._rebuild_tensor_v2`` and ``_rebuild_parameter`` as numpy; checks every index it is given."""

    def __init__(self, where: str):
        self.where = where

    def tensor(self, storage, offset, size, stride, *_ignored) -> np.ndarray:
        if not isinstance(storage, np.ndarray):
            raise ConversionError(f"{self.where}: a tensor refers to {type(storage).__name__}, not to a storage")
        size, stride, offset = tuple(int(s) for s in size), tuple(int(s) for s in stride), int(offset)
        if len(size) != len(stride) or offset < 0 or any(s < 0 for s in size + stride):
            raise ConversionError(f"{self.where}: a tensor has a malformed layout (size {size}, stride {stride})")
        if math.prod(size) > max(storage.size, 1):
            raise ConversionError(f"{self.where}: a tensor of size {size} has more elements than its storage "
                                  f"({storage.size}); expanded tensors are not part of a weights file")
        last = offset + sum((n - 1) * s for n, s in zip(size, stride)) if all(size) else offset - 1
        if last >= storage.size:
            raise ConversionError(f"{self.where}: a tensor of size {size} reads past the end of its storage "
                                  f"({storage.size} elements)")
        item = storage.itemsize
        view = np.lib.stride_tricks.as_strided(storage[offset:], size, tuple(s * item for s in stride))
        return np.array(view)

    @staticmethod
    def parameter(data, *_ignored):
        return data


class _CheckpointUnpickler(pickle.Unpickler):
    """Resolves only the globals a state dict uses; everything else is refused before it is looked up."""

    def __init__(self, file, archive: zipfile.ZipFile, prefix: str, byteorder: str, where: str):
        super().__init__(file)
        self.archive, self.prefix, self.byteorder, self.where = archive, prefix, byteorder, where
        self.storages: Dict[str, np.ndarray] = {}
        rebuild = _TensorRebuilder(where)
        self.allowed = {
            ("collections", "OrderedDict"): OrderedDict,
            ("torch._utils", "_rebuild_tensor_v2"): rebuild.tensor,
            ("torch._utils", "_rebuild_parameter"): rebuild.parameter,
            ("torch._utils", "_rebuild_parameter_with_state"): rebuild.parameter,
        }

    def find_class(self, module, name):
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name)
        try:
            return self.allowed[(module, name)]
        except KeyError:
            raise ConversionError(
                f"{self.where}: the checkpoint refers to {module}.{name}, which a plain weights file never needs; "
                "refusing to load it (only tensors in (Ordered)dicts are read)"
            ) from None

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage" and isinstance(pid[1], _StorageType)):
            raise ConversionError(f"{self.where}: unexpected persistent reference {pid!r:.80}")
        _, kind, key, _location, numel = pid
        key = str(key)
        if key not in self.storages:
            try:
                raw = self.archive.read(f"{self.prefix}data/{key}")
            except KeyError:
                raise ConversionError(f"{self.where}: storage record data/{key} is missing") from None
            self.storages[key] = _storage_array(raw, kind, int(numel), self.byteorder, f"{self.where} data/{key}")
        return self.storages[key]


def _storage_array(raw: bytes, kind: _StorageType, numel: int, byteorder: str, where: str) -> np.ndarray:
    code = "u2" if kind.code == "bf16" else kind.code
    dtype = np.dtype(code).newbyteorder("<" if byteorder == "little" else ">")
    if numel < 0 or len(raw) < numel * dtype.itemsize:
        raise ConversionError(f"{where}: {kind.name} of {numel} elements needs {numel * dtype.itemsize} bytes, "
                              f"the record has {len(raw)}")
    array = np.frombuffer(raw, dtype, count=numel)
    if kind.code == "bf16":  # bfloat16 is the top half of a float32
        return (array.astype(np.uint32) << 16).view(np.float32)
    return array.astype(dtype.newbyteorder("="), copy=False)


def read_checkpoint(fileobj, where: str) -> Dict[str, np.ndarray]:
    """A torch zip checkpoint's state dict as {name: numpy array}; torch is not used.

    ``fileobj``: a seekable binary file.  A Lightning-style {"state_dict": ...} is unwrapped.
    """
    try:
        with zipfile.ZipFile(fileobj) as archive:
            state = _load_state(archive, where)
    except TinyASRError:
        raise
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, tarfile.TarError) as exc:
        raise ConversionError(f"{where}: not a readable torch zip checkpoint ({exc}); damaged or truncated? "
                              "(files saved by torch < 1.6 in the legacy format are not supported: re-save them "
                              "with a recent torch)") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, np.ndarray)
                                              for k, v in state.items()):
        raise ConversionError(f"{where}: the checkpoint is not a state dict of named tensors")
    return dict(state)


def _load_state(archive: zipfile.ZipFile, where: str):
    pickles = [n for n in archive.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
    if len(pickles) != 1:
        raise ConversionError(f"{where}: expected one <name>/data.pkl record in the checkpoint, found {pickles}")
    prefix = pickles[0][: -len("data.pkl")]
    byteorder = "little"
    if f"{prefix}byteorder" in archive.namelist():
        byteorder = archive.read(f"{prefix}byteorder").decode("ascii", "replace").strip()
        if byteorder not in ("little", "big"):
            raise ConversionError(f"{where}: unknown byte order {byteorder!r}")
    unpickler = _CheckpointUnpickler(io.BytesIO(archive.read(pickles[0])), archive, prefix, byteorder, where)
    try:
        return unpickler.load()
    except (TinyASRError, zipfile.BadZipFile, zlib.error, EOFError, OSError, tarfile.TarError):
        raise
    except Exception as exc:  # a malformed pickle can fail in many ways; none of them may escape raw
        raise ConversionError(f"{where}: malformed checkpoint pickle ({type(exc).__name__}: {exc})") from None


# ---------------------------------------------------------------------------------------------------------------------
# Config -> manifest (frontend, decoder) and archive -> .tasr


def _target(section: Any) -> str:
    """The class name of a config section's ``_target_`` ("nemo.collections.asr.modules.X" -> "X")."""
    if not isinstance(section, dict):
        return ""
    return str(section.get("_target_", "")).rsplit(".", 1)[-1]


def frontend_from_config(cfg: Dict[str, Any]) -> Dict[str, Any]:
    """FrontendConfig.to_dict() for the config's ``preprocessor`` section."""
    from tinyasr.features.frontend import FrontendConfig

    pre = cfg.get("preprocessor")
    if not isinstance(pre, dict):
        raise ConversionError("NeMo config has no 'preprocessor' section; cannot configure the audio frontend")
    pre = dict(pre)
    if "sample_rate" not in pre and "sample_rate" in cfg:
        pre["sample_rate"] = cfg["sample_rate"]
    try:
        return FrontendConfig.from_nemo(pre).to_dict()
    except ConversionError:
        raise
    except TinyASRError as exc:
        raise ConversionError(f"NeMo config 'preprocessor': {exc}") from None


def vocabulary_from_config(cfg: Dict[str, Any], files: Optional[Dict[str, bytes]] = None) -> List[str]:
    """The CTC vocabulary without the blank, in output order.

    Character models: ``decoder.vocabulary`` (or top-level ``labels``).  Subword models: the tokenizer file of
    the archive when there is one (sentencepiece ``.vocab`` for ``type: bpe``, pieces in id order with "▁" at
    word starts; ``vocab.txt`` for ``type: wpe``, WordPiece tokens with "##" continuations), else the config's
    ``decoder.vocabulary``.  When both exist they must agree.  NeMo's ``vocab.txt`` of a sentencepiece model is
    not in id order (control symbols dropped, "▁" rewritten), so it is never used for ``bpe``.
    """
    decoder = cfg.get("decoder") if isinstance(cfg.get("decoder"), dict) else {}
    in_config = decoder.get("vocabulary") or cfg.get("labels")
    in_config = [str(t) for t in in_config] if in_config else None
    tokenizer = cfg.get("tokenizer")
    member = _tokenizer_member(tokenizer, files or {}) if isinstance(tokenizer, dict) else None
    if member is None:
        if not in_config:
            raise ConversionError("NeMo config gives no vocabulary (no decoder.vocabulary, labels or tokenizer file)")
        return in_config
    data = files[member]
    from_file = _sentencepiece_vocab(data, member) if member.endswith(".vocab") else _plain_vocab(data, member)
    if in_config is not None and from_file != in_config:
        raise ConversionError(f"the tokenizer file {member} ({len(from_file)} tokens) disagrees with the config's "
                              f"decoder.vocabulary ({len(in_config)} tokens)")
    return from_file


def _tokenizer_member(tokenizer: Dict[str, Any], files: Dict[str, bytes]) -> Optional[str]:
    """The archive member holding the token list: named in the config ("nemo:abc_tokenizer.vocab" or a path
    whose base name is a member), else the only member with the right suffix; None if there is none."""
    wordpiece = str(tokenizer.get("type", "bpe")).lower() == "wpe"
    key, suffix = ("vocab_path", "vocab.txt") if wordpiece else ("spe_tokenizer_vocab", ".vocab")
    ref = tokenizer.get(key)
    if ref:
        name = posixpath.basename(str(ref).replace("nemo:", "", 1).replace("\\", "/"))
        if name in files:
            return name
    candidates = [n for n in files if n.endswith(suffix)]
    return candidates[0] if len(candidates) == 1 else None


def _sentencepiece_vocab(data: bytes, name: str) -> List[str]:
    """sentencepiece's ``.vocab``: "piece<TAB>score" per line, in id order."""
    lines = data.decode("utf-8").splitlines()
    if not lines or not all("\t" in line for line in lines):
        raise ConversionError(f"{name}: not a sentencepiece .vocab file (lines of 'piece<TAB>score')")
    return [line.split("\t", 1)[0] for line in lines]


def _plain_vocab(data: bytes, name: str) -> List[str]:
    tokens = data.decode("utf-8").splitlines()
    if not tokens:
        raise ConversionError(f"{name}: the vocabulary file is empty")
    return tokens


def ctc_branch(cfg: Dict[str, Any], weights: Optional[Dict[str, np.ndarray]] = None):
    """(config, weights) of a hybrid RNN-T + CTC model (NeMo's EncDecHybridRNNTCTC*) read as its CTC branch: the
    ``aux_ctc.decoder`` section as the decoder and the ``ctc_decoder.*`` tensors as ``decoder.*`` (the
    transducer's prediction net and joint dropped).  Any other model is returned as it is."""
    aux = cfg.get("aux_ctc")
    if not (isinstance(aux, dict) and isinstance(aux.get("decoder"), dict)
            and _target(cfg.get("decoder")) != "ConvASRDecoder"):
        return cfg, weights
    cfg = dict(cfg, decoder=aux["decoder"])
    if weights is not None:
        weights = {("decoder." + key[len("ctc_decoder."):] if key.startswith("ctc_decoder.") else key): value
                   for key, value in weights.items() if not key.startswith(("decoder.", "joint."))}
    return cfg, weights


def manifest_from_nemo_config(cfg: Dict[str, Any], files: Optional[Dict[str, bytes]] = None,
                              output: Optional[str] = None) -> Dict[str, Any]:
    """``{"frontend": ..., "decoder": ...}`` for a NeMo model config (also for the model's ONNX export).

    ``files``: the archive's small members (tokenizer vocabularies); ``output``: the graph output the
    decoder reads (default NeMo's export name: "logprobs" for CTC, "logits" for classification).
    """
    from tinyasr_convert.nemo_blocks import subsampling_factor

    cfg, _ = ctc_branch(cfg)
    frontend = frontend_from_config(cfg)
    kind = _target(cfg.get("decoder"))
    if kind == "ConvASRDecoder":
        vocabulary = vocabulary_from_config(cfg, files)
        num_classes = cfg["decoder"].get("num_classes", -1)
        if isinstance(num_classes, int) and num_classes > 0 and num_classes != len(vocabulary):
            raise ConversionError(f"NeMo config decoder.num_classes={num_classes} but the vocabulary has "
                                  f"{len(vocabulary)} tokens")
        hop_seconds = frontend["hop_length"] / frontend["sample_rate"]
        settings = dict(
            output=output or "logprobs", blank=len(vocabulary), vocabulary=vocabulary,
            # no tokenizer: one character per label (NeMo's char models), or whole words as the ONNX path reads them
            vocabulary_type="subword" if isinstance(cfg.get("tokenizer"), dict) else vocabulary_type_of(vocabulary),
            logits="log_probs", frame_seconds=hop_seconds * subsampling_factor(cfg.get("encoder")),
        )
        spec_class = CTCSpec
    elif kind == "ConvASRDecoderClassification":
        labels = cfg.get("labels")
        if not labels:
            raise ConversionError("NeMo classification config has no 'labels'")
        logits = "logits" if cfg["decoder"].get("return_logits", True) else "probs"
        settings = dict(output=output or "logits", labels=[str(x) for x in labels], logits=logits)
        spec_class = ClassificationSpec
    else:
        raise ConversionError(f"NeMo config decoder._target_={cfg.get('decoder', {}).get('_target_')!r} is not "
                              "supported (supported: ConvASRDecoder, ConvASRDecoderClassification)")
    try:  # written from the spec, so that the runtime reads back what was written
        decoder = spec_class(**settings).to_dict()
    except TinyASRError as exc:
        raise ConversionError(f"NeMo config 'decoder': {exc}") from None
    return {"frontend": frontend, "decoder": decoder}


def is_transducer(cfg: Dict[str, Any]) -> bool:
    """Whether a NeMo config is a transducer (EncDecRNNT*, TDT, hybrid RNNT + CTC): an RNNTDecoder section."""
    return _target(cfg.get("decoder")) == "RNNTDecoder"


def transducer_manifest(cfg: Dict[str, Any], files: Dict[str, bytes], prediction, joint, where: str,
                        with_ctc: bool = False):
    """(``{"frontend", "decoder"}``, the decoder's tensors) of a NeMo transducer whose prediction network and
    joint are given (from the .nemo's weights or from its decoder_joint ONNX export): vocabulary, blank (last,
    NeMo's blank_as_pad), max_symbols and TDT durations from the config; ``with_ctc``: a hybrid's CTC head as the
    entry's ``ctc`` (its graph output ``logprobs``).  The encoder graph's outputs are NeMo's ``outputs`` and
    ``encoded_lengths``."""
    from tinyasr_convert.nemo_blocks import subsampling_factor
    from tinyasr_convert.transducer import decoder_entry, nemo_decoding_settings

    frontend = frontend_from_config(cfg)
    vocabulary = vocabulary_from_config(cfg, files)
    settings = dict(
        output="outputs", lengths="encoded_lengths", blank=len(vocabulary), vocabulary=vocabulary,
        vocabulary_type="subword" if isinstance(cfg.get("tokenizer"), dict) else "chars",
        frame_seconds=frontend["hop_length"] / frontend["sample_rate"] * subsampling_factor(cfg.get("encoder")),
        **nemo_decoding_settings(cfg, where))
    if with_ctc:
        settings["ctc"] = manifest_from_nemo_config(cfg, files)["decoder"]
    decoder, tensors = decoder_entry(prediction, joint, where, **settings)
    return {"frontend": frontend, "decoder": decoder}, tensors


def _transducer_parts(archive: NemoArchive, compact: bool, structure: Dict[str, Any]):
    """(manifest, graph, tensors) of a transducer archive: the encoder graph (with a hybrid's CTC head beside
    it) and the prediction network + joint as decoder tensors."""
    from tinyasr_convert.nemo_blocks import build_graph
    from tinyasr_convert.transducer import nemo_prediction_and_joint

    cfg, name = archive.config, Path(archive.path).name
    hybrid = ctc_branch(cfg)[0] is not cfg
    if hybrid:
        ctc_cfg, ctc_weights = ctc_branch(cfg, archive.weights)
        graph, tensors = build_graph(ctc_cfg, ctc_weights, compact=compact, structure=structure, encoder_outputs=True)
    else:
        graph, tensors = build_graph(cfg, archive.weights, encoder_only=True, compact=compact, structure=structure)
    prediction, joint = nemo_prediction_and_joint(archive.weights, cfg, name)
    manifest, decoder_tensors = transducer_manifest(cfg, archive.files, prediction, joint, "NeMo config",
                                                    with_ctc=hybrid)
    clash = sorted(set(tensors) & set(decoder_tensors))
    if clash:
        raise ConversionError(f"tensor names {clash[:3]} are used by both the encoder and the transducer decoder")
    return manifest, graph, {**tensors, **decoder_tensors}


def convert_nemo(src, out, *, float16: bool = False, compact: bool = True, sparse: str = "auto") -> Path:
    """Convert a .nemo archive to a .tasr file; returns the output path.

    ``sparse``: how a transducer's pruned prediction-network LSTM weights are stored ("auto", "dense", "csr",
    "bsr": tinyasr_convert.transducer.encode_prediction_weights); unpruned ones stay dense.

    ``float16``: store Conv / Gemm weights as float16 (half the size), as ``tinyasr_convert.convert`` does.
    ``compact``: leave out what structured pruning zeroed in a Conformer (heads, FFN units, conv channels, whole
    modules; docs/pruned-conformers.md); the manifest's ``structure`` says what each layer kept.
    """
    from tinyasr_convert.nemo_blocks import build_graph
    from tinyasr_convert.onnx_import import TARGET_OPSET, Imported
    from tinyasr_convert.passes import fuse_after_compaction
    from tinyasr_convert.transducer import encode_prediction_weights

    import tinyasr
    from tinyasr.ops import MATRIX_WEIGHT_OPS
    from tinyasr.format.container import to_float16, write_model

    archive = read_nemo(src)
    name = Path(archive.path).name
    transducer = is_transducer(archive.config)  # a hybrid's CTC head rides along; else a hybrid is its CTC branch
    cfg, weights = (archive.config, archive.weights) if transducer else ctc_branch(archive.config, archive.weights)
    try:
        structure: Dict[str, Any] = {}
        if transducer:
            manifest, graph, tensors = _transducer_parts(archive, compact, structure)
            tensors, _ = encode_prediction_weights(manifest["decoder"], tensors, sparse)
        else:
            manifest = manifest_from_nemo_config(cfg, archive.files)
            graph, tensors = build_graph(cfg, weights, compact=compact, structure=structure)
        decoder, classes = manifest["decoder"], graph.outputs[0].shape[-1]
        if decoder["type"] == "ctc" and classes != len(decoder["vocabulary"]) + 1:
            raise ConversionError(f"the decoder has {classes} output classes but the vocabulary has "
                                  f"{len(decoder['vocabulary'])} tokens (plus the blank)")
    except ConversionError as exc:
        raise ConversionError(f"{name}: {exc}") from None
    fused = fuse_after_compaction(Imported(graph, dict(tensors)))  # the blocks are built compacted already
    graph, tensors = fused.graph, fused.tensors
    if float16:
        for node in graph.nodes:  # stored weights only: a Conformer's attention MatMuls multiply two activations
            weight = tensors.get(node.inputs[1]) if node.op in MATRIX_WEIGHT_OPS else None
            if weight is not None and weight.dtype == np.float32 and weight.ndim >= 2:
                tensors[node.inputs[1]] = to_float16(weight, node.inputs[1])
    manifest.update(opset=TARGET_OPSET, graph=graph.to_dict(), provenance={
        "source": name, "source_sha256": archive.sha256, "converter": f"tinyasr {tinyasr.__version__}",
        "source_format": "nemo", "float16_weights": bool(float16), "nemo_target": cfg.get("target"),
        "nemo_name": cfg.get("name"), "nemo_version": cfg.get("nemo_version"),
    })
    if structure:
        manifest["structure"] = structure
    out = Path(out)
    write_model(out, manifest, tensors)
    return out
