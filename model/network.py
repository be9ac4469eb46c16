"""The VeloxSeg network: dual-stream encoder (PWA + JLC), segmentation decoder, and the
training-only reconstruction teachers and deep-supervision heads.

Parameter names mirror the upstream code so that upstream checkpoints load with ``strict=True``.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from veloxseg.model.layers import DownConv, PatchEmbed, UpConv, jlc_layer, pixel_shuffle_3d
from veloxseg.model.pwa import TransformerLevel, WindowScheme

__all__ = ["TrainOutput", "VeloxSeg", "gram_matrix"]

_DEFAULTS: dict[str, Any] = {
    "n_classes": 2,
    "base_ch": 16,
    "conv_depths": [1, 1, 1, 1],
    "kernel_sizes": [1, 3, 5],
    "min_dim_group": [4, 8, 8, 16],
    "conv_expansion_factor": [3, 3, 2, 2],
    "attn_base_ch": 16,
    "depths": [2, 2, 2, 2],
    "min_big_window_sizes": [[3, 3, 3], [6, 6, 6], [3, 3, 3], [3, 3, 3]],
    "min_small_window_sizes": [[1, 1, 1], [1, 1, 1], [1, 1, 1], [1, 1, 1]],
    "min_dim_head": [4, 8, 8, 16],
    "scale_factors": [2, 2, 2, 2],
    "num_heads": [1, 2, 2, 4],
    "attn_drop": 0.1,
    "proj_drop": 0.1,
    "drop_path": 0.0,
    "ffn_expansion_ratio": [3, 3, 2, 2],
    "act_layer": "GELU",
    "patch_norm": False,
    "qkv_bias": True,
    "conv_drop": 0.0,
    "deep_supervision": True,
    "spatial_dim": 3,
}
_LEVELS = 4


class TrainOutput(NamedTuple):
    """What the training forward returns.

    ``logits``: deep-supervision logits, full resolution first, each ``(B, K, D, H, W)``;
    ``reconstructions``: ``(B, sum(in_ch), D, H, W)``; ``seg_gram``: ``(B, C, C)`` Gram matrix of
    the segmentation decoder's last features; ``teacher_grams``: one ``(B, C, C)`` per modality.
    """

    logits: list[torch.Tensor]
    reconstructions: torch.Tensor
    seg_gram: torch.Tensor
    teacher_grams: list[torch.Tensor]


def gram_matrix(x: torch.Tensor) -> torch.Tensor:
    """``(B, C, D, H, W) -> (B, C, C)``, normalised by ``C*D*H*W`` as upstream SDKT does."""
    b, c = x.shape[:2]
    flat = x.reshape(b, c, -1)
    return torch.bmm(flat, flat.transpose(1, 2)) / flat[0].numel()


def _resolve(config: dict[str, Any]) -> dict[str, Any]:
    unknown = set(config) - set(_DEFAULTS) - {"input_size", "patch_size", "in_ch"}
    if unknown:
        raise ValueError(f"unknown VeloxSeg config keys: {sorted(unknown)}")
    missing = {"input_size", "patch_size", "in_ch"} - set(config)
    if missing:
        raise ValueError(f"VeloxSeg config lacks required keys: {sorted(missing)}")
    cfg = {**_DEFAULTS, **config}
    if cfg["spatial_dim"] != 3:
        raise ValueError("only 3D VeloxSeg (spatial_dim=3) is supported")
    if cfg["patch_norm"] or str(cfg["act_layer"]).lower() != "gelu":
        raise ValueError("only patch_norm=False and act_layer='GELU' are supported")
    if len(set(cfg["in_ch"])) != 1:
        raise ValueError(f"all modalities need the same channel count, got in_ch={cfg['in_ch']}")
    if cfg["n_classes"] < 2:  # one softmax channel is always 1: every voxel would be background
        raise ValueError(
            f"n_classes must be at least 2 (background and the classes: labels are the argmax "
            f"of a softmax), got {cfg['n_classes']}; set n_classes in the config"
        )
    return cfg


def _jlc_level(cfg: dict[str, Any], level: int) -> nn.Sequential:
    """The JLC blocks of one level (``base_ch * 2**level`` channels) as the config sets them."""
    return jlc_layer(
        cfg["base_ch"] * 2**level,
        cfg["conv_depths"][level],
        cfg["kernel_sizes"],
        cfg["min_dim_group"][level],
        cfg["conv_expansion_factor"][level],
        cfg["conv_drop"],
    )


class _DecoderTrunk(nn.Module):
    """Shared by the segmentation decoder and the teachers: ``up_l = JLC(enc_l + up(up_l+1))``."""

    def __init__(self, cfg: dict[str, Any]) -> None:
        super().__init__()
        base = cfg["base_ch"]
        self.patch_size = cfg["patch_size"]
        self.layer_up3 = UpConv(base * 8, base * 4)
        self.layer_up2 = UpConv(base * 4, base * 2)
        self.layer_up1 = UpConv(base * 2, base)
        for i in range(3):
            self.add_module(f"layer{i + 1}", _jlc_level(cfg, i))

    def features(self, encs: list[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        """``(up1, up2, up3)``: decoder features at 1/4, 1/8 and 1/16 resolution."""
        enc1, enc2, enc3, enc4 = encs
        up3 = self.layer3(enc3 + self.layer_up3(enc4))
        up2 = self.layer2(enc2 + self.layer_up2(up3))
        up1 = self.layer1(enc1 + self.layer_up1(up2))
        return up1, up2, up3


class _SegDecoder(_DecoderTrunk):
    def __init__(self, cfg: dict[str, Any]) -> None:
        super().__init__(cfg)
        base, k = cfg["base_ch"], cfg["n_classes"]
        self.out_conv1 = nn.Sequential(nn.Conv3d(base, self.patch_size**3 * k, 3, padding=1))
        self.deep_supervision = cfg["deep_supervision"]
        if self.deep_supervision:
            self.out_conv2 = nn.Conv3d(base * 2, k, 1)
            self.out_conv3 = nn.Conv3d(base * 4, k, 1)
            self.out_conv4 = nn.Conv3d(base * 8, k, 1)

    def head(self, up1: torch.Tensor) -> torch.Tensor:
        """3x3x3 conv to ``p^3 * K`` channels, then pixel shuffle to full resolution."""
        return pixel_shuffle_3d(self.out_conv1(up1), self.patch_size)


class _ReconstructionDecoder(_DecoderTrunk):
    """SDKT teacher: reconstructs one modality from its PWA features and the fused features."""

    def __init__(self, cfg: dict[str, Any], out_ch: int) -> None:
        super().__init__(cfg)
        base, enc = cfg["base_ch"], cfg["attn_base_ch"] + cfg["base_ch"]
        for i in (4, 3, 2, 1):
            scale = 2 ** (i - 1)
            adapter = nn.Sequential(
                nn.Conv3d(enc * scale, base * scale, 1), nn.InstanceNorm3d(base * scale)
            )
            self.add_module(f"enc2rc_{i}", adapter)
        self.out_conv = nn.Sequential(nn.Conv3d(base, self.patch_size**3 * out_ch, 3, padding=1))

    def forward(self, feats: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Reconstruction ``(B, out_ch, D, H, W)`` and its decoder's last features."""
        adapters = (self.enc2rc_1, self.enc2rc_2, self.enc2rc_3, self.enc2rc_4)
        up1, _, _ = self.features([a(f) for a, f in zip(adapters, feats, strict=True)])
        return pixel_shuffle_3d(self.out_conv(up1), self.patch_size), up1


