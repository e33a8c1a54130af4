"""A NeMo encoder (ConvASREncoder or ConformerEncoder) + decoder config and its weights -> a tinyasr Graph and tensors.

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

ConformerEncoder (Conformer ``striding`` and FastConformer ``dw_striding``
subsampling, rel_pos attention, full context) is built from existing ops as its
export computes it: 2-D conv subsampling, computed relative positions (no
table: any input length), padding masks in attention and before the conv
module's depthwise conv, macaron half-step FFNs, BatchNorm folded; the
attention weights (rel-shift, scale, mask, softmax) are one RelPositionSoftmax.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
from tinyasr_convert import compaction
from tinyasr_convert.compaction import Kept
from tinyasr_convert.passes import position_rows

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
    """The encoder's time stride: ConformerEncoder's ``subsampling_factor``, or for ConvASREncoder the product of the
    blocks' first stride."""
    if _target(encoder) in ("ConformerEncoder", "RNNEncoder"):
        return _first(encoder.get("subsampling_factor", 4), "encoder.subsampling_factor")
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
        self.kept: Dict[str, Tuple[int, int]] = {}  # Conformer module scope -> (units, heads or channels kept, of)

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
    _require(_target(enc), ("ConvASREncoder", "ConformerEncoder"), "encoder._target_")  # a Conformer goes elsewhere
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
# ConformerEncoder (Conformer, FastConformer)

LN_EPS = 1e-5  # nn.LayerNorm and the conv module's nn.BatchNorm1d defaults
MASKED_SCORE = -10000.0  # RelPositionMultiHeadAttention masks scores with -INF_VAL, INF_VAL = 10000.0
CONFORMER_KEYS = {
    "_target_", "feat_in", "feat_out", "n_layers", "d_model", "subsampling", "subsampling_factor",
    "subsampling_conv_channels", "subsampling_conv_chunking_factor", "causal_downsampling", "reduction",
    "reduction_position", "reduction_factor", "ff_expansion_factor", "self_attention_model", "n_heads",
    "att_context_size", "att_context_probs", "att_context_style", "xscaling", "untie_biases", "pos_emb_max_len",
    "conv_kernel_size", "conv_norm_type", "conv_context_size", "use_bias", "dropout", "dropout_pre_encoder",
    "dropout_emb", "dropout_att", "stochastic_depth_drop_prob", "stochastic_depth_mode",
    "stochastic_depth_start_layer", "global_tokens", "global_tokens_spacing", "global_attn_separate",
    "use_pytorch_sdpa", "use_pytorch_sdpa_backends", "sync_max_audio_length",
}


