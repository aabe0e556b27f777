"""Tiny test models with the couplings the channel graph must get right. Plain torch."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ResidualNet(nn.Module):
    """conv-bn-relu, a residual block with a 1x1 projection shortcut, global pool, linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.conv1 = nn.Conv2d(8, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.conv2 = nn.Conv2d(16, 16, 3, padding=1)
        self.shortcut = nn.Conv2d(8, 16, 1)
        self.head = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn(self.stem(x)))
        y = self.conv2(F.relu(self.bn1(self.conv1(x)))) + self.shortcut(x)
        return self.head(F.adaptive_avg_pool2d(F.relu(y), 1).flatten(1))


class ConcatFlattenNet(nn.Module):
    """Three branches concatenated on channels, then flattened into a Linear (offsets x spatial blocks)."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(2, 6, 3, padding=1)
        self.b = nn.Conv2d(2, 4, 1)
        self.c = nn.Conv2d(2, 5, 3, padding=1)
        self.mix = nn.Conv2d(15, 8, 1)
        self.fc1 = nn.Linear(8 * 3 * 3 + 15 * 3 * 3, 12)
        self.fc2 = nn.Linear(12, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cat = F.relu(torch.cat([self.a(x), self.b(x), self.c(x)], 1))
        pooled = F.max_pool2d(cat, 2)
        mixed = F.relu(self.mix(pooled))
        flat = torch.cat([mixed.flatten(1), pooled.flatten(1)], 1)
        return self.fc2(F.relu(self.fc1(flat)))


class DepthwiseNet(nn.Module):
    """Inverted residual: expand 1x1, depthwise 3x3, grouped 1x1 (groups=2), squeeze-excite multiply."""

    def __init__(self) -> None:
        super().__init__()
        self.expand = nn.Conv2d(4, 12, 1)
        self.dw = nn.Conv2d(12, 12, 3, padding=1, groups=12)
        self.se_reduce = nn.Conv2d(12, 4, 1)
        self.se_expand = nn.Conv2d(4, 12, 1)
        self.grouped = nn.Conv2d(12, 8, 1, groups=2)
        self.project = nn.Conv2d(8, 4, 1)
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.hardswish(self.dw(F.relu6(self.expand(x))))
        gate = torch.sigmoid(self.se_expand(F.relu(self.se_reduce(y.mean((2, 3), keepdim=True)))))
        y = self.project(F.relu(self.grouped(y * gate))) + x
        return self.fc(y.mean((2, 3)))


class MLP(nn.Module):
    """A plain two-hidden-layer MLP on flat features."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(10, 32), nn.GELU(), nn.Dropout(0.1), nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class UnsupportedOpNet(nn.Module):
    """A cumsum over channels (no coupling rule): the channels it touches must stay, the rest still prune."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.conv3 = nn.Conv2d(8, 6, 1)
        self.fc = nn.Linear(6, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv2(F.relu(self.conv1(x))))
        x = torch.cumsum(x, dim=1)
        return self.fc(self.conv3(x).mean((2, 3)))


def randomize_batchnorm(module: nn.Module) -> nn.Module:
    """Give BatchNorms non-trivial statistics so that masking mistakes show up in outputs."""
    generator = torch.Generator().manual_seed(0)
    for layer in module.modules():
        if isinstance(layer, nn.BatchNorm2d):
            with torch.no_grad():
                layer.running_mean.uniform_(-1, 1, generator=generator)
                layer.running_var.uniform_(0.5, 2, generator=generator)
                layer.weight.uniform_(0.5, 2, generator=generator)
                layer.bias.uniform_(-1, 1, generator=generator)
    return module.eval()


TEST_MODELS = {
    "residual": (ResidualNet, (2, 3, 8, 8)),
    "concat_flatten": (ConcatFlattenNet, (2, 2, 6, 6)),
    "depthwise": (DepthwiseNet, (2, 4, 6, 6)),
    "mlp": (MLP, (4, 10)),
}
