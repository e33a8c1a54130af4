"""A small Conformer-CTC in plain torch that is NeMo's ``EncDecCTCModel`` (ConformerEncoder + ConvASRDecoder) by
parameter names, config and computation, so that the state dict saved as a ``.nemo`` archive is what
``tinyasr convert`` reads (converters/nemo.py) and tinyasr runs what was trained here.

What is reproduced, as NeMo computes it and as tinyasr's importer rebuilds it (converters/nemo_blocks.py):
``striding`` subsampling (two Conv2d 3x3 stride 2 + ReLU, frames past each item's length zeroed before and after
every conv, then a Linear), xscaling by sqrt(d_model), relative positions (sinusoids of positions T-1 .. -(T-1),
computed for any length), Transformer-XL attention with ``pos_bias_u`` / ``pos_bias_v`` and NeMo's rel_shift,
padding masked with -10000 before the softmax and 0 after it, the conv module (pointwise -> GLU -> padding zeroed
-> depthwise -> BatchNorm -> Swish -> pointwise), macaron half-step FFNs, per-module pre-LayerNorm and a final
LayerNorm, and the CTC decoder (1x1 Conv1d + log_softmax, blank last).

For pruning (prune.py) a ``Gates`` object can be attached: hard-concrete gates (Louizos et al. 2018) over whole
modules, attention heads and FFN hidden units, as Jiang et al. 2023 prune Conformers.  The gates live outside the
``encoder.`` / ``decoder.`` parameters, so the .nemo archive never carries them; prune.py folds them into the
weights before saving.
"""

from __future__ import annotations

import io
import math
import tarfile

import torch
import torch.nn.functional as F
from torch import nn

from recipes.digits import data

MASKED_SCORE = -10000.0  # RelPositionMultiHeadAttention fills masked scores with -INF_VAL, INF_VAL = 10000
NEMO_TARGET = "nemo.collections.asr.models.ctc_models.EncDecCTCModel"
MODULES = ("feed_forward1", "self_attn", "conv", "feed_forward2")  # a ConformerLayer's, in order

DEFAULTS = {"d_model": 96, "n_layers": 4, "n_heads": 4, "ff_expansion_factor": 4, "conv_kernel_size": 15,
            "subsampling_conv_channels": 64, "dropout": 0.1}  # 1,800 steps of batch 16: 42 min on 1 shared thread


def preprocessor_config() -> dict:
    """The NeMo ``preprocessor`` section whose tinyasr front end (FrontendConfig.from_nemo) is the digits recipe's
    ``data.FRONTEND`` except for ``pad_seconds``, which NeMo cannot express: the converted file gets that from
    ``recipes.digits.set_pad`` (train.py checks the equality)."""
    return {
        "_target_": "nemo.collections.asr.modules.AudioToMelSpectrogramPreprocessor",
        "sample_rate": data.SAMPLE_RATE, "normalize": "per_feature", "window_size": 0.025, "window_stride": 0.01,
        "window": "hann", "features": 64, "n_fft": 256, "lowfreq": 0.0, "highfreq": 4000.0, "preemph": 0.97,
        "log": True, "frame_splicing": 1, "dither": 0.0, "pad_to": 0, "pad_value": 0.0,
    }


def nemo_config(d_model: int, n_layers: int, n_heads: int, ff_expansion_factor: int, conv_kernel_size: int,
                subsampling_conv_channels: int, dropout: float) -> dict:
    """The model_config.yaml of this model: NeMo's EncDecCTCModel keys, the digit words as vocabulary."""
    vocabulary = list(data.VOCABULARY)
    return {
        "target": NEMO_TARGET,
        "sample_rate": data.SAMPLE_RATE,
        "labels": vocabulary,
        "preprocessor": preprocessor_config(),
        "encoder": {
            "_target_": "nemo.collections.asr.modules.ConformerEncoder",
            "feat_in": 64, "feat_out": -1, "n_layers": n_layers, "d_model": d_model,
            "subsampling": "striding", "subsampling_factor": 4, "subsampling_conv_channels": subsampling_conv_channels,
            "causal_downsampling": False, "ff_expansion_factor": ff_expansion_factor,
            "self_attention_model": "rel_pos", "n_heads": n_heads, "att_context_size": [-1, -1],
            "xscaling": True, "untie_biases": True, "pos_emb_max_len": 5000, "conv_kernel_size": conv_kernel_size,
            "conv_norm_type": "batch_norm", "dropout": dropout, "dropout_pre_encoder": dropout, "dropout_emb": 0.0,
            "dropout_att": dropout,
        },
        "decoder": {
            "_target_": "nemo.collections.asr.modules.ConvASRDecoder",
            "feat_in": d_model, "num_classes": len(vocabulary), "vocabulary": vocabulary,
        },
    }