def _conformer_settings(enc: Dict[str, Any]) -> Dict[str, Any]:
    """The ConformerEncoder options this builder reproduces; ConversionError naming the key of any other."""
    _check_keys(enc, CONFORMER_KEYS, "encoder")
    _require(enc.get("self_attention_model", "rel_pos"), ("rel_pos",), "encoder.self_attention_model")
    _require(enc.get("subsampling", "striding"), ("striding", "dw_striding"), "encoder.subsampling")
    _require(bool(enc.get("causal_downsampling", False)), (False,), "encoder.causal_downsampling")
    _require(enc.get("conv_norm_type", "batch_norm"), ("batch_norm",), "encoder.conv_norm_type")
    _require(enc.get("reduction"), (None,), "encoder.reduction")
    _require(enc.get("global_tokens", 0), (0,), "encoder.global_tokens")
    context = enc.get("att_context_size") or [-1, -1]
    if context != [-1, -1]:
        raise ConversionError(f"encoder.att_context_size={context!r} is not supported (only [-1, -1]: full context)")
    d_model, heads = _first(enc.get("d_model"), "encoder.d_model"), _first(enc.get("n_heads", 4), "encoder.n_heads")
    factor = _first(enc.get("subsampling_factor", 4), "encoder.subsampling_factor")
    if factor < 2 or factor & (factor - 1):
        raise ConversionError(f"encoder.subsampling_factor={factor} is not supported (a power of 2 from 2 up)")
    if heads < 1 or d_model % heads:
        raise ConversionError(f"encoder.n_heads={heads} does not divide encoder.d_model={d_model}")
    kernel = _first(enc.get("conv_kernel_size", 31), "encoder.conv_kernel_size")
    if kernel % 2 == 0 or enc.get("conv_context_size") not in (None, [(kernel - 1) // 2] * 2):
        raise ConversionError(f"encoder.conv_context_size={enc.get('conv_context_size')!r} with conv_kernel_size="
                              f"{kernel} is not supported (only symmetric: null or [(k-1)/2, (k-1)/2], k odd)")
    channels = enc.get("subsampling_conv_channels", -1)
    return dict(
        feat_in=_first(enc.get("feat_in"), "encoder.feat_in"), d_model=d_model, heads=heads, kernel=kernel,
        layers=_first(enc.get("n_layers"), "encoder.n_layers"), factor=factor, subsampling=enc.get("subsampling"),
        conv_channels=d_model if channels in (-1, None) else _first(channels, "encoder.subsampling_conv_channels"),
        ff_units=int(d_model * _number(enc.get("ff_expansion_factor", 4), "encoder.ff_expansion_factor")),
        xscaling=bool(enc.get("xscaling", True)), untie=bool(enc.get("untie_biases", True)),
        bias=bool(enc.get("use_bias", True)), feat_out=enc.get("feat_out", -1),
    )


def _conformer_encoder(b: _Builder, enc: Dict[str, Any], x: str, length: str,
                       compact: bool) -> Tuple[str, int, str]:
    """NeMo ConformerEncoder.forward as its ONNX export computes it: (output [B, d, T'], d, encoded lengths)."""
    cfg = dict(_conformer_settings(enc), compact=compact)
    d = cfg["d_model"]
    b.where = f"encoder.pre_encode ({cfg['subsampling']} x{cfg['factor']})"
    x, length = _subsampling(b, cfg, x, length)
    if cfg["xscaling"]:
        x = b.node("Mul", [x, b.const("encoder.xscale", np.float32(np.sqrt(d)))], scope="encoder.pos_enc")
    masks = _padding_masks(b, x, length)
    positions = _relative_positions(b, x, d)
    for i in range(cfg["layers"]):
        x = _conformer_layer(b, cfg, i, x, positions, masks)
    channels = d
    if isinstance(cfg["feat_out"], int) and cfg["feat_out"] > 0:
        b.where = "encoder.out_proj"
        x = _linear(b, "encoder.out_proj", x, d, cfg["feat_out"], True)
        channels = cfg["feat_out"]
    return b.node("Transpose", [x], {"perm": [0, 2, 1]}, "encoder"), channels, length


def _linear(b: _Builder, prefix: str, x: str, n_in: int, n_out: int, bias: bool, scale: float = 1.0) -> str:
    """torch Linear on [B, T, n_in] as MatMul (+ Add); ``scale`` (a power of 2: exact) folded into the weights."""
    return _dense(b, prefix, x, b.take(f"{prefix}.weight", (n_out, n_in)) * scale,
                  b.take(f"{prefix}.bias", (n_out,)) * scale if bias else None)


def _dense(b: _Builder, prefix: str, x: str, weight: np.ndarray, bias: Optional[np.ndarray]) -> str:
    """x @ weight.T (+ bias) as MatMul (+ Add), weight [n_out, n_in] stored transposed as float32."""
    y = b.node("MatMul", [x, b.const(f"{prefix}.weight_t", weight.T.astype(np.float32))], scope=prefix)
    if bias is not None:
        y = b.node("Add", [y, b.const(f"{prefix}.bias", bias.astype(np.float32))], scope=prefix)
    return y


def _layer_norm(b: _Builder, prefix: str, x: str, d: int) -> str:
    scale, shift = (b.const(f"{prefix}.{k}", b.take(f"{prefix}.{k}", (d,)).astype(np.float32))
                    for k in ("weight", "bias"))
    return b.node("LayerNormalization", [x, scale, shift], {"axis": -1, "epsilon": LN_EPS}, prefix)


def _shape_dim(b: _Builder, x: str, axis: int, scope: str) -> str:
    """Dim ``axis`` of x as a [1] int64 tensor."""
    return b.node("Gather", [b.node("Shape", [x], scope=scope), b.const(f"{scope}.axis{axis}", np.array([axis], np.int64))],
                  {"axis": 0}, scope)


def _subsampling(b: _Builder, cfg, x: str, length: str) -> Tuple[str, str]:
    """ConvSubsampling: [B, F, T] -> 2-D convs over (time, frequency) -> Linear -> [B, T', d]; lengths alike.
    ``striding``: (Conv2d 3x3 s2 p1 + ReLU) per factor 2; ``dw_striding``: the first conv dense, then depthwise
    3x3 s2 + pointwise 1x1 + ReLU.  As NeMo does, the input and every conv's output are zeroed on the frames
    past the item's length at that rate, so padding never reaches the valid frames."""
    scope, prefix = "encoder.pre_encode", "encoder.pre_encode.conv"
    y = b.node("Unsqueeze", [b.node("Transpose", [x], {"perm": [0, 2, 1]}, scope),
                             b.const(f"{scope}.axis1", np.array([1], np.int64))], scope=scope)  # [B, 1, T, F]
    y = _mask_frames(b, y, length, scope)
    stride2 = {"strides": [2, 2], "pads": [1, 1, 1, 1], "dilations": [1, 1]}
    channels, cin, index, freq = cfg["conv_channels"], 1, 0, cfg["feat_in"]

    def conv2d(cout, group, kernel, attrs, activation):
        nonlocal y, cin, index, length
        key = f"{prefix}.{index}"
        weight = b.take(f"{key}.weight", (cout, cin // group, kernel, kernel)).astype(np.float32)
        bias = b.take(f"{key}.bias", (cout,)).astype(np.float32)
        attrs = dict(attrs, group=group, kernel_shape=[kernel, kernel], **({"activation": "Relu"} if activation else {}))
        y = b.node("Conv", [y, b.const(f"{key}.weight", weight), b.const(f"{key}.bias", bias)], attrs, key)
        if attrs["strides"][0] == 2:  # calc_length: floor((L + 2 - 3) / 2) + 1
            halved = b.node("Div", [b.node("Add", [length, b.const(f"{scope}.minus_one", np.int64(-1))], scope=scope),
                                    b.const(f"{scope}.two", np.int64(2))], scope=scope)
            length = b.node("Add", [halved, b.const(f"{scope}.one", np.int64(1))], scope=scope)
        y = _mask_frames(b, y, length, scope)
        cin, index = cout, index + (2 if activation else 1)  # the ReLU is a module of its own

    for step in range(int(np.log2(cfg["factor"]))):
        if cfg["subsampling"] == "striding" or step == 0:
            conv2d(channels, 1, 3, stride2, True)
        else:
            conv2d(cin, cin, 3, stride2, False)
            conv2d(channels, 1, 1, {"strides": [1, 1], "pads": [0, 0, 0, 0], "dilations": [1, 1]}, True)
        freq = (freq - 1) // 2 + 1
    frames = b.node("Transpose", [y], {"perm": [0, 2, 1, 3]}, scope)  # [B, T', C, F']
    flat = b.node("Reshape", [frames, b.const(f"{scope}.flat", np.array([0, 0, -1], np.int64))], scope=scope)
    return _linear(b, "encoder.pre_encode.out", flat, channels * freq, cfg["d_model"], True), length


def _valid_frames(b: _Builder, x: str, axis: int, length: str, scope: str) -> str:
    """[B, T] bool: frame t (x's dim ``axis``) < the item's length."""
    frames = b.node("Squeeze", [_shape_dim(b, x, axis, scope), b.const(f"{scope}.axis0", np.array([0], np.int64))], scope=scope)
    steps = b.node("Range", [b.const(f"{scope}.zero", np.int64(0)), frames, b.const(f"{scope}.one", np.int64(1))],
                   scope=scope)
    return b.node("Less", [steps, b.node("Unsqueeze", [length, b.const(f"{scope}.axis1", np.array([1], np.int64))],
                                         scope=scope)], scope=scope)


def _mask_frames(b: _Builder, y: str, length: str, scope: str) -> str:
    """y [B, C, T, F] with frames past the length zeroed (NeMo's subsampling masks)."""
    valid = _valid_frames(b, y, 2, length, scope)
    mask = b.node("Cast", [b.node("Unsqueeze", [valid, b.const(f"{scope}.axes13", np.array([1, 3], np.int64))],
                                  scope=scope)], {"to": ONNX_FLOAT}, scope)
    return b.node("Mul", [y, mask], scope=scope)


def _padding_masks(b: _Builder, x: str, length: str) -> Tuple[str, str]:
    """(frames [B, 1, T] and attention [B, 1, T, T] bool masks: True where NeMo keeps the value)."""
    scope = "encoder.masks"
    valid = _valid_frames(b, x, 1, length, scope)
    axis1 = b.const(f"{scope}.axis1", np.array([1], np.int64))
    keys = b.node("Unsqueeze", [valid, axis1], scope=scope)  # [B, 1, T]
    queries = b.node("Unsqueeze", [valid, b.const(f"{scope}.axis2", np.array([2], np.int64))], scope=scope)
    pairs = b.node("And", [keys, queries], scope=scope)  # [B, T, T]
    return keys, b.node("Unsqueeze", [pairs, axis1], scope=scope)


def _relative_positions(b: _Builder, x: str, d: int) -> str:
    """RelPositionalEncoding's rows for T frames: positions T-1 down to -(T-1), [1, 2T-1, d], computed (no table;
    any length).  Row r of the virtual table holds position -1 - r; the rows are -T .. T-1."""
    scope = "encoder.pos_enc"
    frames = _shape_dim(b, x, 1, scope)
    start = b.node("Neg", [frames], scope=scope)
    end = b.node("Sub", [frames, b.const(f"{scope}.one", np.array([1], np.int64))], scope=scope)
    b.nodes.extend(position_rows(f"{scope}/rows", start, end, f"{scope}.pos_emb", -1, -1, d, b.tensors))
    return f"{scope}.pos_emb"


def _conformer_layer(b: _Builder, cfg, i: int, x: str, positions: str, masks: Tuple[str, str]) -> str:
    """ConformerLayer: half-step FFN, rel-pos self-attention, conv module, half-step FFN, each pre-LayerNorm with
    a residual add, then LayerNorm.  With ``cfg["compact"]`` the heads, FFN units and conv channels that pruning
    zeroed are left out (tinyasr_convert.compaction), and a module with nothing left is skipped."""
    prefix, d = f"encoder.layers.{i}", cfg["d_model"]
    b.where = (f"encoder layer {i} (d_model={d}, n_heads={cfg['heads']}, ff_units={cfg['ff_units']}; pruned heads, "
               "units and channels stay in the checkpoint as zeros, at the configured shapes)")
    modules = (
        ("norm_feed_forward1", lambda y: _feed_forward(b, cfg, f"{prefix}.feed_forward1", y)),
        ("norm_self_att", lambda y: _self_attention(b, cfg, i, y, positions, masks[1])),
        ("norm_conv", lambda y: _conv_module(b, cfg, f"{prefix}.conv", y, masks[0])),
        ("norm_feed_forward2", lambda y: _feed_forward(b, cfg, f"{prefix}.feed_forward2", y)),
    )
    for norm, module in modules:
        x = _residual(b, prefix, norm, x, d, module)
    return _layer_norm(b, f"{prefix}.norm_out", x, d)


def _residual(b: _Builder, prefix: str, norm: str, x: str, d: int, module) -> str:
    """x + module(LayerNorm(x)); ``module`` gets a function that emits the LayerNorm and returns its output, or
    returns the constant vector [d] it compacted to without calling it: then x + constant (x when it is 0)."""
    out = module(lambda: _layer_norm(b, f"{prefix}.{norm}", x, d))
    if isinstance(out, str):
        return b.node("Add", [x, out], scope=prefix)
    for key in ("weight", "bias"):  # a skipped module's LayerNorm: checked and accounted for, not needed
        b.take(f"{prefix}.{norm}.{key}", (d,))
    if not out.any():
        return x
    return b.node("Add", [x, b.const(f"{prefix}.{norm[5:]}.skipped_output", out.astype(np.float32))], scope=prefix)


def _feed_forward(b: _Builder, cfg, prefix: str, normed):
    """linear1 -> Swish -> linear2, times the layer's fc_factor 0.5 (folded into linear2); only the kept units."""
    d, units = cfg["d_model"], cfg["ff_units"]
    w1, b1 = b.take(f"{prefix}.linear1.weight", (units, d)), _linear_bias(b, cfg, f"{prefix}.linear1", units)
    w2, b2 = b.take(f"{prefix}.linear2.weight", (d, units)) * 0.5, _linear_bias(b, cfg, f"{prefix}.linear2", d) * 0.5
    kept = compaction.feed_forward_units(w1, b1, w2, b2) if cfg["compact"] else Kept(np.arange(units), b2)
    b.kept[prefix] = (int(kept.indices.size), units)
    if kept.skipped:
        return kept.bias
    rows = kept.indices
    hidden = _dense(b, f"{prefix}.linear1", normed(), w1[rows], b1[rows] if cfg["bias"] else None)
    hidden = b.activate(hidden, ("Swish", ()), prefix)
    return _dense(b, f"{prefix}.linear2", hidden, w2[:, rows], _needed(kept.bias, cfg["bias"]))


def _self_attention(b: _Builder, cfg, i: int, normed, positions: str, keep: str):
    """RelPositionMultiHeadAttention (Transformer-XL): scores = ((q + u) k^T + rel_shift((q + v) p^T)) / sqrt(d_k),
    masked with -10000 where a query or key frame is padding, softmax, masked to 0 (one RelPositionSoftmax node),
    times the values; only the kept heads (each d_k wide, as NeMo's)."""
    prefix, d, heads = f"encoder.layers.{i}.self_attn", cfg["d_model"], cfg["heads"]
    dk = d // heads
    names = ("linear_q", "linear_k", "linear_v", "linear_out")
    w = {n: b.take(f"{prefix}.{n}.weight", (d, d)) for n in names}
    bias = {n: _linear_bias(b, cfg, f"{prefix}.{n}", d) for n in names}
    if cfg["compact"]:
        kept = compaction.attention_heads(w["linear_v"], bias["linear_v"], w["linear_out"], bias["linear_out"], heads)
    else:
        kept = Kept(np.arange(heads), bias["linear_out"])
    b.kept[prefix] = (int(kept.indices.size), heads)
    bias_prefix = prefix if cfg["untie"] else "encoder"
    pos_bias = {n: b.take(f"{bias_prefix}.{n}", (heads, dk)) for n in ("pos_bias_u", "pos_bias_v")}
    pos_weight = b.take(f"{prefix}.linear_pos.weight", (d, d))
    if kept.skipped:
        return kept.bias
    h, rows, x = int(kept.indices.size), compaction.head_rows(kept.indices, dk), normed()
    split = b.const(f"{prefix}.heads_shape", np.array([0, 0, h, dk], np.int64))

    def project(name):  # [B, T, h, dk]
        y = _dense(b, f"{prefix}.{name}", x, w[name][rows], bias[name][rows] if cfg["bias"] else None)
        return b.node("Reshape", [y, split], scope=prefix)

    q, k, v = project("linear_q"), project("linear_k"), project("linear_v")
    heads_first = {"perm": [0, 2, 1, 3]}
    q_u, q_v = (b.node("Transpose", [b.node("Add", [q, b.const(f"{prefix}.{name}", pos_bias[name][kept.indices].astype(
        np.float32))], scope=prefix)], heads_first, prefix) for name in ("pos_bias_u", "pos_bias_v"))
    keys_t = b.node("Transpose", [k], {"perm": [0, 2, 3, 1]}, prefix)  # [B, h, dk, T]
    values = b.node("Transpose", [v], heads_first, prefix)
    pos = b.node("MatMul", [positions, b.const(f"{prefix}.linear_pos.weight_t",
                                               pos_weight[rows].T.astype(np.float32))], scope=prefix)
    pos_t = b.node("Transpose", [b.node("Reshape", [pos, b.const(f"{prefix}.pos_shape", np.array(
        [1, -1, h, dk], np.int64))], scope=prefix)], {"perm": [0, 2, 3, 1]}, prefix)  # [1, h, dk, 2T-1]
    content = b.node("MatMul", [q_u, keys_t], scope=prefix)  # [B, h, T, T]
    position = b.node("MatMul", [q_v, pos_t], scope=prefix)  # [B, h, T, 2T-1]
    weights = b.node("RelPositionSoftmax", [content, position, keep],
                     {"scale": float(np.float32(np.sqrt(dk))), "masked_value": MASKED_SCORE}, prefix)
    out = b.node("Transpose", [b.node("MatMul", [weights, values], scope=prefix)], heads_first, prefix)
    out = b.node("Reshape", [out, b.const(f"{prefix}.merge", np.array([0, 0, h * dk], np.int64))], scope=prefix)
    return _dense(b, f"{prefix}.linear_out", out, w["linear_out"][:, rows], _needed(kept.bias, cfg["bias"]))


def _conv_module(b: _Builder, cfg, prefix: str, normed, keep: str):
    """ConformerConvolution: pointwise (2d) -> GLU -> padding zeroed -> depthwise (BatchNorm folded) -> Swish ->
    pointwise, on [B, d, T]; only the kept channels (each with its GLU pair: value row c, gate row d + c)."""
    d, kernel = cfg["d_model"], cfg["kernel"]
    w1, b1 = b.take_conv(f"{prefix}.pointwise_conv1", (2 * d, d, 1))
    weight, bias = b.take_conv(f"{prefix}.depthwise_conv", (d, 1, kernel))
    gamma, beta, mean, var = (b.take(f"{prefix}.batch_norm.{k}", (d,))
                              for k in ("weight", "bias", "running_mean", "running_var"))
    b.used.add(f"{prefix}.batch_norm.num_batches_tracked")
    scale = gamma / np.sqrt(var + LN_EPS)
    weight, bias = weight * scale[:, None, None], (0 if bias is None else bias) * scale + beta - mean * scale
    w2, b2 = b.take_conv(f"{prefix}.pointwise_conv2", (d, d, 1))
    out_bias = np.zeros(d) if b2 is None else b2
    if cfg["compact"]:
        kept = compaction.glu_channels(w1[:d, :, 0], np.zeros(d) if b1 is None else b1[:d], weight[:, 0, :], bias,
                                       w2[:, :, 0], out_bias)
    else:
        kept = Kept(np.arange(d), out_bias)
    b.kept[prefix] = (int(kept.indices.size), d)
    if kept.skipped:
        return kept.bias
    c = kept.indices
    pair = np.concatenate([c, d + c])
    y = b.node("Transpose", [normed()], {"perm": [0, 2, 1]}, prefix)
    y = b.conv(y, w1[pair], None if b1 is None else b1[pair], f"{prefix}.pointwise_conv1")
    half = b.const(f"{prefix}.glu_split", np.array([c.size, c.size], np.int64))
    value, gate = f"{prefix}.glu_value", f"{prefix}.glu_gate"
    b.nodes.append(Node(f"{prefix}/Split", "Split", (y, half), (value, gate), {"axis": 1}))
    y = b.node("Mul", [value, b.node("Sigmoid", [gate], scope=prefix)], scope=prefix)
    y = b.node("Where", [keep, y, b.const(f"{prefix}.zero", np.float32(0))], scope=prefix)
    pad = (kernel - 1) // 2
    y = b.conv(y, weight[c], bias[c], f"{prefix}.depthwise_conv", pads=(pad, pad), group=int(c.size),
               activation=("Swish", ()))
    y = b.conv(y, w2[:, c], _needed(kept.bias, b2 is not None), f"{prefix}.pointwise_conv2")
    return b.node("Transpose", [y], {"perm": [0, 2, 1]}, prefix)


def _linear_bias(b: _Builder, cfg, prefix: str, n_out: int) -> np.ndarray:
    """A Linear's bias, zeros when the config has none (use_bias: false)."""
    return b.take(f"{prefix}.bias", (n_out,)) if cfg["bias"] else np.zeros(n_out)


def _needed(bias: np.ndarray, declared: bool) -> Optional[np.ndarray]:
    """An output bias: kept when the layer has one or when folded constants made it non-zero."""
    return bias if declared or bias.any() else None


# ---------------------------------------------------------------------------------------------------------------------
# RNNEncoder (NeMo's LSTM encoder, e.g. lstm_transducer_bpe.yaml): NeMo cannot export it (torch.onnx refuses LSTMs
# with projections), so the .nemo archive is its only source.

RNN_KEYS = {"_target_", "feat_in", "n_layers", "d_model", "proj_size", "rnn_type", "bidirectional", "subsampling",
            "subsampling_factor", "subsampling_conv_channels", "dropout"}


def _rnn_encoder(b: _Builder, enc: Dict[str, Any], x: str, length: str) -> Tuple[str, int, str]:
    """RNNEncoder.forward: stacking subsampling (time padded with zeros to a multiple of the factor, ``factor``
    frames concatenated, Linear to proj_size; lengths ``(len + pad) // factor`` with the pad of the padded batch,
    as NeMo computes them), then per layer an LSTM with torch's ``proj_size`` (tinyasr's projection input;
    bidirectional: proj_size / 2 per direction, concatenated) and a LayerNorm.  Like NeMo's, the LSTMs are not
    length-masked: they run over the batch's padding.  -> (output [B, proj, T'], proj, encoded lengths)."""
    from tinyasr_convert.transducer import torch_lstm_gates

    _check_keys(enc, RNN_KEYS, "encoder")
    _require(enc.get("rnn_type", "lstm"), ("lstm",), "encoder.rnn_type")
    _require(enc.get("subsampling", "striding"), ("stacking",), "encoder.subsampling")
    factor = _first(enc.get("subsampling_factor", 4), "encoder.subsampling_factor")
    feat_in, layers = _first(enc.get("feat_in"), "encoder.feat_in"), _first(enc.get("n_layers"), "encoder.n_layers")
    hidden, proj = _first(enc.get("d_model"), "encoder.d_model"), _first(enc.get("proj_size", -1), "encoder.proj_size")
    directions = ("", "_reverse") if bool(enc.get("bidirectional", True)) else ("",)
    if factor < 2 or proj < 1 or proj % len(directions) or not 0 < proj // len(directions) < hidden:
        raise ConversionError(f"encoder.subsampling_factor={factor}, proj_size={proj}, d_model={hidden} are not "
                              "supported (factor >= 2; 0 < proj_size per direction < d_model)")
    scope = "encoder.pre_encode"
    b.where = f"encoder.pre_encode (stacking x{factor})"
    y = b.node("Transpose", [x], {"perm": [0, 2, 1]}, scope)  # [B, T, F]
    frames = _shape_dim(b, y, 1, scope)
    factor_t = b.const(f"{scope}.factor", np.array([factor], np.int64))
    rounded = b.node("Mul", [b.node("Div", [b.node("Add", [frames, b.const(f"{scope}.round_up", np.array(
        [factor - 1], np.int64))], scope=scope), factor_t], scope=scope), factor_t], scope=scope)
    pad = b.node("Sub", [rounded, frames], scope=scope)  # [1]
    zeros = b.const(f"{scope}.zeros", np.zeros(4, np.int64))
    end_zero = b.const(f"{scope}.zero", np.zeros(1, np.int64))
    pads = b.node("Concat", [zeros, pad, end_zero], {"axis": 0}, scope)  # [0, 0, 0, 0, pad, 0]
    y = b.node("Pad", [y, pads], scope=scope)
    y = b.node("Reshape", [y, b.const(f"{scope}.stacked", np.array([0, -1, factor * feat_in], np.int64))], scope=scope)
    y = _linear(b, f"{scope}.proj_out", y, factor * feat_in, proj, True)
    length = b.node("Div", [b.node("Add", [length, pad], scope=scope), factor_t], scope=scope)
    width = proj // len(directions)
    for i in range(layers):
        key = f"encoder.layers.{3 * i}"  # LSTM, LayerNorm, Dropout per layer
        b.where = f"encoder layer {i} (LSTM d_model={hidden}, proj_size={proj})"

        def stacked(name, shape, gates=True):
            arrays = [b.take(f"{key}.{name}_l0{d}", shape) for d in directions]
            return np.stack([torch_lstm_gates(a) if gates else a for a in arrays]).astype(np.float32)

        bias = np.concatenate([stacked("bias_ih", (4 * hidden,)), stacked("bias_hh", (4 * hidden,))], axis=1)
        inputs = [y, b.const(f"{key}.W", stacked("weight_ih", (4 * hidden, proj))),
                  b.const(f"{key}.R", stacked("weight_hh", (4 * hidden, width))), b.const(f"{key}.B", bias),
                  "", "", "", "", b.const(f"{key}.projection", stacked("weight_hr", (width, hidden), False))]
        attrs = {"hidden_size": hidden, "layout": 1,
                 "direction": "bidirectional" if len(directions) == 2 else "forward"}
        y = b.node("LSTM", inputs, attrs, key)  # [B, T, directions, width]
        y = b.node("Reshape", [y, b.const(f"{key}.joined", np.array([0, 0, -1], np.int64))], scope=key)
        y = _layer_norm(b, f"encoder.layers.{3 * i + 1}", y, proj)
    return b.node("Transpose", [y], {"perm": [0, 2, 1]}, "encoder"), proj, length


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


def build_graph(cfg: Dict[str, Any], weights: Dict[str, np.ndarray], encoder_only: bool = False,
                compact: bool = True, structure: Optional[Dict[str, Any]] = None,
                encoder_outputs: bool = False) -> Tuple[Graph, Dict[str, np.ndarray]]:
    """The NeMo model's ONNX-export computation as a tinyasr Graph plus its stored tensors.

    Inputs as NeMo's export names them: ``audio_signal`` [batch, features, time] float32, and ``length``
    [batch] int64 when the encoder uses it (a Conformer; a squeeze-excite block).  Output ``logprobs``
    [batch, frames, classes] (CTC, blank last) or ``logits`` [batch, classes].  ``encoder_only`` (Conformer
    encoders, e.g. of a transducer): outputs ``outputs`` [batch, d_model, frames] and ``encoded_lengths``
    [batch] as NeMo's encoder export names them; the decoder section is not read.  ``encoder_outputs``: those two
    outputs first, then the decoder's (a hybrid transducer's CTC head beside the transducer's encoder output).
    RNNEncoder (LSTM) encoders are built for transducers (``encoder_only``).
    ``compact`` (Conformer encoders): leave out the attention heads, FFN units, conv-module channels and whole
    modules that structured pruning zeroed (outputs unchanged, up to float32 rounding of folded biases); a
    ``structure`` dict given is filled with what was kept per layer (see ``conformer_structure``).
    """
    enc, dec = cfg.get("encoder"), cfg.get("decoder")
    if not isinstance(enc, dict) or not (encoder_only or isinstance(dec, dict)):
        raise ConversionError("NeMo config needs 'encoder' and 'decoder' sections")
    conformer, rnn = _target(enc) == "ConformerEncoder", _target(enc) == "RNNEncoder"
    if encoder_only:
        _require(_target(enc), ("ConformerEncoder", "RNNEncoder"), "encoder._target_ (encoder only)")
    else:
        decoder_kind = _target(dec)
        _require(decoder_kind, tuple(DECODER_KEYS), "decoder._target_")
        _check_keys(dec, DECODER_KEYS[decoder_kind], "decoder")
    feat_in = _first(enc.get("feat_in"), "encoder.feat_in")
    uses_length = conformer or rnn or any(isinstance(blk, dict) and blk.get("se") for blk in enc.get("jasper") or [])
    b = _Builder(weights)
    inputs = [ValueInfo("audio_signal", "float32", ("batch", feat_in, "time"))]
    if uses_length:
        inputs.append(ValueInfo("length", "int64", ("batch",)))
    if conformer:
        x, channels, lengths = _conformer_encoder(b, enc, "audio_signal", "length", compact)
    elif rnn:
        x, channels, lengths = _rnn_encoder(b, enc, "audio_signal", "length")
    else:
        x, channels = _encoder(b, enc, "audio_signal", "length" if uses_length else None)
    outputs = []
    if encoder_only or encoder_outputs:
        b.node("Identity", [x], scope="encoder", output="outputs")
        b.node("Identity", [lengths], scope="encoder", output="encoded_lengths")
        outputs = [ValueInfo("outputs", "float32", ("batch", channels, "frames")),
                   ValueInfo("encoded_lengths", "int64", ("batch",))]
    if not encoder_only:
        build = _ctc_decoder if decoder_kind == "ConvASRDecoder" else _classification_decoder
        outputs.append(build(b, dec, x, channels))
    sections = ("encoder",) if encoder_only else ("encoder", "decoder")
    unused = sorted(k for k in weights if k.split(".", 1)[0] in sections and k not in b.used)
    if unused:
        raise ConversionError(f"the checkpoint has {len(unused)} encoder/decoder tensor(s) the config does not "
                              f"account for, e.g. {unused[:4]} (adapters, or a config for another architecture?)")
    graph = Graph(inputs, outputs, b.nodes)
    graph.validate(b.tensors)
    if conformer and structure is not None:
        structure.update(conformer_structure(b.kept))
    return graph, b.tensors


STRUCTURE_MODULES = ("feed_forward1", "self_attn", "conv", "feed_forward2")  # a ConformerLayer's, in order


def conformer_structure(kept: Dict[str, Tuple[int, int]]) -> Dict[str, Any]:
    """The manifest's ``structure`` entry: per layer, [kept, of] for each module (FFN units, attention heads,
    conv-module channels; 0 kept: the module is skipped), for `tinyasr info`."""
    layers = []
    while f"encoder.layers.{len(layers)}.conv" in kept:
        prefix = f"encoder.layers.{len(layers)}"
        layers.append({m: list(kept[f"{prefix}.{m}"]) for m in STRUCTURE_MODULES})
    return {"family": "conformer", "layers": layers}
