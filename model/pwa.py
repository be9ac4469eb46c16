"""Paired Window Attention (PWA), the transformer stream of VeloxSeg.

For each scale s, the volume is cut into big windows, each max-pooled by the small window to
``n = big / small`` tokens per axis; every window of every scale is one attention group, and the
modalities are stacked on the token axis so each modality attends to all of them. The attention
result is upsampled back inside each big window (trilinear, align_corners=True).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from veloxseg.model.layers import FFN, ChannelsFirstLayerNorm, PatchMerging

__all__ = [
    "PWABlock",
    "PairedWindowAttention",
    "TransformerLevel",
    "WindowScheme",
    "relative_position_index",
    "window_attention_core",
]

Size3 = tuple[int, int, int]


@dataclass(frozen=True)
class WindowScheme:
    """The windows of one PWA level, derived from its feature size (``D, H, W``).

    Scales start at the minimum big/small windows and double while any big-window side fits.
    """

    big: tuple[Size3, ...]
    small: tuple[Size3, ...]
    heads: int
    channels_qk: int
    channels_v: int

    @property
    def tokens_per_axis(self) -> Size3:
        b, s = self.big[0], self.small[0]
        return (b[0] // s[0], b[1] // s[1], b[2] // s[2])

    @property
    def tokens(self) -> int:
        n = self.tokens_per_axis
        return n[0] * n[1] * n[2]

    @property
    def scales(self) -> int:
        return len(self.big)

    @classmethod
    def build(
        cls,
        feature_size: Size3,
        channels: int,
        min_big: Size3,
        min_small: Size3,
        scale_factor: int,
        heads: int,
        min_dim_head: int,
    ) -> WindowScheme:
        big, small = [tuple(min_big)], [tuple(min_small)]
        while any(b * scale_factor <= f for b, f in zip(big[-1], feature_size, strict=True)):
            big.append(tuple(b * scale_factor for b in big[-1]))
            small.append(tuple(s * scale_factor for s in small[-1]))
        if not all(b <= f for b, f in zip(big[-1], feature_size, strict=True)):
            raise ValueError(
                f"window {big[-1]} does not fit feature size {feature_size}; "
                "choose min_big_window_sizes that scale evenly into the patch"
            )
        if any(
            b % s for bw, sw in zip(big, small, strict=True) for b, s in zip(bw, sw, strict=True)
        ):
            raise ValueError(f"big windows {big} must be multiples of small windows {small}")
        channels_qk = len(big) * heads * min_dim_head
        channels_v = math.ceil(channels / channels_qk) * channels_qk
        return cls(
            big=tuple(big),  # type: ignore[arg-type]
            small=tuple(small),  # type: ignore[arg-type]
            heads=heads,
            channels_qk=channels_qk,
            channels_v=channels_v,
        )


def relative_position_index(n: Size3) -> torch.Tensor:
    """Swin-style ``(L, L)`` index into the ``prod(2n-1)`` bias table, L = prod(n)."""
    coords = torch.stack(torch.meshgrid(*(torch.arange(k) for k in n), indexing="ij")).flatten(1)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0)
    rel = rel + torch.tensor([k - 1 for k in n])
    strides = torch.tensor([(2 * n[1] - 1) * (2 * n[2] - 1), 2 * n[2] - 1, 1])
    return (rel * strides).sum(-1)


def _gather(x: torch.Tensor, scheme: WindowScheme) -> torch.Tensor:
    """``(B, S*h*c, D, H, W) -> (B, h, windows, L, c)``, windows of all scales concatenated.

    Sizes other than batch are taken as Python ints so that an export sees static shapes.
    """
    d, hh, w = (int(s) for s in x.shape[2:])
    n = scheme.tokens_per_axis
    x = x.reshape(-1, scheme.scales, int(x.shape[1]) // scheme.scales, d, hh, w)
    parts = []
    for i, small in enumerate(scheme.small):
        xi = x[:, i]
        if small != (1, 1, 1):
            xi = F.max_pool3d(xi, kernel_size=small, stride=small)
        c_all, pd, ph, pw = (int(s) for s in xi.shape[1:])
        nd, nh, nw = pd // n[0], ph // n[1], pw // n[2]
        xi = xi.reshape(-1, scheme.heads, c_all // scheme.heads, nd, n[0], nh, n[1], nw, n[2])
        xi = xi.permute(0, 1, 3, 5, 7, 4, 6, 8, 2)
        parts.append(
            xi.reshape(-1, scheme.heads, nd * nh * nw, scheme.tokens, c_all // scheme.heads)
        )
    return torch.cat(parts, dim=2)


def _scatter(attn: torch.Tensor, scheme: WindowScheme, size: Size3) -> torch.Tensor:
    """Inverse of :func:`_gather`: ``(B, h, windows, L, c) -> (B, S*h*c, D, H, W)``."""
    heads, c = scheme.heads, int(attn.shape[-1])
    n = scheme.tokens_per_axis
    start, outs = 0, []
    for big, small in zip(scheme.big, scheme.small, strict=True):
        nd, nh, nw = (size[k] // big[k] for k in range(3))
        count = nd * nh * nw
        a = attn[:, :, start : start + count]
        start += count
        a = a.reshape(-1, heads, nd, nh, nw, n[0], n[1], n[2], c)
        if small != (1, 1, 1):
            a = a.permute(0, 1, 2, 3, 4, 8, 5, 6, 7).reshape(-1, 1, *n)
            a = F.interpolate(a, size=big, mode="trilinear", align_corners=True)
            a = a.reshape(-1, heads, nd, nh, nw, c, *big).permute(0, 1, 2, 3, 4, 6, 7, 8, 5)
        a = a.permute(0, 1, 8, 2, 5, 3, 6, 4, 7)
        outs.append(a.reshape(-1, heads * c, *size))
    return torch.cat(outs, dim=1)


def window_attention_core(
    qs: list[torch.Tensor],
    ks: list[torch.Tensor],
    vs: list[torch.Tensor],
    bias: torch.Tensor,
    scheme: WindowScheme,
    weight_dropout: nn.Module | None = None,
) -> list[torch.Tensor]:
    """Gather, attend, scatter: per-modality q, k, v ``(B, C*, D, H, W)`` to per-modality outputs.

    ``bias`` is the ``(heads, M*L, M*L)`` relative-position bias, already tiled over modality pairs.
    """
    size = tuple(int(s) for s in qs[0].shape[2:])
    m = len(qs)
    q = torch.cat([_gather(t, scheme) for t in qs], dim=3)
    k = torch.cat([_gather(t, scheme) for t in ks], dim=3)
    v = torch.cat([_gather(t, scheme) for t in vs], dim=3)
    scores = torch.matmul(q, k.transpose(-1, -2)) / (q.shape[-1] ** 0.5)
    weights = torch.softmax(scores + bias[None, :, None], dim=-1)
    if weight_dropout is not None:
        weights = weight_dropout(weights)
    attn = torch.matmul(weights, v)
    chunks = attn.chunk(m, dim=3)
    return [_scatter(chunk, scheme, size) for chunk in chunks]  # type: ignore[arg-type]


class PositionEmbedding(nn.Module):
    """The relative-position bias table of one PWA block (shared by all modality pairs)."""

    def __init__(self, heads: int, n: Size3) -> None:
        super().__init__()
        table = (2 * n[0] - 1) * (2 * n[1] - 1) * (2 * n[2] - 1)
        self.relative_position_bias_table = nn.Parameter(torch.zeros(table, heads))
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)
        self.register_buffer("relative_position_index", relative_position_index(n))

    def bias(self, modalities: int) -> torch.Tensor:
        """``(heads, M*L, M*L)``: the ``(heads, L, L)`` bias repeated over every modality pair."""
        index = self.relative_position_index
        length = index.shape[0]
        b = self.relative_position_bias_table[index.reshape(-1)]
        b = b.reshape(length, length, -1).permute(2, 0, 1)
        return b.repeat(1, modalities, modalities)


class PairedWindowAttention(nn.Module):
    """Multi-modal PWA: per-modality LN and q/k/v projections, joint windowed attention, mixing.

    Returns ``x_m + mix_m(attention_m)`` for each modality m.
    """

    def __init__(
        self,
        scheme: WindowScheme,
        channels: list[int],
        qkv_bias: bool,
        attn_drop: float,
        proj_drop: float,
    ) -> None:
        super().__init__()
        self.scheme = scheme
        self.position_embedding = PositionEmbedding(scheme.heads, scheme.tokens_per_axis)
        self.input_norms = nn.ModuleList(ChannelsFirstLayerNorm(c) for c in channels)
        self.qkv_proj = nn.ModuleList(
            nn.ModuleList(
                [
                    nn.Conv3d(c, scheme.channels_qk, 1, bias=qkv_bias),
                    nn.Conv3d(c, scheme.channels_qk, 1, bias=qkv_bias),
                    nn.Conv3d(c, scheme.channels_v, 1, bias=qkv_bias),
                ]
            )
            for c in channels
        )
        self.mix_channels = nn.ModuleList(nn.Conv3d(scheme.channels_v, c, 1) for c in channels)
        self.weight_dropout = nn.Dropout(attn_drop)
        self.dropout_attns = nn.ModuleList(nn.Dropout(proj_drop) for _ in channels)

    def project(self, xs: list[torch.Tensor]) -> tuple[list[torch.Tensor], ...]:
        """Per-modality ``(q, k, v)`` lists from LayerNorm + 1x1 convs."""
        qs, ks, vs = [], [], []
        for x, norm, (pq, pk, pv) in zip(xs, self.input_norms, self.qkv_proj, strict=True):
            xn = norm(x)
            qs.append(pq(xn))
            ks.append(pk(xn))
            vs.append(pv(xn))
        return qs, ks, vs

    def core(
        self, qs: list[torch.Tensor], ks: list[torch.Tensor], vs: list[torch.Tensor]
    ) -> list[torch.Tensor]:
        """Gather + attention + scatter; the part the exporter replaces by a custom op."""
        bias = self.position_embedding.bias(len(qs))
        dropout = self.weight_dropout if self.training else None
        return window_attention_core(qs, ks, vs, bias, self.scheme, dropout)

    def forward(self, xs: list[torch.Tensor]) -> list[torch.Tensor]:
        attns = self.core(*self.project(xs))
        return [
            x + drop(mix(a))
            for x, a, mix, drop in zip(
                xs, attns, self.mix_channels, self.dropout_attns, strict=True
            )
        ]


class PWABlock(nn.Module):
    """``y = x + PWA(x)`` (PWA already adds x once), then ``y + FFN(LN(y))``, per modality."""

    def __init__(
        self,
        scheme: WindowScheme,
        channels: list[int],
        ffn_expansion: int,
        qkv_bias: bool,
        attn_drop: float,
        proj_drop: float,
    ) -> None:
        super().__init__()
        self.attn = PairedWindowAttention(scheme, channels, qkv_bias, attn_drop, proj_drop)
        self.ffns = nn.ModuleList(FFN(c, ffn_expansion, proj_drop) for c in channels)
        self.norms = nn.ModuleList(ChannelsFirstLayerNorm(c) for c in channels)

    def forward(self, xs: list[torch.Tensor]) -> list[torch.Tensor]:
        ys = [x + a for x, a in zip(xs, self.attn(xs), strict=True)]
        return [y + ffn(norm(y)) for y, ffn, norm in zip(ys, self.ffns, self.norms, strict=True)]


class TransformerLevel(nn.Module):
    """One level of the PWA stream: ``depth`` blocks, then (except last) patch merging."""

    def __init__(
        self,
        scheme: WindowScheme,
        channels: list[int],
        depth: int,
        ffn_expansion: int,
        qkv_bias: bool,
        attn_drop: float,
        proj_drop: float,
        downsample: bool,
    ) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            PWABlock(scheme, channels, ffn_expansion, qkv_bias, attn_drop, proj_drop)
            for _ in range(depth)
        )
        self.downs = nn.ModuleList(PatchMerging(c) for c in channels) if downsample else None

    def forward(
        self, xs: list[torch.Tensor]
    ) -> tuple[list[torch.Tensor], list[torch.Tensor] | None]:
        for block in self.blocks:
            xs = block(xs)
        down = [d(x) for d, x in zip(self.downs, xs, strict=True)] if self.downs else None
        return xs, down
