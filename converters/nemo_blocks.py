"""A NeMo ConvASREncoder + decoder config and its weights -> a tinyasr Graph and tensors.

Covers the Jasper-block family (QuartzNet, Citrinet, MatchboxNet, MarbleNet, Jasper)
with NeMo's CTC decoder (1x1 conv + log_softmax, blank last) or its
classification decoder (global pool + Linear).  The graph computes what NeMo's
ONNX export computes: masked convolutions are off (the export turns them off),
BatchNorm (eps 1e-3) is folded into the preceding conv, the block output's
residual add and activation are fused into one Conv, and the squeeze-excite
pooling of Citrinet is masked by the ``length`` input exactly as the export
masks it (padded frames zeroed, mean over the valid frames only).  Anything the
config asks for that is not reproduced here is a ConversionError naming the
field and its value, never a silently different network.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from tinyasr.errors import ConversionError
from tinyasr.format.graph import Graph, Node, ValueInfo

BN_EPS = 1e-3  # JasperBlock builds BatchNorm1d(eps=1e-3)
ONNX_FLOAT = 1  # TensorProto.FLOAT, for Cast

# NeMo's activation_registry -> (tinyasr activation, params); "Swish" is x * sigmoid(x), spelled out as two ops.
ACTIVATIONS = {
    "relu": ("Relu", ()),
    "hardtanh": ("Clip", (-1.0, 1.0)),  # nn.Hardtanh() with its defaults
    "swish": ("Swish", ()),
    "silu": ("Swish", ()),
    "identity": ("", ()),
}
ENCODER_KEYS = {"_target_", "feat_in", "activation", "conv_mask", "jasper", "normalization_mode", "residual_mode",
                "norm_groups", "frame_splicing", "init_mode", "quantize"}
BLOCK_KEYS = {"filters", "repeat", "kernel", "stride", "dilation", "dropout", "residual", "separable", "groups",
              "heads", "residual_mode", "se", "se_reduction_ratio", "se_context_size", "se_interpolation_mode",
              "kernel_size_factor", "stride_last", "future_context", "residual_dense"}
DECODER_KEYS = {"ConvASRDecoder": {"_target_", "feat_in", "num_classes", "vocabulary", "init_mode", "add_blank"},
                "ConvASRDecoderClassification": {"_target_", "feat_in", "num_classes", "init_mode", "return_logits",
                                                 "pooling_type"}}


def _target(section: Any) -> str:
    return str(section.get("_target_", "")).rsplit(".", 1)[-1] if isinstance(section, dict) else ""


def _first(value, field: str) -> int:
    """NeMo writes kernel/stride/dilation as one-element lists; a bare int is accepted too."""
    if isinstance(value, (list, tuple)) and len(value) >= 1:
        value = value[0]
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConversionError(f"{field}={value!r} is not a non-negative integer")
    return value


def _number(value, field: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConversionError(f"{field}={value!r} is not a number")
    return value


def _kernel_size(kernel: int, factor: float) -> int:
    """NeMo's compute_new_kernel_size: scale, then round an even size up to odd."""
    size = max(int(kernel * factor), 1)
    return size + 1 if size % 2 == 0 else size


def _pads(kernel: int, dilation: int, future_context: int) -> Tuple[int, int]:
    """NeMo's get_same_padding / get_asymtric_padding (including their quirks for dilation > 1)."""
    same = dilation * (kernel - 1) // 2
    if future_context < 0 or kernel <= future_context:
        return same, same
    if dilation > 1:
        return dilation * kernel - 1 - dilation * future_context, dilation * future_context
    return kernel - 1 - future_context, future_context


def subsampling_factor(encoder: Any) -> int:
    """The encoder's time stride: the product of the blocks' first stride (ConvASREncoder.subsampling_factor)."""
    factor = 1
    for i, block in enumerate((encoder or {}).get("jasper") or []):
        factor *= _first(block.get("stride", [1]), f"encoder.jasper[{i}].stride")
    return factor


# ---------------------------------------------------------------------------------------------------------------------
# Graph building helpers


