"""A small QuartzNet-style CTC model: time-channel separable 1-D convolutions.

Layout (QuartzNet, Kriman et al. 2020, scaled down): a stride-2 separable
prologue, residual blocks of R x (depthwise K + pointwise + BN + ReLU) with a
1x1+BN residual branch, a dilated separable epilogue and a 1x1 decoder to the
10 digit words + blank, then log-softmax.  Every op exports to plain ONNX
Conv / BatchNormalization / Relu / Add / Transpose / LogSoftmax, the set the
tinyasr converter takes.
"""

from __future__ import annotations

from typing import Dict, Sequence

import numpy as np

import onnx
import torch
from torch import nn

N_FEATURES = 64
STRIDE = 2  # output frame = 20 ms


class SeparableConvBN(nn.Sequential):
    """Depthwise conv over time, pointwise conv over channels, batch norm; 'same' padding."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int = 1, dilation: int = 1):
        pad = dilation * (kernel - 1) // 2
        super().__init__(
            nn.Conv1d(c_in, c_in, kernel, stride=stride, padding=pad, dilation=dilation, groups=c_in, bias=False),
            nn.Conv1d(c_in, c_out, 1, bias=False),
            nn.BatchNorm1d(c_out),
        )


class ResidualBlock(nn.Module):
    """``repeat`` separable sub-blocks; the residual 1x1+BN is added before the last ReLU."""

    def __init__(self, c_in: int, c_out: int, kernel: int, repeat: int):
        super().__init__()
        layers = []
        for i in range(repeat):
            layers.append(SeparableConvBN(c_in if i == 0 else c_out, c_out, kernel))
            if i + 1 < repeat:
                layers.append(nn.ReLU())
        self.main = nn.Sequential(*layers)
        self.residual = nn.Sequential(nn.Conv1d(c_in, c_out, 1, bias=False), nn.BatchNorm1d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.main(x) + self.residual(x))


class DigitNet(nn.Module):
    """[B, 64, T] log-mel -> [B, ceil(T/2), vocab+1] log-probabilities (blank last)."""

    def __init__(
        self,
        n_classes: int = 11,
        channels: int = 192,
        kernels: Sequence[int] = (13, 15, 17),
        repeat: int = 2,
        epilogue_channels: int = 128,
    ):
        super().__init__()
        self.prologue = nn.Sequential(SeparableConvBN(N_FEATURES, channels, 11, stride=STRIDE), nn.ReLU())
        self.blocks = nn.Sequential(*[ResidualBlock(channels, channels, k, repeat) for k in kernels])
        self.epilogue = nn.Sequential(SeparableConvBN(channels, epilogue_channels, 29, dilation=2), nn.ReLU())
        self.decoder = nn.Conv1d(epilogue_channels, n_classes, 1)

    def forward(self, audio_signal: torch.Tensor) -> torch.Tensor:
        x = self.epilogue(self.blocks(self.prologue(audio_signal)))
        return torch.log_softmax(self.decoder(x), dim=1).transpose(1, 2)


def output_lengths(feature_lengths: torch.Tensor) -> torch.Tensor:
    """Frames out for frames in: the stride-2 prologue with 'same' padding gives ceil(T/2)."""
    return (feature_lengths + STRIDE - 1) // STRIDE


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def export_onnx(model: nn.Module, path: str, metadata: Dict[str, str], example_frames: int = 300) -> None:
    """ONNX opset 17, eval mode; input ``audio_signal`` [B, 64, T], output ``logprobs`` [B, T', 11]: any digit-string
    model of the recipes (DigitNet here, recipes.lstm_digits' LstmCtc).

    ``metadata`` goes into metadata_props, where the tinyasr converter reads
    labels, blank, decoder and frontend, so ``tinyasr convert`` needs no options.
    """
    model.eval()
    example = torch.zeros(1, N_FEATURES, example_frames)
    torch.onnx.export(
        model,
        (example,),
        path,
        input_names=["audio_signal"],
        output_names=["logprobs"],
        dynamic_axes={"audio_signal": {0: "batch", 2: "time"}, "logprobs": {0: "batch", 1: "time_out"}},
        opset_version=17,
        dynamo=False,
    )
    exported = onnx.load(path)
    onnx.helper.set_model_props(exported, metadata)
    onnx.save(exported, path)


def load_tasr_weights(model: DigitNet, tasr_path: str, calibration: torch.Tensor) -> None:
    """Start ``model`` from a converted DigitNet (e.g. the bundled digits.tasr), to extend rather than retrain it.

    The converter folds each BatchNorm into the 1x1 conv before it (weight and
    bias).  Each conv takes its folded weight; its BatchNorm is set so that, in
    training and in eval mode alike, it only adds the folded bias: running
    statistics and scale are the batch statistics of the conv's output on
    ``calibration`` features [B, 64, T].  The torch model then computes what the
    .tasr does.  Node names are the ONNX export's module scopes.
    """
    from tinyasr.engine.offline import load_model

    source = load_model(tasr_path)
    modules = dict(model.named_modules())
    batch_norms = {}
    for node in source.graph.nodes:
        if node.op != "Conv":
            continue
        scopes = node.name.strip("/").split("/")[:-1]  # e.g. blocks, blocks.0, main, main.0, main.0.1
        path = scopes[-1] if scopes[0] != "blocks" else f"{scopes[1]}.{scopes[-1]}"
        conv = modules[path]
        weight = np.array(source.tensors[node.inputs[1]], np.float32)
        if weight.size != conv.weight.numel():
            raise ValueError(f"{tasr_path}: {path} has {weight.shape} weights, the model {tuple(conv.weight.shape)}; "
                             f"is it a DigitNet of {model.blocks[0].main[0][0].in_channels} channels?")
        conv.weight.data = torch.tensor(weight).reshape(conv.weight.shape)
        bias = torch.tensor(np.array(source.tensors[node.inputs[2]], np.float32)) if len(node.inputs) > 2 \
            and node.inputs[2] in source.tensors else None
        if conv.bias is not None:
            conv.bias.data = bias.reshape(conv.bias.shape).clone()
        elif bias is not None:
            parent, index = path.rsplit(".", 1)
            batch_norms[f"{parent}.{int(index) + 1}"] = bias.reshape(-1)
    if set(batch_norms) != {name for name, m in modules.items() if isinstance(m, nn.BatchNorm1d)}:
        raise ValueError(f"{tasr_path}: its convs do not match the model's batch norms; is it a DigitNet "
                         f"of {model.blocks[0].main[0][0].in_channels} channels?")
    stats = {}
    hooks = [modules[name].register_forward_hook(
        lambda m, inputs, _, name=name: stats.__setitem__(name, inputs[0].transpose(0, 1).flatten(1)))
        for name in batch_norms]
    model.eval()
    with torch.no_grad():
        for name, bias in batch_norms.items():  # identity first: every BN input is then the .tasr's
            bn = modules[name]
            bn.running_mean.zero_(), bn.running_var.fill_(1 - bn.eps), bn.weight.fill_(1), bn.bias.copy_(bias)
        model(calibration)
        for hook in hooks:
            hook.remove()
        for name, bias in batch_norms.items():
            bn, x = modules[name], stats[name]
            mean, var = x.mean(dim=1), x.var(dim=1, unbiased=False)
            bn.running_mean.copy_(mean), bn.running_var.copy_(var)
            bn.weight.copy_(torch.sqrt(var + bn.eps)), bn.bias.copy_(bias + mean)
    model.train()
