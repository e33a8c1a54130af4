"""A small LSTM-CTC model for the digit strings, exported as plain ONNX ``LSTM`` ops.

Layout: a stride-2 1-D convolution over the 64 log-mel features (``conv_channels`` out, kernel 5, 'same'
padding, ReLU: 20 ms frames, as the digits QuartzNet; ``stride`` 4 adds a second one: 40 ms frames, half the
LSTM steps; ``norm`` puts a batch norm after each, which the converter folds into the convolution), ``layers`` unidirectional ``nn.LSTM`` layers of
``hidden`` units (time-major inside, so the export is one ONNX ``LSTM`` node per layer with no layout
Transposes around it), a linear layer to the 10 digit words + blank (blank last) and log-softmax.
Unidirectional on purpose: it is the on-device kind of Zhen et al. 2021 (it can stream), and a zero-padded
batch leaves the valid frames' outputs untouched, so training needs no packed sequences.
"""

from __future__ import annotations

import torch
from torch import nn

from recipes.digits.model import N_FEATURES, STRIDE

KERNEL = 5


class LstmCtc(nn.Module):
    """[B, 64, T] log-mel -> [B, ceil(T / stride), n_classes] log-probabilities."""

    def __init__(self, n_classes: int = 11, conv_channels: int = 256, hidden: int = 256, layers: int = 2,
                 stride: int = STRIDE, norm: bool = False):
        super().__init__()
        if stride not in (2, 4):
            raise ValueError(f"stride must be 2 or 4, got {stride}")
        self.stride = stride
        self.conv = nn.Conv1d(N_FEATURES, conv_channels, KERNEL, stride=STRIDE, padding=KERNEL // 2)
        self.conv2 = nn.Conv1d(conv_channels, conv_channels, KERNEL, stride=STRIDE, padding=KERNEL // 2) \
            if stride == 4 else None
        # Batch norm: without it the LSTM stack crawled along CTC's all-blank plateau; with it, it fitted a fixed
        # batch faster (README, "What trained, and what did not")
        self.norm = nn.BatchNorm1d(conv_channels) if norm else None
        self.norm2 = nn.BatchNorm1d(conv_channels) if norm and stride == 4 else None
        self.lstm = nn.LSTM(conv_channels, hidden, num_layers=layers)
        self.classifier = nn.Linear(hidden, n_classes)

    def forward(self, audio_signal: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self._normed(self.norm, self.conv(audio_signal)))
        if self.conv2 is not None:
            x = torch.relu(self._normed(self.norm2, self.conv2(x)))
        x = x.permute(2, 0, 1)  # [T', B, C]
        y, _ = self.lstm(x)
        return torch.log_softmax(self.classifier(y), dim=-1).transpose(0, 1)

    @staticmethod
    def _normed(norm, x: torch.Tensor) -> torch.Tensor:
        return x if norm is None else norm(x)

    def output_lengths(self, feature_lengths: torch.Tensor) -> torch.Tensor:
        """Valid output frames for valid feature frames: each stride-2 'same' convolution gives ceil(T / 2)."""
        lengths = feature_lengths
        for _ in range(self.stride // STRIDE):
            lengths = (lengths + STRIDE - 1) // STRIDE
        return lengths


def recurrent_parameters(model: LstmCtc) -> dict[str, nn.Parameter]:
    """{name: weight} of the LSTM's input (``weight_ih_l*``) and recurrent (``weight_hh_l*``) matrices, [4H, in]:
    the weights the recipe prunes (biases, the convolution and the classifier stay dense)."""
    return {f"lstm.{name}": p for name, p in model.lstm.named_parameters() if name.startswith("weight_")}