class _Builder:
    """Collects nodes and tensors; takes weights from the state dict, checking their shapes."""

    def __init__(self, weights: Dict[str, np.ndarray]):
        self.weights = weights
        self.used: set = set()
        self.tensors: Dict[str, np.ndarray] = {}
        self.nodes: List[Node] = []
        self.names: Counter = Counter()
        self.where = ""  # the config field being translated, for messages

    def take(self, key: str, shape: Tuple[int, ...]) -> np.ndarray:
        if key not in self.weights:
            raise ConversionError(f"the checkpoint has no tensor {key!r}, which {self.where} needs")
        value = self.weights[key]
        if tuple(value.shape) != tuple(shape):
            raise ConversionError(f"tensor {key!r} has shape {tuple(value.shape)} but {self.where} implies {shape}")
        self.used.add(key)
        return np.asarray(value, np.float64)

    def take_conv(self, prefix: str, shape: Tuple[int, ...]) -> Tuple[np.ndarray, Optional[np.ndarray]]:
        """A conv's weight and optional bias: ``prefix.conv.*`` (MaskedConv1d) or ``prefix.*`` (plain Conv1d)."""
        base = f"{prefix}.conv" if f"{prefix}.conv.weight" in self.weights else prefix
        weight = self.take(f"{base}.weight", shape)
        bias = self.take(f"{base}.bias", shape[:1]) if f"{base}.bias" in self.weights else None
        return weight, bias

    def take_batchnorm(self, prefix: str, channels: int) -> Tuple[np.ndarray, np.ndarray]:
        """(scale, shift) with BN(y) = scale * y + shift in eval mode."""
        gamma, beta, mean, var = (self.take(f"{prefix}.{k}", (channels,))
                                  for k in ("weight", "bias", "running_mean", "running_var"))
        self.used.add(f"{prefix}.num_batches_tracked")
        scale = gamma / np.sqrt(var + BN_EPS)
        return scale, beta - mean * scale

    def const(self, name: str, array) -> str:
        self.tensors[name] = np.asarray(array)
        return name

    def node(self, op: str, inputs: Sequence[str], attrs: Optional[dict] = None, scope: str = "",
             output: Optional[str] = None) -> str:
        base = f"{scope}/{op}" if scope else op
        self.names[base] += 1
        name = base if self.names[base] == 1 else f"{base}_{self.names[base] - 1}"
        out = output or name
        self.nodes.append(Node(name, op, tuple(inputs), (out,), dict(attrs or {})))
        return out

    def conv(self, x: str, weight: np.ndarray, bias: Optional[np.ndarray], scope: str, *, stride=1, dilation=1,
             pads=(0, 0), group=1, activation=("", ()), residual: Optional[str] = None) -> str:
        """One Conv node (weights stored as float32); Relu / Clip / Sigmoid are fused, Swish follows as two ops."""
        act, params = activation
        inputs = [x, self.const(f"{scope}.weight", weight.astype(np.float32))]
        if bias is not None or residual is not None:
            inputs.append("" if bias is None else self.const(f"{scope}.bias", bias.astype(np.float32)))
        if residual is not None:
            inputs.append(residual)
        attrs = {"group": group, "strides": [stride], "dilations": [dilation], "pads": list(pads),
                 "kernel_shape": [int(weight.shape[2])]}
        if act not in ("", "Swish"):
            attrs["activation"] = act
            if params:
                attrs["activation_params"] = list(params)
        y = self.node("Conv", inputs, attrs, scope)
        return self.activate(y, activation, scope) if act == "Swish" else y

    def activate(self, x: str, activation, scope: str) -> str:
        act, params = activation
        if act == "":
            return x
        if act == "Swish":
            return self.node("Mul", [x, self.node("Sigmoid", [x], scope=scope)], scope=scope)
        if act == "Clip":
            low = self.const(f"{scope}.clip_min", np.float32(params[0]))
            high = self.const(f"{scope}.clip_max", np.float32(params[1]))
            return self.node("Clip", [x, low, high], scope=scope)
        return self.node(act, [x], scope=scope)


# ---------------------------------------------------------------------------------------------------------------------
# Encoder


