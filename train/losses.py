"""The VeloxSeg training objective, as in the upstream recipe.

Why: the published model is trained with more than a segmentation loss. The total is

    seg + 0.5 * reconstruction + 2.0 * SDKT

where ``seg`` is deep-supervised Dice + cross-entropy over the four logit maps, ``reconstruction``
is the MSE between the teachers' reconstructions and the normalised input patch, and ``SDKT``
(self-distillation of knowledge by teachers) is the MSE between the Gram matrix of the
segmentation decoder's last features and each modality teacher's, averaged over modalities.
All terms are computed in float32, also when the forward ran under autocast.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from veloxseg.model import TrainOutput

__all__ = ["LossTerms", "VeloxSegLoss", "deep_supervision_weights", "soft_dice_loss"]

_SMOOTH = 1e-5  # MONAI DiceLoss smooth_nr = smooth_dr


class LossTerms(NamedTuple):
    """The weighted total and its three unweighted parts (scalars, float32)."""

    total: torch.Tensor
    seg: torch.Tensor
    rc: torch.Tensor
    sdkt: torch.Tensor


def deep_supervision_weights(configured: Sequence[float], n_outputs: int) -> list[float]:
    """Weights of the deep-supervision outputs, summing to 1.

    As upstream: configured weights are normalised by their sum; when their count differs from the
    number of outputs, equal weights are accepted and spread evenly, anything else is an error.
    """
    weights = [float(w) for w in configured]
    if n_outputs <= 0:
        raise ValueError(f"need at least one segmentation output, got {n_outputs}")
    if not weights or sum(weights) == 0:
        raise ValueError(f"deep-supervision weights must have a non-zero sum, got {weights}")
    if len(weights) != n_outputs:
        if len(set(weights)) == 1:
            return [1.0 / n_outputs] * n_outputs
        raise ValueError(
            f"{len(weights)} deep-supervision weights {weights} for {n_outputs} outputs; "
            "give one weight per output, or equal weights"
        )
    total = sum(weights)
    return [w / total for w in weights]


def soft_dice_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Soft Dice loss of ``logits`` (B, K, D, H, W) against integer ``labels`` (B, D, H, W).

    Matches MONAI ``DiceLoss(include_background=False, to_onehot_y=True, softmax=True)``:
    per sample and foreground class ``1 - (2 I + eps) / (|P| + |G| + eps)``, then the mean.
    """
    probs = torch.softmax(logits.float(), dim=1)[:, 1:]
    classes = torch.arange(1, logits.shape[1], device=labels.device).view(1, -1, 1, 1, 1)
    target = (labels.unsqueeze(1) == classes).to(probs.dtype)
    dims = tuple(range(2, probs.ndim))
    intersection = (probs * target).sum(dims)
    denominator = probs.sum(dims) + target.sum(dims)
    return (1.0 - (2.0 * intersection + _SMOOTH) / (denominator + _SMOOTH)).mean()


class VeloxSegLoss(nn.Module):
    """Deep-supervised Dice + CE, plus weighted reconstruction MSE and SDKT Gram-matrix MSE."""

    def __init__(
        self,
        deep_weights: Sequence[float] = (1.0, 1.0, 1.0, 1.0),
        rc_weight: float = 0.5,
        sdkt_weight: float = 2.0,
    ) -> None:
        super().__init__()
        self.deep_weights = tuple(float(w) for w in deep_weights)
        self.rc_weight = float(rc_weight)
        self.sdkt_weight = float(sdkt_weight)

    def seg_loss(self, logits: Sequence[torch.Tensor], labels: torch.Tensor) -> torch.Tensor:
        """Weighted sum over outputs of CE + Dice; every output is at the labels' resolution."""
        if labels.ndim != 4:
            raise ValueError(
                f"labels must be (B, D, H, W) class indices, got {tuple(labels.shape)}"
            )
        labels = labels.long()
        weights = deep_supervision_weights(self.deep_weights, len(logits))
        loss = logits[0].new_zeros((), dtype=torch.float32)
        for weight, out in zip(weights, logits, strict=True):
            out = out.float()
            loss = loss + weight * (F.cross_entropy(out, labels) + soft_dice_loss(out, labels))
        return loss

    def forward(self, output: TrainOutput, labels: torch.Tensor, inputs: torch.Tensor) -> LossTerms:
        """``output`` from the training forward on ``inputs`` (B, C, D, H, W), the normalised
        patch that the teachers reconstruct; ``labels`` (B, D, H, W)."""
        seg = self.seg_loss(output.logits, labels)
        rc = F.mse_loss(output.reconstructions.float(), inputs.float())
        seg_gram = output.seg_gram.float()
        sdkt = torch.stack([F.mse_loss(seg_gram, g.float()) for g in output.teacher_grams]).mean()
        total = seg + self.rc_weight * rc + self.sdkt_weight * sdkt
        return LossTerms(total, seg, rc, sdkt)
