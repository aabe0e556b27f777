"""Small classifiers for the 8x8 digits: plain torch, importable as a file (``archs.py:DigitsCNN``).

``DigitsCNN`` is built to exercise every coupling the channel graph must handle: conv -> BN ->
ReLU chains, a residual sum, a channel concat, pooling and a flatten feeding a Linear.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


class DigitsMLP(nn.Module):
    """(N, 1, 8, 8) -> flatten -> [Linear, ReLU, Dropout] per hidden width -> Linear -> (N, num_classes)."""

    def __init__(self, hidden: Sequence[int] = (128, 64), num_classes: int = 10, dropout: float = 0.1) -> None:
        super().__init__()
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        in_features = 64
        for index, width in enumerate(hidden, start=1):
            layers[f"fc{index}"] = nn.Linear(in_features, width)
            layers[f"relu{index}"] = nn.ReLU()
            layers[f"drop{index}"] = nn.Dropout(dropout)
            in_features = width
        self.features = nn.Sequential(layers)
        self.fc = nn.Linear(in_features, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(torch.flatten(x, 1)))  # (N, 64) -> (N, num_classes)


def _conv_bn(in_channels: int, out_channels: int, kernel_size: int) -> tuple[nn.Conv2d, nn.BatchNorm2d]:
    conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False)
    return conv, nn.BatchNorm2d(out_channels)


class DigitsCNN(nn.Module):
    """A tiny ResNet/Inception hybrid for (N, 1, 8, 8) digits; about 1.9 M MACs per sample at width 32.

    stem conv3x3 -> residual block (conv-bn-relu-conv-bn + identity, relu) -> concat of a 1x1 and
    a 3x3 branch (2 * width channels) -> max_pool2d to 4x4 -> flatten -> Linear(2 * width * 16, 64)
    -> ReLU -> Dropout -> Linear(64, num_classes).
    """

    def __init__(self, width: int = 32, num_classes: int = 10, dropout: float = 0.2) -> None:
        super().__init__()
        self.stem_conv, self.stem_bn = _conv_bn(1, width, 3)
        self.res_conv1, self.res_bn1 = _conv_bn(width, width, 3)
        self.res_conv2, self.res_bn2 = _conv_bn(width, width, 3)
        self.branch1_conv, self.branch1_bn = _conv_bn(width, width, 1)
        self.branch3_conv, self.branch3_bn = _conv_bn(width, width, 3)
        self.hidden_fc = nn.Linear(2 * width * 4 * 4, 64)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.stem_bn(self.stem_conv(x)))  # (N, W, 8, 8)
        hidden = F.relu(self.res_bn1(self.res_conv1(x)))
        x = F.relu(self.res_bn2(self.res_conv2(hidden)) + x)  # identity add: (N, W, 8, 8)
        branch1 = F.relu(self.branch1_bn(self.branch1_conv(x)))
        branch3 = F.relu(self.branch3_bn(self.branch3_conv(x)))
        x = F.max_pool2d(torch.cat([branch1, branch3], dim=1), 2)  # (N, 2W, 4, 4)
        x = self.dropout(F.relu(self.hidden_fc(torch.flatten(x, 1))))  # (N, 64)
        return self.fc(x)  # (N, num_classes)