class _Lengths:
    """The valid-frame count per item ([B] int64) through the encoder, and masks built from it (for SE only)."""

    def __init__(self, b: _Builder, value: Optional[str], track: bool):
        self.b, self.value, self.track = b, value, track and value is not None
        self.masks: Dict[str, Tuple[str, str]] = {}

    def after_conv(self, kernel: int, stride: int, dilation: int, pads: Tuple[int, int], scope: str) -> None:
        """MaskedConv1d.get_seq_len: unchanged for 'same' convs, else (len + pads - d(k-1) - 1) // stride + 1."""
        span = dilation * (kernel - 1)
        if not self.track or (stride == 1 and sum(pads) == span):
            return
        b = self.b
        offset = b.const(f"{scope}.len_offset", np.int64(sum(pads) - span - 1))
        shifted = b.node("Add", [self.value, offset], scope=scope)
        divided = b.node("Div", [shifted, b.const(f"{scope}.len_stride", np.int64(stride))], scope=scope)
        self.value = b.node("Add", [divided, b.const(f"{scope}.len_one", np.int64(1))], scope=scope)

    def mask(self, x: str, scope: str) -> Tuple[str, str]:
        """(mask [B,1,T] float32: 1 on valid frames, count [B,1,1]) for the current lengths and x's T."""
        if self.value not in self.masks:
            b = self.b
            steps = b.node("Range", [b.const(f"{scope}.zero", np.int64(0)),
                                     b.node("Gather", [b.node("Shape", [x], scope=scope),
                                                       b.const(f"{scope}.time_axis", np.int64(2))], {"axis": 0}, scope),
                                     b.const(f"{scope}.one", np.int64(1))], scope=scope)
            axis1 = b.const(f"{scope}.axis1", np.array([1], np.int64))
            valid = b.node("Less", [steps, b.node("Unsqueeze", [self.value, axis1], scope=scope)], scope=scope)
            mask = b.node("Cast", [b.node("Unsqueeze", [valid, axis1], scope=scope)], {"to": ONNX_FLOAT}, scope)
            count = b.node("ReduceSum", [mask, b.const(f"{scope}.axis2", np.array([2], np.int64))], {"keepdims": 1},
                           scope)
            self.masks[self.value] = (mask, count)
        return self.masks[self.value]


def _check_keys(section: Dict[str, Any], known: set, where: str) -> None:
    unknown = sorted(set(section) - known)
    if unknown:
        raise ConversionError(f"{where}: option(s) {unknown} are not supported (known: {sorted(known)})")


def _require(value, allowed, field: str) -> None:
    if value not in allowed:
        raise ConversionError(f"{field}={value!r} is not supported (supported: {list(allowed)})")


def _encoder(b: _Builder, enc: Dict[str, Any], x: str, length: Optional[str]) -> Tuple[str, int]:
    _require(_target(enc), ("ConvASREncoder",), "encoder._target_")
    _check_keys(enc, ENCODER_KEYS, "encoder")
    activation = str(enc.get("activation", "relu"))
    _require(activation, tuple(ACTIVATIONS), "encoder.activation")
    _require(enc.get("normalization_mode", "batch"), ("batch",), "encoder.normalization_mode")
    _require(enc.get("frame_splicing", 1), (1,), "encoder.frame_splicing")
    _require(bool(enc.get("quantize", False)), (False,), "encoder.quantize")
    blocks = enc.get("jasper")
    if not isinstance(blocks, list) or not blocks:
        raise ConversionError("encoder.jasper must be a non-empty list of blocks")
    lengths = _Lengths(b, length, track=bool(enc.get("conv_mask", True)))
    channels = _first(enc.get("feat_in"), "encoder.feat_in")
    for i, block in enumerate(blocks):
        if not isinstance(block, dict):
            raise ConversionError(f"encoder.jasper[{i}] is not a mapping")
        x, channels = _block(b, i, block, x, channels, lengths, ACTIVATIONS[activation],
                             enc.get("residual_mode", "add"))
    return x, channels


