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
        self.net = nn.Sequential(
            nn.Linear(10, 32), nn.GELU(), nn.Dropout(0.1), nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 3)
        )

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


class TinyViT(nn.Module):
    """A ViT-style model: patch embedding, class token, position embedding, pre-norm blocks with
    multi-head attention (scaled_dot_product_attention, ``num_heads``/``head_dim`` attributes) and MLP."""

    def __init__(self, dim: int = 32, heads: int = 4, depth: int = 2, classes: int = 3) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, dim, 4, stride=4)
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.pos_embed = nn.Parameter(torch.randn(1, 5, dim) * 0.02)
        self.blocks = nn.ModuleList(TinyBlock(dim, heads) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch(x).flatten(2).transpose(1, 2)  # (B, 4, dim)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], 1) + self.pos_embed
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x)[:, 0])


class TinyAttention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.num_heads, self.head_dim = heads, dim // heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, _ = x.shape
        qkv = self.qkv(x).reshape(batch, tokens, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        x = F.scaled_dot_product_attention(q, k, v)  # (B, heads, tokens, head_dim)
        return self.proj(x.transpose(1, 2).reshape(batch, tokens, self.num_heads * self.head_dim))


class TinyBlock(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(dim), TinyAttention(dim, heads)
        self.norm2, self.fc1, self.fc2 = nn.LayerNorm(dim), nn.Linear(dim, 2 * dim), nn.Linear(2 * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))


class NormsNet(nn.Module):
    """GroupNorm (channels first), LayerNorm over channels-last, InstanceNorm; returns a dict."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.gn = nn.GroupNorm(2, 8)
        self.conv2 = nn.Conv2d(8, 12, 3, padding=1)
        self.ln = nn.LayerNorm(12)
        self.conv3 = nn.Conv2d(12, 6, 1)
        self.inorm = nn.InstanceNorm2d(6, affine=True)
        self.fc = nn.Linear(6, 4)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        x = F.relu(self.gn(self.conv1(x)))
        x = self.ln(self.conv2(x).permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        x = F.relu(self.inorm(self.conv3(x)))
        return {"logits": self.fc(x.mean((2, 3))), "features": x}


class MHANet(nn.Module):
    """torch's own nn.MultiheadAttention between two linears; returns a tuple."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(6, 16)
        self.mha = nn.MultiheadAttention(16, 4, batch_first=True)
        self.fc1 = nn.Linear(16, 24)
        self.fc2 = nn.Linear(24, 2)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.embed(x)
        attended, weights = self.mha(x, x, x)
        return self.fc2(F.relu(self.fc1(attended))).mean(1), weights


TEST_MODELS.update({
    "vit": (TinyViT, (2, 3, 8, 8)),
    "norms": (NormsNet, (2, 3, 6, 6)),
    "mha": (MHANet, (2, 5, 6)),
})  # fmt: skip


class EinsumNet(nn.Module):
    """A linear layer written as einsum on a parameter, PReLU per channel, and zeros_like."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(12, 8) * 0.3)
        self.act = nn.PReLU(12)
        self.fc = nn.Linear(12, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = torch.einsum("bi,oi->bo", x, self.weight)
        hidden = self.act(hidden) + torch.zeros_like(hidden)
        return self.fc(hidden)


TEST_MODELS["einsum"] = (EinsumNet, (4, 8))


class StdConv(nn.Conv2d):
    """A convolution with a standardised weight, as in NFNets and BiT (batch_norm on the weight)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = F.batch_norm(self.weight.reshape(1, self.out_channels, -1), None, None, training=True, eps=1e-6)
        return F.conv2d(x, weight.reshape_as(self.weight), self.bias, self.stride, self.padding)


class StdConvNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.conv2, self.conv3 = StdConv(3, 8, 3, padding=1), StdConv(8, 12, 3), StdConv(12, 6, 1)
        self.fc = nn.Linear(6, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv2(F.relu(self.conv1(x))))
        return self.fc(self.conv3(x).mean((2, 3)))


TEST_MODELS["stdconv"] = (StdConvNet, (2, 3, 7, 7))
