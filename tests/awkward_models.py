"""Small models that trip a library up, for the tests of prunecli's behaviour around them.

Each is a conv followed by something awkward, then a classifier over 8x8 digits::

    UntraceableBranch   python control flow on a tensor value: torch.export refuses it
    ErfcxNet            special_erfcx: the TorchScript ONNX exporter (opset 17) lacks it, dynamo has it
    BesselNet           special_bessel_j0: no ONNX exporter has it
"""

from __future__ import annotations

import torch
from torch import nn


class _ConvClassifier(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3, padding=1)
        self.mix = nn.Conv2d(8, 8, 1)
        self.fc = nn.Linear(8 * 8 * 8, 10)

    def classify(self, features: torch.Tensor) -> torch.Tensor:
        return self.fc(self.mix(features).flatten(1))


class UntraceableBranch(_ConvClassifier):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.conv(x)
        if features.sum() > 0:  # data-dependent: torch.export cannot trace this
            features = features * 2
        return self.classify(features)


class ErfcxNet(_ConvClassifier):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classify(torch.special.erfcx(torch.relu(self.conv(x))))


class BesselNet(_ConvClassifier):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classify(torch.special.bessel_j0(self.conv(x)))