def output_lengths(lengths: torch.Tensor) -> torch.Tensor:
    """Valid encoder frames for valid feature frames: NeMo's calc_length, floor((L + 2 - 3) / 2) + 1, twice."""
    for _ in range(2):
        lengths = torch.div(lengths - 1, 2, rounding_mode="floor") + 1
    return lengths


# ---------------------------------------------------------------------------------------------------------------------
# Hard-concrete gates


class HardConcrete(nn.Module):
    """``n`` hard-concrete gates (Louizos, Welling, Kingma 2018): z = min(1, max(0, s (zeta - gamma) + gamma)),
    s = sigmoid((log u - log(1 - u) + log_alpha) / beta), u ~ U(0, 1) in training; in evaluation
    s = sigmoid(log_alpha), with the gates expected to be 0 set to 0 (see ``forward``).  ``log_alpha`` is
    ``LOG_ALPHA_SCALE`` times the stored parameter: the gates then move that much faster than the weights under
    the one learning rate that the shared training loop uses."""

    BETA, GAMMA, ZETA = 2.0 / 3.0, -0.1, 1.1
    LOG_ALPHA_SCALE = 30.0

    def __init__(self, n: int, init_log_alpha: float = 2.0):
        super().__init__()
        self.raw = nn.Parameter(torch.full((n,), init_log_alpha / self.LOG_ALPHA_SCALE))

    @property
    def log_alpha(self) -> torch.Tensor:
        return self.raw * self.LOG_ALPHA_SCALE

    def forward(self) -> torch.Tensor:
        if self.training:
            u = torch.rand_like(self.raw).clamp(1e-6, 1 - 1e-6)
            s = torch.sigmoid((torch.log(u) - torch.log1p(-u) + self.log_alpha) / self.BETA)
            return (s * (self.ZETA - self.GAMMA) + self.GAMMA).clamp(0.0, 1.0)
        # Evaluation: the gate's median value alone stays above 0 for gates that are zero most of the time
        # (log_alpha down to -2.4, P(z != 0) down to 0.31), so the fixed mask would keep far more than the expected
        # L0 says; as CoFi (Xia et al. 2022) does, the gates expected to be zero, round(n - sum P(z != 0)) of
        # them, those of lowest log_alpha, are set to 0.
        z = (torch.sigmoid(self.log_alpha) * (self.ZETA - self.GAMMA) + self.GAMMA).clamp(0.0, 1.0)
        zeros = round(float(self.raw.numel() - self.expected_l0().sum()))
        if zeros > 0:
            z = z.clone()
            z[torch.argsort(self.log_alpha)[:zeros]] = 0.0
        return z

    def expected_l0(self) -> torch.Tensor:
        """P(z != 0) per gate, the closed form sigmoid(log_alpha - beta log(-gamma / zeta))."""
        return torch.sigmoid(self.log_alpha - self.BETA * math.log(-self.GAMMA / self.ZETA))


class Gates(nn.Module):
    """Per layer: 4 module gates (MODULES order), one gate per attention head and one per FFN hidden unit of each
    FFN.  ``sample()`` draws (training) or fixes (evaluation) all of them for one forward pass."""

    def __init__(self, n_layers: int, n_heads: int, ff_units: int):
        super().__init__()
        self.modules_ = nn.ModuleList(HardConcrete(len(MODULES)) for _ in range(n_layers))
        self.heads = nn.ModuleList(HardConcrete(n_heads) for _ in range(n_layers))
        self.ffn1 = nn.ModuleList(HardConcrete(ff_units) for _ in range(n_layers))
        self.ffn2 = nn.ModuleList(HardConcrete(ff_units) for _ in range(n_layers))

    def sample(self) -> list[dict[str, torch.Tensor]]:
        return [{"modules": m(), "heads": h(), "feed_forward1": f1(), "feed_forward2": f2()}
                for m, h, f1, f2 in zip(self.modules_, self.heads, self.ffn1, self.ffn2)]


