"""Small torch models of the separable-conv family, for converter tests and the benchmark.

They follow the published block structure (QuartzNet / MatchboxNet / Citrinet
papers and NeMo's ConvASREncoder): depthwise conv over time + 1x1 pointwise
conv + BatchNorm, residual 1x1 conv + BN added before the last ReLU of a block.
BatchNorm statistics are randomised (a fresh BN is the identity, which would
hide a wrong fold), and weights are drawn with a gain a little above 1 so the
outputs depend clearly on the input (torch's default init makes these nets
nearly constant, which would let a wrong conversion pass).
"""

from __future__ import annotations

import torch
from torch import nn


class SeparableConv(nn.Module):
    """Depthwise conv over time, pointwise 1x1 conv, BatchNorm."""

    def __init__(self, c_in, c_out, kernel, stride=1, dilation=1):
        super().__init__()
        pad = dilation * (kernel - 1) // 2
        self.depthwise = nn.Conv1d(c_in, c_in, kernel, stride=stride, dilation=dilation, padding=pad, groups=c_in, bias=False)
        self.pointwise = nn.Conv1d(c_in, c_out, 1, bias=False)
        self.bn = nn.BatchNorm1d(c_out)

    def forward(self, x):
        return self.bn(self.pointwise(self.depthwise(x)))


class SqueezeExcite(nn.Module):
    """Citrinet's squeeze-excite: global mean over time, Linear-ReLU-Linear-Sigmoid, scale the channels."""

    def __init__(self, channels, reduction=8):
        super().__init__()
        self.fc = nn.Sequential(nn.Linear(channels, channels // reduction), nn.ReLU(), nn.Linear(channels // reduction, channels))

    def forward(self, x):
        scale = torch.sigmoid(self.fc(x.mean(dim=-1)))
        return x * scale.unsqueeze(-1)


class ResidualBlock(nn.Module):
    """`repeat` separable convs with ReLU (+ Dropout) between; the last one's output plus a 1x1+BN residual, then ReLU."""

    def __init__(self, c_in, c_out, kernel, repeat, stride=1, squeeze_excite=False):
        super().__init__()
        layers = []
        for i in range(repeat):
            layers.append(SeparableConv(c_in if i == 0 else c_out, c_out, kernel, stride=stride if i == repeat - 1 else 1))
            if i < repeat - 1:
                layers += [nn.ReLU(), nn.Dropout(0.1)]
        if squeeze_excite:
            layers.append(SqueezeExcite(c_out))
        self.main = nn.Sequential(*layers)
        self.residual = nn.Sequential(nn.Conv1d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm1d(c_out))

    def forward(self, x):
        return torch.relu(self.main(x) + self.residual(x))


def _encoder(features, channels, blocks, repeat, squeeze_excite=False):
    """Prologue (strided separable conv), residual blocks with growing kernels, dilated epilogue, 1x1 conv."""
    layers = [SeparableConv(features, channels, 33, stride=2), nn.ReLU()]
    for b in range(blocks):
        layers.append(ResidualBlock(channels, channels, 33 + 6 * b, repeat, squeeze_excite=squeeze_excite))
    layers += [SeparableConv(channels, channels, 87, dilation=2), nn.ReLU(), nn.Conv1d(channels, 2 * channels, 1), nn.ReLU()]
    return nn.Sequential(*layers)


class QuartzNetLike(nn.Module):
    """CTC encoder + 1x1 decoder: [B, features, T] -> log-probs [B, ceil(T/2), vocab + 1]."""

    def __init__(self, features=64, channels=64, blocks=3, repeat=2, vocab=28):
        super().__init__()
        self.encoder = _encoder(features, channels, blocks, repeat)
        self.decoder = nn.Conv1d(2 * channels, vocab + 1, 1)

    def forward(self, features):
        return torch.log_softmax(self.decoder(self.encoder(features)).transpose(1, 2), dim=-1)


class MatchboxNetLike(nn.Module):
    """Keyword classifier: encoder, global average pooling over time, Linear -> logits [B, classes]."""

    def __init__(self, features=64, channels=64, blocks=2, repeat=1, classes=12):
        super().__init__()
        self.encoder = _encoder(features, channels, blocks, repeat)
        self.pool = nn.AdaptiveAvgPool1d(1)
        self.classifier = nn.Linear(2 * channels, classes)

    def forward(self, features):
        return self.classifier(self.pool(self.encoder(features)).flatten(1))


class CitrinetLike(nn.Module):
    """Citrinet-style CTC model: residual blocks with squeeze-excite (one strided), 1x1 decoder, LogSoftmax."""

    def __init__(self, features=80, channels=64, vocab=32):
        super().__init__()
        self.prologue = nn.Sequential(SeparableConv(features, channels, 5), nn.ReLU())
        self.blocks = nn.Sequential(
            ResidualBlock(channels, channels, 11, 2, squeeze_excite=True),
            ResidualBlock(channels, channels, 13, 2, stride=2, squeeze_excite=True),
            ResidualBlock(channels, channels, 15, 2, squeeze_excite=True),
        )
        self.decoder = nn.Conv1d(channels, vocab + 1, 1)

    def forward(self, features):
        return torch.log_softmax(self.decoder(self.blocks(self.prologue(features))).transpose(1, 2), dim=-1)


WEIGHT_GAIN = 1.2  # std = gain / sqrt(fan_in); measured: outputs for two random inputs differ by O(1)


def build(cls, seed=0, **kwargs) -> nn.Module:
    """A seeded instance in eval mode with randomised weights, BatchNorm statistics and affine parameters."""
    torch.manual_seed(seed)
    model = cls(**kwargs)
    generator = torch.Generator().manual_seed(seed + 1)
    for m in model.modules():
        if isinstance(m, (nn.Conv1d, nn.Linear)):
            nn.init.kaiming_normal_(m.weight, nonlinearity="linear", generator=generator)
            m.weight.data.mul_(WEIGHT_GAIN)
        if isinstance(m, nn.BatchNorm1d):
            n = m.num_features
            m.running_mean.copy_(0.1 * torch.randn(n, generator=generator))
            m.running_var.copy_(0.5 + torch.rand(n, generator=generator))
            m.weight.data.copy_(0.6 + 0.3 * torch.rand(n, generator=generator))
            m.bias.data.copy_(0.1 * torch.randn(n, generator=generator))
    return model.eval()