def _block(b: _Builder, index: int, cfg: Dict[str, Any], x: str, cin: int, lengths: _Lengths, act,
           residual_mode: str) -> Tuple[str, int]:
    """One JasperBlock: `repeat` x (conv [+ pointwise] + BN, act), then SE, the residual branch and act."""
    where, prefix = f"encoder.jasper[{index}]", f"encoder.encoder.{index}"
    _check_keys(cfg, BLOCK_KEYS, where)
    for key in ("filters", "repeat", "kernel", "stride", "dilation", "residual"):
        if key not in cfg:
            raise ConversionError(f"{where}: the required option {key!r} is missing")
    filters, repeat = _first(cfg["filters"], f"{where}.filters"), _first(cfg["repeat"], f"{where}.repeat")
    kernel = _kernel_size(_first(cfg["kernel"], f"{where}.kernel"),
                          _number(cfg.get("kernel_size_factor", 1.0), f"{where}.kernel_size_factor"))
    stride, dilation = _first(cfg["stride"], f"{where}.stride"), _first(cfg["dilation"], f"{where}.dilation")
    if min(filters, repeat, stride, dilation) < 1:
        raise ConversionError(f"{where}: filters, repeat, stride and dilation must be >= 1")
    if stride > 1 and dilation > 1:
        raise ConversionError(f"{where}: stride={stride} with dilation={dilation} (NeMo allows only one > 1)")
    _require(cfg.get("groups", 1), (1,), f"{where}.groups")
    _require(cfg.get("heads", -1), (-1,), f"{where}.heads")
    _require(bool(cfg.get("residual_dense", False)), (False,), f"{where}.residual_dense")
    mode = cfg.get("residual_mode", residual_mode)
    _require(mode, ("add", "stride_add"), f"{where}.residual_mode")
    se, stride_last = bool(cfg.get("se", False)), bool(cfg.get("stride_last", False))
    if se:
        _require(cfg.get("se_context_size", -1), (-1,), f"{where}.se_context_size")
    separable = bool(cfg.get("separable", False))
    pads = _pads(kernel, dilation, int(_number(cfg.get("future_context", -1), f"{where}.future_context")))
    b.where = f"{where} (filters={filters}, kernel={kernel}, separable={separable})"

    main_stride = stride if stride_last else stride ** repeat
    res_stride = stride if mode == "stride_add" else 1
    if cfg["residual"] and res_stride != main_stride:
        raise ConversionError(f"{where}: the residual branch strides by {res_stride} but the block by {main_stride} "
                              f"(residual_mode={mode!r}, stride_last={stride_last}); NeMo cannot run this either")
    block_input = x
    x, (weight, bias, name, options), j = _repeated_convs(b, prefix, x, cin, filters, repeat, kernel, stride,
                                                           dilation, pads, separable, stride_last, act, lengths)
    if cfg["residual"]:
        b.where = f"{where} residual"
        res_weight, res_bias = _residual_weights(b, prefix, cin, filters)
    if not se:  # act(last conv + residual) in one Conv
        residual = None
        if cfg["residual"]:
            residual = b.conv(block_input, res_weight, res_bias, f"{prefix}.res", stride=res_stride)
        return b.conv(x, weight, bias, name, residual=residual, activation=act, **options), filters
    ratio = int(_number(cfg.get("se_reduction_ratio", 8), f"{where}.se_reduction_ratio"))
    y = _squeeze_excite(b, prefix, j, b.conv(x, weight, bias, name, **options), filters, ratio, act, lengths, where)
    if cfg["residual"]:  # act(residual conv + SE output) in one Conv
        return b.conv(block_input, res_weight, res_bias, f"{prefix}.res", stride=res_stride, residual=y,
                      activation=act), filters
    return b.activate(y, act, f"{prefix}.mout"), filters