# ---------------------------------------------------------------------------------------------------------------------
# The network, with NeMo's module names


class ConvSubsampling(nn.Module):
    """``striding`` x4: (Conv2d 3x3 s2 p1, ReLU) twice over (time, mel), then Linear to d_model; padding frames are
    zeroed at every rate so they never reach valid ones."""

    def __init__(self, feat_in: int, channels: int, d_model: int):
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(1, channels, 3, 2, 1), nn.ReLU(), nn.Conv2d(channels, channels, 3, 2, 1),
                                  nn.ReLU())
        freq = feat_in
        for _ in range(2):
            freq = (freq - 1) // 2 + 1
        self.out = nn.Linear(channels * freq, d_model)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor):
        y = x.transpose(1, 2).unsqueeze(1)  # [B, 1, T, F]
        y = y * _valid(lengths, y.shape[2])[:, None, :, None]
        for conv in (self.conv[0], self.conv[2]):
            lengths = torch.div(lengths - 1, 2, rounding_mode="floor") + 1
            y = torch.relu(conv(y))
            y = y * _valid(lengths, y.shape[2])[:, None, :, None]
        b, c, t, f = y.shape
        return self.out(y.transpose(1, 2).reshape(b, t, c * f)), lengths


def _valid(lengths: torch.Tensor, frames: int) -> torch.Tensor:
    """[B, frames] float: 1 on the frames before each item's length."""
    return (torch.arange(frames, device=lengths.device)[None, :] < lengths[:, None]).float()


def relative_positions(frames: int, d_model: int) -> torch.Tensor:
    """RelPositionalEncoding's rows for positions T-1 down to -(T-1): [1, 2T-1, d], sin on even, cos on odd."""
    positions = torch.arange(frames - 1, -frames, -1, dtype=torch.float32)[:, None]
    div_term = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float32) * -(math.log(10000.0) / d_model))
    pe = torch.zeros(2 * frames - 1, d_model)
    pe[:, 0::2] = torch.sin(positions * div_term)
    pe[:, 1::2] = torch.cos(positions * div_term)
    return pe[None]


class FeedForward(nn.Module):
    def __init__(self, d_model: int, units: int, dropout: float):
        super().__init__()
        self.linear1, self.linear2 = nn.Linear(d_model, units), nn.Linear(units, d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, unit_gates: torch.Tensor | None = None) -> torch.Tensor:
        hidden = F.silu(self.linear1(x))
        if unit_gates is not None:
            hidden = hidden * unit_gates
        return self.linear2(self.dropout(hidden))


class RelPositionMultiHeadAttention(nn.Module):
    def __init__(self, d_model: int, heads: int, dropout: float):
        super().__init__()
        self.h, self.d_k = heads, d_model // heads
        self.linear_q, self.linear_k, self.linear_v, self.linear_out = (nn.Linear(d_model, d_model) for _ in range(4))
        self.linear_pos = nn.Linear(d_model, d_model, bias=False)
        self.pos_bias_u = nn.Parameter(torch.zeros(heads, self.d_k))
        self.pos_bias_v = nn.Parameter(torch.zeros(heads, self.d_k))
        nn.init.xavier_uniform_(self.pos_bias_u)
        nn.init.xavier_uniform_(self.pos_bias_v)
        self.dropout = nn.Dropout(dropout)

    @staticmethod
    def rel_shift(x: torch.Tensor) -> torch.Tensor:
        """NeMo's: [B, h, T, 2T-1] -> out[i, j] = x[i, j + T - 1 - i], the score of relative position i - j."""
        b, h, qlen, pos_len = x.shape
        x = F.pad(x, (1, 0)).view(b, h, -1, qlen)
        return x[:, :, 1:].reshape(b, h, qlen, pos_len)

    def forward(self, x: torch.Tensor, pos_emb: torch.Tensor, att_mask: torch.Tensor,
                head_gates: torch.Tensor | None = None) -> torch.Tensor:
        b, t, _ = x.shape
        q, k, v = (lin(x).view(b, t, self.h, self.d_k) for lin in (self.linear_q, self.linear_k, self.linear_v))
        p = self.linear_pos(pos_emb).view(1, -1, self.h, self.d_k).transpose(1, 2)  # [1, h, 2T-1, dk]
        q_u = (q + self.pos_bias_u).transpose(1, 2)
        q_v = (q + self.pos_bias_v).transpose(1, 2)
        content = q_u @ k.permute(0, 2, 3, 1)
        position = self.rel_shift(q_v @ p.transpose(-2, -1))[..., :t]
        scores = (content + position) / math.sqrt(self.d_k)
        mask = att_mask[:, None]  # [B, 1, T, T], True where a query or key frame is padding
        weights = torch.softmax(scores.masked_fill(mask, MASKED_SCORE), dim=-1).masked_fill(mask, 0.0)
        context = self.dropout(weights) @ v.transpose(1, 2)  # [B, h, T, dk]
        if head_gates is not None:
            context = context * head_gates[None, :, None, None]
        return self.linear_out(context.transpose(1, 2).reshape(b, t, self.h * self.d_k))