class _TransformerEncoder(nn.Module):
    def __init__(self, cfg: dict[str, Any], schemes: list[WindowScheme]) -> None:
        super().__init__()
        m = len(cfg["in_ch"])
        self.patch_embeds = nn.ModuleList(
            PatchEmbed(c, cfg["attn_base_ch"], cfg["patch_size"]) for c in cfg["in_ch"]
        )
        self.pos_drop = nn.Dropout(cfg["proj_drop"])
        self.layers = nn.ModuleList(
            TransformerLevel(
                schemes[i],
                [cfg["attn_base_ch"] * 2**i] * m,
                cfg["depths"][i],
                cfg["ffn_expansion_ratio"][i],
                cfg["qkv_bias"],
                cfg["attn_drop"],
                cfg["proj_drop"],
                downsample=i < _LEVELS - 1,
            )
            for i in range(_LEVELS)
        )

    def embed(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Each modality's patch embedding of ``(B, sum(in_ch), D, H, W)``."""
        chunks = x.chunk(len(self.patch_embeds), dim=1)
        return [self.pos_drop(embed(c)) for embed, c in zip(self.patch_embeds, chunks, strict=True)]

    def forward(self, x: torch.Tensor) -> list[list[torch.Tensor]]:
        """Per level, the list of per-modality PWA features."""
        xs = self.embed(x)
        levels = []
        for layer in self.layers:
            feats, xs = layer(xs)
            levels.append(feats)
        return levels


class _ConvEncoder(nn.Module):
    def __init__(self, cfg: dict[str, Any]) -> None:
        super().__init__()
        base = cfg["base_ch"]
        in_ch = sum(cfg["in_ch"])
        for i in range(_LEVELS):
            c_in = in_ch if i == 0 else base * 2 ** (i - 1)
            factor = cfg["patch_size"] if i == 0 else 2
            self.add_module(f"down{i + 1}", DownConv(c_in, base * 2**i, factor))
        for i in range(_LEVELS):
            self.add_module(f"layer{i + 1}", _jlc_level(cfg, i))


class _Encoder(nn.Module):
    def __init__(self, cfg: dict[str, Any], schemes: list[WindowScheme]) -> None:
        super().__init__()
        m = len(cfg["in_ch"])
        self.encoder_attn = _TransformerEncoder(cfg, schemes)
        self.encoder_conv = _ConvEncoder(cfg)
        attn, base = cfg["attn_base_ch"], cfg["base_ch"]
        for i in range(_LEVELS):
            fuse = nn.Sequential(
                nn.Conv3d(attn * 2**i * m, base * 2**i, 1), nn.InstanceNorm3d(base * 2**i)
            )
            self.add_module(f"attn2conv_{i + 1}", fuse)

    def forward(self, x: torch.Tensor) -> tuple[list[list[torch.Tensor]], list[torch.Tensor]]:
        """``(pwa_features, fused)``: per-level per-modality PWA features and the 4 fused maps."""
        pwa = self.encoder_attn(x)
        conv = self.encoder_conv
        encs: list[torch.Tensor] = []
        h = x
        for i in range(_LEVELS):
            fused = getattr(self, f"attn2conv_{i + 1}")(torch.cat(pwa[i], dim=1))
            h = getattr(conv, f"down{i + 1}")(h) + fused
            h = getattr(conv, f"layer{i + 1}")(h)
            encs.append(h)
        return pwa, encs


class VeloxSeg(nn.Module):
    """VeloxSeg for input ``(B, sum(in_ch), D, H, W)``; eval forward returns logits
    ``(B, n_classes, D, H, W)``, training forward returns a :class:`TrainOutput`.

    Build with the upstream config keys, e.g. ``VeloxSeg(**get_config("autopetii"))``.
    """

    def __init__(self, **config: Any) -> None:
        super().__init__()
        cfg = _resolve(config)
        self.config = cfg
        self.in_ch = list(cfg["in_ch"])
        self.n_classes = int(cfg["n_classes"])
        self.patch_size = int(cfg["patch_size"])
        self.schemes = self._window_schemes(cfg)
        size, unit = tuple(cfg["input_size"]), self.size_multiple
        if any(s % u for s, u in zip(size, unit, strict=True)):  # else tracing fails deep inside
            raise ValueError(
                f"input_size {list(size)} cannot be tiled by its window scheme: each axis must be "
                f"a multiple of {unit}; fix input_size in the config"
            )
        self.encoder = _Encoder(cfg, self.schemes)
        self.decoder = _SegDecoder(cfg)
        self.rc_decoders = nn.ModuleList(_ReconstructionDecoder(cfg, c) for c in cfg["in_ch"])
        self._init_weights()

    @staticmethod
    def _window_schemes(cfg: dict[str, Any]) -> list[WindowScheme]:
        size = [s // cfg["patch_size"] for s in cfg["input_size"]]
        schemes = []
        for i in range(_LEVELS):
            schemes.append(
                WindowScheme.build(
                    tuple(size),  # type: ignore[arg-type]
                    cfg["attn_base_ch"] * 2**i,
                    tuple(cfg["min_big_window_sizes"][i]),  # type: ignore[arg-type]
                    tuple(cfg["min_small_window_sizes"][i]),  # type: ignore[arg-type]
                    cfg["scale_factors"][i],
                    cfg["num_heads"][i],
                    cfg["min_dim_head"][i],
                )
            )
            size = [s // 2 for s in size]
        return schemes

    @property
    def size_multiple(self) -> tuple[int, int, int]:
        """Per axis, the spatial sizes the window scheme can tile are multiples of this."""
        units = []
        for axis in range(3):
            unit = self.patch_size * 2 ** (_LEVELS - 1)
            for level, scheme in enumerate(self.schemes):
                for big in scheme.big:
                    unit = math.lcm(unit, self.patch_size * 2**level * big[axis])
            units.append(unit)
        return tuple(units)  # type: ignore[return-value]

    def check_input(self, x: torch.Tensor) -> None:
        """Raise ``ValueError`` naming the sizes that work if ``x`` cannot be processed."""
        channels = sum(self.in_ch)
        if x.ndim != 5 or x.shape[1] != channels:
            raise ValueError(
                f"expected input (B, {channels}, D, H, W) for in_ch={self.in_ch}, "
                f"got {tuple(x.shape)}"
            )
        unit = self.size_multiple
        if any(s % u or s == 0 for s, u in zip(x.shape[2:], unit, strict=True)):
            raise ValueError(
                f"spatial size {tuple(x.shape[2:])} cannot be tiled by the window scheme; "
                f"each axis must be a positive multiple of {unit}, "
                f"e.g. {tuple(self.config['input_size'])}"
            )

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv3d | nn.ConvTranspose3d):
                nn.init.kaiming_normal_(module.weight, a=1e-2)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor | TrainOutput:
        self.check_input(x)
        pwa, encs = self.encoder(x)
        up1, up2, up3 = self.decoder.features(encs)
        logits = self.decoder.head(up1)
        if not self.training:
            return logits
        return self._train_outputs(x, pwa, encs, (up1, up2, up3), logits)

    def _train_outputs(
        self,
        x: torch.Tensor,
        pwa: list[list[torch.Tensor]],
        encs: list[torch.Tensor],
        ups: tuple[torch.Tensor, ...],
        logits: torch.Tensor,
    ) -> TrainOutput:
        up1, up2, up3 = ups
        outs = [logits]
        if self.decoder.deep_supervision:
            size = tuple(x.shape[2:])
            for head, feat in (
                (self.decoder.out_conv2, up2),
                (self.decoder.out_conv3, up3),
                (self.decoder.out_conv4, encs[3]),
            ):
                outs.append(
                    F.interpolate(head(feat), size=size, mode="trilinear", align_corners=True)
                )
        recons, grams = [], []
        for m, teacher in enumerate(self.rc_decoders):
            feats = [torch.cat([pwa[i][m], encs[i]], dim=1) for i in range(_LEVELS)]
            recon, last = teacher(feats)
            recons.append(recon)
            grams.append(gram_matrix(last))
        return TrainOutput(outs, torch.cat(recons, dim=1), gram_matrix(up1), grams)