def _repeated_convs(b: _Builder, prefix: str, x: str, cin: int, filters: int, repeat: int, kernel: int, stride: int,
                    dilation: int, pads, separable: bool, stride_last: bool, act, lengths: _Lengths):
    """Emit the block's convs except the last one, which is returned unemitted so it can be fused with the
    residual / activation that follows.  Returns (x, (weight, bias, scope, conv options), mconv index after)."""
    channels, j = cin, 0
    for r in range(repeat):
        last = r == repeat - 1
        step = stride if (last or not stride_last) else 1
        scope = f"{prefix}.mconv.{j}"
        convs, j = _conv_bn(b, prefix, j, channels, filters, kernel, separable)
        lengths.after_conv(kernel, step, dilation, pads, scope)
        steps = [(convs[0], f"{scope}.dw" if separable else scope,
                  dict(stride=step, dilation=dilation, pads=pads, group=channels if separable else 1))]
        if separable:
            steps.append((convs[1], f"{scope}.pw", {}))
        for k, ((weight, bias), name, options) in enumerate(steps[:-1] if last else steps):
            x = b.conv(x, weight, bias, name, activation=act if k == len(steps) - 1 else ("", ()), **options)
        if not last:
            j += 2  # the activation and dropout modules
            channels = filters
    (weight, bias), name, options = steps[-1]
    return x, (weight, bias, name, options), j


def _conv_bn(b: _Builder, prefix: str, j: int, cin: int, cout: int, kernel: int, separable: bool):
    """The weights of one conv(+pointwise)+BN sub-block starting at mconv index j, BN folded into the last conv.

    Returns ([(weight, bias) of the spatial conv, and of the pointwise conv if separable], next mconv index).
    """
    if separable:
        convs = [b.take_conv(f"{prefix}.mconv.{j}", (cin, 1, kernel))]
        j += 1
        convs.append(b.take_conv(f"{prefix}.mconv.{j}", (cout, cin, 1)))
    else:
        convs = [b.take_conv(f"{prefix}.mconv.{j}", (cout, cin, kernel))]
    scale, shift = b.take_batchnorm(f"{prefix}.mconv.{j + 1}", cout)
    weight, bias = convs[-1]
    convs[-1] = (weight * scale[:, None, None], shift + (0 if bias is None else bias * scale))
    return convs, j + 2


def _residual_weights(b: _Builder, prefix: str, cin: int, cout: int):
    weight, bias = b.take_conv(f"{prefix}.res.0.0", (cout, cin, 1))
    scale, shift = b.take_batchnorm(f"{prefix}.res.0.1", cout)
    return weight * scale[:, None, None], shift + (0 if bias is None else bias * scale)