class ConformerConvolution(nn.Module):
    def __init__(self, d_model: int, kernel: int):
        super().__init__()
        self.pointwise_conv1 = nn.Conv1d(d_model, 2 * d_model, 1)
        self.depthwise_conv = nn.Conv1d(d_model, d_model, kernel, padding=(kernel - 1) // 2, groups=d_model)
        self.batch_norm = nn.BatchNorm1d(d_model)
        self.pointwise_conv2 = nn.Conv1d(d_model, d_model, 1)

    def forward(self, x: torch.Tensor, pad_mask: torch.Tensor) -> torch.Tensor:
        y = F.glu(self.pointwise_conv1(x.transpose(1, 2)), dim=1)
        y = y.masked_fill(pad_mask[:, None, :], 0.0)
        y = F.silu(self.batch_norm(self.depthwise_conv(y)))
        return self.pointwise_conv2(y).transpose(1, 2)


class ConformerLayer(nn.Module):
    def __init__(self, d_model: int, heads: int, units: int, kernel: int, dropout: float):
        super().__init__()
        self.norm_feed_forward1, self.feed_forward1 = nn.LayerNorm(d_model), FeedForward(d_model, units, dropout)
        self.norm_self_att = nn.LayerNorm(d_model)
        self.self_attn = RelPositionMultiHeadAttention(d_model, heads, dropout)
        self.norm_conv, self.conv = nn.LayerNorm(d_model), ConformerConvolution(d_model, kernel)
        self.norm_feed_forward2, self.feed_forward2 = nn.LayerNorm(d_model), FeedForward(d_model, units, dropout)
        self.norm_out = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x, pos_emb, att_mask, pad_mask, gates: dict[str, torch.Tensor] | None = None):
        g = gates or {}
        module_gate = g["modules"] if gates else torch.ones(len(MODULES))
        y = self.feed_forward1(self.norm_feed_forward1(x), g.get("feed_forward1"))
        x = x + 0.5 * module_gate[0] * self.dropout(y)
        y = self.self_attn(self.norm_self_att(x), pos_emb, att_mask, g.get("heads"))
        x = x + module_gate[1] * self.dropout(y)
        x = x + module_gate[2] * self.dropout(self.conv(self.norm_conv(x), pad_mask))
        y = self.feed_forward2(self.norm_feed_forward2(x), g.get("feed_forward2"))
        x = x + 0.5 * module_gate[3] * self.dropout(y)
        return self.norm_out(x)


class ConformerEncoder(nn.Module):
    def __init__(self, cfg: dict):
        super().__init__()
        d = cfg["d_model"]
        self.d_model = d
        self.pre_encode = ConvSubsampling(cfg["feat_in"], cfg["subsampling_conv_channels"], d)
        self.layers = nn.ModuleList(
            ConformerLayer(d, cfg["n_heads"], d * cfg["ff_expansion_factor"], cfg["conv_kernel_size"], cfg["dropout"])
            for _ in range(cfg["n_layers"]))
        self.dropout = nn.Dropout(cfg["dropout_pre_encoder"])

    def forward(self, features, lengths, gates=None, layer_outputs: list | None = None):
        x, lengths = self.pre_encode(features, lengths)
        x = self.dropout(x * math.sqrt(self.d_model))
        t = x.shape[1]
        valid = _valid(lengths, t) > 0
        pad_mask = ~valid
        att_mask = ~(valid[:, None, :] & valid[:, :, None])
        pos_emb = relative_positions(t, self.d_model).to(x)
        for i, layer in enumerate(self.layers):
            x = layer(x, pos_emb, att_mask, pad_mask, gates[i] if gates else None)
            if layer_outputs is not None:
                layer_outputs.append(x)
        return x.transpose(1, 2), lengths


