"""A MatchboxNet-like keyword classifier whose 1x1 convs are dense or regenerated random ternary.

Layout (MatchboxNet, Majumdar & Ginsburg 2020, scaled to FSDD): a separable stride-2 prologue, B residual
blocks of R x (depthwise K + pointwise + BN + ReLU) with a pointwise + BN residual branch, a
dilated separable epilogue, mean over time and a 1x1 classifier.  In the ternary variant every
C x C pointwise conv (block and residual branches, epilogue) is a TernaryPointwiseConv1d (Mordido
et al. 2021): a fixed pattern regenerated from (seed, layer_id), only its per-channel scale and the
BN after it are trained.  The convs that change the width (features -> C, C -> classes) stay dense.

Equal parameter budget (the paper's rule): the ternary net may have as many *trained* parameters as
the dense one, and spends the budget its 1x1 convs save on width or depth: ``ternary_config_for_budget``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Tuple

import torch
from torch import nn

from tinyasr_convert.ternary import TernaryPointwiseConv1d


@dataclass(frozen=True)
class NetConfig:
    features: int = 64
    classes: int = 10
    channels: int = 64
    kernels: Tuple[int, ...] = (13, 15, 17)  # one block per kernel size
    repeat: int = 2  # sub-blocks per block
    ternary: bool = False
    density: float = 1 / 3
    seed: int = 20210401  # model-wide; each ternary layer gets the next layer_id


class KWSNet(nn.Module):
    def __init__(self, config: NetConfig):
        super().__init__()
        self.config = config
        self._next_layer_id = 0
        c = config.channels
        prologue = self._separable(config.features, c, 11, stride=2, dense_pointwise=True)
        self.prologue = nn.Sequential(*prologue, nn.ReLU())
        self.blocks = nn.ModuleList()
        for kernel in config.kernels:
            main = []
            for i in range(config.repeat):
                main += self._separable(c, c, kernel)
                if i + 1 < config.repeat:
                    main.append(nn.ReLU())
            self.blocks.append(nn.ModuleDict({"main": nn.Sequential(*main),
                                               "residual": nn.Sequential(self._pointwise(c, c), nn.BatchNorm1d(c))}))
        self.epilogue = nn.Sequential(*self._separable(c, c, 29, dilation=2), nn.ReLU())
        self.classifier = nn.Conv1d(c, config.classes, 1)

    def _pointwise(self, c_in, c_out, dense=False):
        if self.config.ternary and not dense:
            layer = TernaryPointwiseConv1d(c_in, c_out, density=self.config.density, seed=self.config.seed,
                                           layer_id=self._next_layer_id)
            self._next_layer_id += 1
            return layer
        return nn.Conv1d(c_in, c_out, 1, bias=False)

    def _separable(self, c_in, c_out, kernel, stride=1, dilation=1, dense_pointwise=False):
        pad = dilation * (kernel - 1) // 2
        return [nn.Conv1d(c_in, c_in, kernel, stride=stride, padding=pad, dilation=dilation, groups=c_in, bias=False),
                self._pointwise(c_in, c_out, dense_pointwise), nn.BatchNorm1d(c_out)]

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """features [B, 64, T] -> logits [B, classes]."""
        x = self.prologue(features)
        for block in self.blocks:
            x = torch.relu(block["main"](x) + block["residual"](x))
        x = self.epilogue(x)
        return self.classifier(x).mean(dim=-1)


def trained_parameters(model: nn.Module) -> int:
    """Parameters the optimiser updates (ternary patterns are buffers, regenerated, never stored)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def ternary_config_for_budget(dense: NetConfig, grow: str = "width", step: int = 8) -> NetConfig:
    """The largest ternary net with no more trained parameters than ``dense``.

    ``grow="width"`` widens every layer (a multiple of ``step`` channels); ``grow="depth"`` keeps the
    width and appends residual blocks, cycling through the dense net's kernel sizes (the paper's choice).
    """
    budget = trained_parameters(KWSNet(dense))
    if grow == "width":
        candidates = (replace(dense, ternary=True, channels=dense.channels + step * i) for i in range(1, 10**6))
    elif grow == "depth":
        candidates = (replace(dense, ternary=True, kernels=tuple(dense.kernels[i % len(dense.kernels)]
                                                                  for i in range(n)))
                      for n in range(len(dense.kernels) + 1, 10**6))
    else:
        raise ValueError(f"grow must be 'width' or 'depth', got {grow!r}")
    best = replace(dense, ternary=True)
    for candidate in candidates:
        if trained_parameters(KWSNet(candidate)) > budget:
            return best
        best = candidate
