"""The module the exporter traces: VeloxSeg's eval forward, restructured where the algebra is
exact, plus a second output for label-only inference.

- All modalities' patch embeddings run as one convolution over the whole input with a
  block-diagonal weight, so runtimes never split the full-resolution input by channel (OpenVINO
  ran that split with a reference kernel: 1.5 ms fp32, 4.5 ms bf16 per patch).
- Patch merging normalises each 2x2x2 cell with statistics pooled at full resolution and applies
  its 1x1 reduction as a stride-2 convolution with the LayerNorm's scale folded in, instead of
  stacking the cell on channels and normalising over 8C channels: OpenVINO ran that LayerNorm
  in a planar layout at about a third of its usual speed.
- ``label_margins`` are the logits of classes 1..K-1 minus those of class 0, from a head conv whose
  weight is the difference of the class blocks of the logits head. Their argmax (with class 0 at
  margin 0) is the argmax of the logits, and every step after the network (blending, flips,
  linear resampling) is linear, so labels come from K-1 channels instead of K: half the head conv,
  pixel shuffle and stitching for two classes.

Merged weights are computed in the graph from the original parameters (runtimes fold them at
load), so every weight keeps its state-dict name and :mod:`veloxseg.export.torch_reference` can
rebuild the PyTorch model from the file.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from veloxseg.model import VeloxSeg
from veloxseg.model.layers import PatchMerging, pixel_shuffle_3d
from veloxseg.runtime.model_file import LOGITS, MARGINS

__all__ = ["export_forward", "merged_embed", "output_names", "patch_merging_forward"]


def output_names(model: VeloxSeg) -> list[str]:
    """The exported graph's outputs: logits, and label margins when there are 2+ classes."""
    return [LOGITS, MARGINS] if model.n_classes > 1 else [LOGITS]


def export_forward(model: VeloxSeg, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The forward the exporter traces (bound to a copy of ``model``, so every weight keeps its
    state-dict name): ``image -> (logits, label_margins)``, or ``(logits,)`` for one class."""
    _, encs = model.encoder(x)
    up1, _, _ = model.decoder.features(encs)
    logits = model.decoder.head(up1)
    if model.n_classes == 1:
        return (logits,)
    return logits, _margins(model, up1)


def merged_embed(self: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """The transformer encoder's ``embed`` as one convolution over the whole input whose weight
    is block-diagonal over the modalities, split back by channel afterwards (eval: no dropout)."""
    convs = [e.proj for e in self.patch_embeds]
    total, start, weights = int(x.shape[1]), 0, []
    for conv in convs:
        w = conv.weight
        before = w.new_zeros(w.shape[0], start, *w.shape[2:])
        after = w.new_zeros(w.shape[0], total - start - w.shape[1], *w.shape[2:])
        weights.append(torch.cat([before, w, after], dim=1))
        start += int(w.shape[1])
    bias = torch.cat([conv.bias for conv in convs])
    merged = F.conv3d(x, torch.cat(weights), bias, stride=convs[0].stride)
    return list(merged.split(int(convs[0].weight.shape[0]), dim=1))


def patch_merging_forward(self: PatchMerging, x: torch.Tensor) -> torch.Tensor:
    """:meth:`PatchMerging.forward` without the space-to-depth: ``LN`` over a cell's ``8C``
    values is a normalisation by the cell's mean and (two-pass) variance, which average pooling
    of channel means gives, followed by the LN's affine map and the reduction, both linear,
    i.e. one ``k=2, s=2`` convolution."""
    c = int(x.shape[1])
    mean = F.interpolate(F.avg_pool3d(x.mean(1, keepdim=True), 2), scale_factor=2.0)
    centred = x - mean
    var = F.avg_pool3d(centred.pow(2).mean(1, keepdim=True), 2)
    scale = F.interpolate(torch.rsqrt(var + self.norm.eps), scale_factor=2.0)
    w = self.reduction.weight.reshape(self.reduction.weight.shape[0], 8 * c)
    kernel = (w * self.norm.weight).reshape(-1, 2, 2, 2, c).permute(0, 4, 1, 2, 3)
    return F.conv3d(centred * scale, kernel, w @ self.norm.bias, stride=2)


def _margins(model: VeloxSeg, up1: torch.Tensor) -> torch.Tensor:
    """Head conv with the class-0 block subtracted from every other class's, then shuffled."""
    conv = model.decoder.out_conv1[0]
    k, p = model.n_classes, model.patch_size
    w = conv.weight.reshape(k, p**3, *conv.weight.shape[1:])
    b = conv.bias.reshape(k, p**3)
    w = (w[1:] - w[:1]).reshape(-1, *conv.weight.shape[1:])
    b = (b[1:] - b[:1]).reshape(-1)
    return pixel_shuffle_3d(F.conv3d(up1, w, b, padding=conv.padding), p)
