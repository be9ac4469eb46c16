"""Building blocks shared by the VeloxSeg encoder and decoders.

Module and parameter names follow the upstream code so that upstream state dicts load strictly.
All tensors are ``(B, C, D, H, W)``.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = [
    "FFN",
    "JLC",
    "ChannelsFirstLayerNorm",
    "DownConv",
    "PatchEmbed",
    "PatchMerging",
    "UpConv",
    "jlc_layer",
    "pixel_shuffle_3d",
]


class ChannelsFirstLayerNorm(nn.Module):
    """LayerNorm over the channel axis of a ``(B, C, D, H, W)`` tensor (biased variance)."""

    def __init__(self, channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(1, keepdim=True)
        var = (x - mean).pow(2).mean(1, keepdim=True)
        x = (x - mean) / torch.sqrt(var + self.eps)
        return self.weight[:, None, None, None] * x + self.bias[:, None, None, None]


class PatchEmbed(nn.Module):
    """Non-overlapping patch embedding: a conv with kernel = stride = patch size."""

    def __init__(self, in_channels: int, embed_dim: int, patch_size: int) -> None:
        super().__init__()
        self.proj = nn.Conv3d(in_channels, embed_dim, patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


class PatchMerging(nn.Module):
    """2x downsampling: the 8 voxels of each 2x2x2 cell stacked on channels, LN, 1x1 conv to 2C.

    Cell order on channels is (d, h, w) bits with w fastest, as upstream concatenates the slices.
    """

    def __init__(self, in_ch: int) -> None:
        super().__init__()
        self.norm = ChannelsFirstLayerNorm(8 * in_ch)
        self.reduction = nn.Conv3d(8 * in_ch, 2 * in_ch, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c, d, h, w = (int(s) for s in x.shape[1:])
        x = x.reshape(-1, c, d // 2, 2, h // 2, 2, w // 2, 2)
        x = x.permute(0, 3, 5, 7, 1, 2, 4, 6).reshape(-1, 8 * c, d // 2, h // 2, w // 2)
        return self.reduction(self.norm(x))


class FFN(nn.Module):
    """Pointwise feed-forward: 1x1 conv, exact GELU, 1x1 conv (dropout in training)."""

    def __init__(self, channels: int, expansion: int, dropout: float) -> None:
        super().__init__()
        self.linear1 = nn.Conv3d(channels, channels * expansion, 1)
        self.linear2 = nn.Conv3d(channels * expansion, channels, 1)
        self.act = nn.GELU()
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.linear2(self.drop(self.act(self.linear1(x)))))


class DownConv(nn.Module):
    """Strided conv (kernel 2p-1, stride p, padding p-1) followed by InstanceNorm."""

    def __init__(self, in_ch: int, out_ch: int, factor: int) -> None:
        super().__init__()
        self.down = nn.Conv3d(in_ch, out_ch, 2 * factor - 1, stride=factor, padding=factor - 1)
        self.norm = nn.InstanceNorm3d(out_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.down(x))


class UpConv(nn.Module):
    """2x transposed conv followed by InstanceNorm."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.up = nn.ConvTranspose3d(in_ch, out_ch, 2, stride=2)
        self.norm = nn.InstanceNorm3d(out_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.up(x))


class JLC(nn.Module):
    """Johnson-Lindenstrauss-guided conv block: parallel grouped convs, then a channel MLP.

    ``y = x + sum_k GELU(IN(gconv_k(x)))``; ``out = y + MLP(IN(y))``.
    """

    def __init__(
        self, channels: int, kernel_sizes: list[int], groups: int, expansion: int, dropout: float
    ) -> None:
        super().__init__()
        self.spatial_convs = nn.ModuleList(
            nn.Sequential(
                nn.Conv3d(channels, channels, k, padding=k // 2, groups=groups),
                nn.InstanceNorm3d(channels),
                nn.GELU(),
            )
            for k in kernel_sizes
        )
        self.channel_conv = nn.Sequential(
            nn.InstanceNorm3d(channels),
            nn.Conv3d(channels, channels * expansion, 1),
            nn.GELU(),
            nn.Conv3d(channels * expansion, channels, 1),
            nn.Dropout(dropout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branches = [conv(x) for conv in self.spatial_convs]
        total = branches[0]
        for branch in branches[1:]:
            total = total + branch
        out = x + total
        return out + self.channel_conv(out)


def jlc_layer(
    channels: int,
    depth: int,
    kernel_sizes: list[int],
    min_dim_group: int,
    expansion: int,
    dropout: float,
) -> nn.Sequential:
    """``depth`` JLC blocks with ``channels // min_dim_group`` groups."""
    groups = channels // min_dim_group
    return nn.Sequential(
        *(JLC(channels, kernel_sizes, groups, expansion, dropout) for _ in range(depth))
    )


def pixel_shuffle_3d(x: torch.Tensor, scale: int) -> torch.Tensor:
    """``(B, C*s^3, D, H, W) -> (B, C, D*s, H*s, W*s)``, channels split as ``(c s1 s2 s3)``."""
    cs, d, h, w = (int(s) for s in x.shape[1:])
    c = cs // scale**3
    x = x.reshape(-1, c, scale, scale, scale, d, h, w)
    x = x.permute(0, 1, 5, 2, 6, 3, 7, 4)
    return x.reshape(-1, c, d * scale, h * scale, w * scale)