def _squeeze_excite(b: _Builder, prefix: str, j: int, x: str, channels: int, ratio: int, act, lengths: _Lengths,
                    where: str) -> str:
    """NeMo SqueezeExcite (global context): zero padded frames, mean over valid ones, fc-act-fc-sigmoid, scale."""
    scope = f"{prefix}.mconv.{j}"
    if ratio < 1 or channels // ratio < 1:
        raise ConversionError(f"{where}.se_reduction_ratio={ratio} is not usable with {channels} filters")
    b.where = f"{where} squeeze-excite (reduction ratio {ratio})"
    squeeze = b.take(f"{scope}.fc.0.weight", (channels // ratio, channels))
    excite = b.take(f"{scope}.fc.2.weight", (channels, channels // ratio))
    mask, count = lengths.mask(x, f"{prefix}.se_mask")
    masked = b.node("Mul", [x, mask], scope=scope)
    total = b.node("ReduceSum", [masked, b.const(f"{scope}.axis2", np.array([2], np.int64))], {"keepdims": 1}, scope)
    mean = b.node("Div", [total, count], scope=scope)
    hidden = b.conv(mean, squeeze[:, :, None], None, f"{scope}.fc.0", activation=act)
    gate = b.conv(hidden, excite[:, :, None], None, f"{scope}.fc.2", activation=("Sigmoid", ()))
    return b.node("Mul", [masked, gate], scope=scope)


# ---------------------------------------------------------------------------------------------------------------------
# Decoders and the whole model


def _ctc_decoder(b: _Builder, dec: Dict[str, Any], x: str, channels: int) -> ValueInfo:
    b.where = "decoder (ConvASRDecoder)"
    key = "decoder.decoder_layers.0.weight"
    if key not in b.weights:
        raise ConversionError(f"the checkpoint has no tensor {key!r}, which the CTC decoder needs")
    classes = int(b.weights[key].shape[0])
    num_classes = dec.get("num_classes", -1)
    vocabulary = dec.get("vocabulary") or []
    expected = (num_classes if isinstance(num_classes, int) and num_classes > 0 else len(vocabulary)) + 1
    if dec.get("add_blank", True) is not True:
        raise ConversionError(f"decoder.add_blank={dec.get('add_blank')!r} is not supported (only true)")
    if expected > 1 and classes != expected:
        raise ConversionError(f"tensor {key!r} has {classes} output classes but the config implies {expected} "
                              f"(num_classes {num_classes} + blank)")
    weight, bias = b.take_conv("decoder.decoder_layers.0", (classes, channels, 1))
    logits = b.conv(x, weight, bias, "decoder.decoder_layers.0")
    frames = b.node("Transpose", [logits], {"perm": [0, 2, 1]}, "decoder")
    b.node("LogSoftmax", [frames], {"axis": -1}, "decoder", output="logprobs")
    return ValueInfo("logprobs", "float32", ("batch", "frames", classes))


def _classification_decoder(b: _Builder, dec: Dict[str, Any], x: str, channels: int) -> ValueInfo:
    classes = _first(dec.get("num_classes"), "decoder.num_classes")
    pooling = dec.get("pooling_type", "avg")
    _require(pooling, ("avg", "max"), "decoder.pooling_type")
    b.where = f"decoder (ConvASRDecoderClassification, {classes} classes)"
    weight = b.take("decoder.decoder_layers.0.weight", (classes, channels)).astype(np.float32)
    bias = b.take("decoder.decoder_layers.0.bias", (classes,)).astype(np.float32)
    pooled = b.node("GlobalAveragePool" if pooling == "avg" else "GlobalMaxPool", [x], scope="decoder")
    flat = b.node("Flatten", [pooled], {"axis": 1}, "decoder")
    inputs = [flat, b.const("decoder.decoder_layers.0.weight", weight), b.const("decoder.decoder_layers.0.bias", bias)]
    if dec.get("return_logits", True):
        b.node("Gemm", inputs, {"transB": 1}, "decoder", output="logits")
    else:
        b.node("Softmax", [b.node("Gemm", inputs, {"transB": 1}, "decoder")], {"axis": -1}, "decoder", output="logits")
    return ValueInfo("logits", "float32", ("batch", classes))


def build_graph(cfg: Dict[str, Any], weights: Dict[str, np.ndarray]) -> Tuple[Graph, Dict[str, np.ndarray]]:
    """The NeMo model's ONNX-export computation as a tinyasr Graph plus its stored tensors.

    Inputs as NeMo's export names them: ``audio_signal`` [batch, features, time] float32, and ``length``
    [batch] int64 only when a squeeze-excite block uses it.  Output ``logprobs`` [batch, frames, classes]
    (CTC, blank last) or ``logits`` [batch, classes].
    """
    enc, dec = cfg.get("encoder"), cfg.get("decoder")
    if not isinstance(enc, dict) or not isinstance(dec, dict):
        raise ConversionError("NeMo config needs 'encoder' and 'decoder' sections")
    decoder_kind = _target(dec)
    _require(decoder_kind, tuple(DECODER_KEYS), "decoder._target_")
    _check_keys(dec, DECODER_KEYS[decoder_kind], "decoder")
    feat_in = _first(enc.get("feat_in"), "encoder.feat_in")
    uses_length = any(isinstance(blk, dict) and blk.get("se") for blk in enc.get("jasper") or [])
    b = _Builder(weights)
    inputs = [ValueInfo("audio_signal", "float32", ("batch", feat_in, "time"))]
    if uses_length:
        inputs.append(ValueInfo("length", "int64", ("batch",)))
    x, channels = _encoder(b, enc, "audio_signal", "length" if uses_length else None)
    build = _ctc_decoder if decoder_kind == "ConvASRDecoder" else _classification_decoder
    output = build(b, dec, x, channels)
    unused = sorted(k for k in weights if k.split(".", 1)[0] in ("encoder", "decoder") and k not in b.used)
    if unused:
        raise ConversionError(f"the checkpoint has {len(unused)} encoder/decoder tensor(s) the config does not "
                              f"account for, e.g. {unused[:4]} (adapters, or a config for another architecture?)")
    graph = Graph(inputs, [output], b.nodes)
    graph.validate(b.tensors)
    return graph, b.tensors