class ConvASRDecoder(nn.Module):
    def __init__(self, feat_in: int, classes: int):
        super().__init__()
        self.decoder_layers = nn.Sequential(nn.Conv1d(feat_in, classes, 1))

    def forward(self, encoded: torch.Tensor) -> torch.Tensor:
        return torch.log_softmax(self.decoder_layers(encoded).transpose(1, 2), dim=-1)


class ConformerCTC(nn.Module):
    """features [B, 64, T] (+ valid frames [B]) -> log-probabilities [B, T', 11] (digits, blank last).

    ``recipes.digits.train.fit`` calls the model on features alone; ``expect_lengths`` (called by the data stream
    right before that call) hands over the batch's valid frames for the next forward, so padding is masked in
    training as at run time.  Without lengths every frame counts as valid.  ``gates`` (prune.py) multiplies
    modules, heads and FFN units by hard-concrete gates; ``layer_outputs`` collects each layer's output of the
    last forward when it is a list (layerwise distillation), and ``last_input`` that forward's input, so the
    teacher can be run on the very same (augmented) batch."""

    def __init__(self, config: dict):
        super().__init__()
        self.config = config
        enc = config["encoder"]
        self.encoder = ConformerEncoder(enc)
        self.decoder = ConvASRDecoder(enc["d_model"], len(config["decoder"]["vocabulary"]) + 1)
        self.gates: Gates | None = None
        self.layer_outputs: list | None = None
        self.last_input: tuple | None = None  # (features, lengths) of the last forward, with layer_outputs
        self._lengths: torch.Tensor | None = None

    def expect_lengths(self, lengths: torch.Tensor) -> None:
        self._lengths = lengths

    def forward(self, features: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        if lengths is None:
            lengths, self._lengths = self._lengths, None
        if lengths is None or lengths.shape[0] != features.shape[0]:
            lengths = torch.full((features.shape[0],), features.shape[2], dtype=torch.long)
        if self.layer_outputs is not None:
            self.layer_outputs, self.last_input = [], (features, lengths)
        gates = self.gates.sample() if self.gates is not None else None
        encoded, _ = self.encoder(features, lengths, gates, self.layer_outputs)
        return self.decoder(encoded)


def build(config: dict) -> ConformerCTC:
    return ConformerCTC(config)


def nemo_state_dict(model: ConformerCTC) -> dict[str, torch.Tensor]:
    """The NeMo parameters and buffers only (``encoder.*``, ``decoder.*``): no gates."""
    return {k: v.detach().clone() for k, v in model.state_dict().items() if k.startswith(("encoder.", "decoder."))}


def save_nemo(model: ConformerCTC, path: str) -> None:
    """A .nemo archive: model_config.yaml + model_weights.ckpt (torch.save of the state dict), uncompressed tar."""
    import yaml

    members = {"model_config.yaml": yaml.safe_dump(model.config, sort_keys=False).encode()}
    buffer = io.BytesIO()
    torch.save(nemo_state_dict(model), buffer)
    members["model_weights.ckpt"] = buffer.getvalue()
    with tarfile.open(path, "w") as tar:
        for name, payload in members.items():
            info = tarfile.TarInfo(f"./{name}")
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))


def load_nemo(path: str) -> ConformerCTC:
    """A model saved by ``save_nemo`` (config and weights), in evaluation mode."""
    import yaml

    with tarfile.open(path, "r") as tar:
        names = {m.name.lstrip("./"): m for m in tar.getmembers()}
        config = yaml.safe_load(tar.extractfile(names["model_config.yaml"]).read())
        state = torch.load(io.BytesIO(tar.extractfile(names["model_weights.ckpt"]).read()), map_location="cpu")
    model = build(config)
    model.load_state_dict(state, strict=True)
    return model.eval()


def encoder_parameter_count(model: ConformerCTC) -> int:
    return sum(p.numel() for p in model.encoder.parameters())
