"""Segmentation metrics in the AutoPET style, and the SUV-threshold baseline to beat.

Why: Dice alone hides whether a model finds small lesions or flags physiological uptake, so the
AutoPET challenge also reports false-positive and false-negative volumes of whole connected
components. The same definitions are used here, with 26-connectivity.
"""

from __future__ import annotations

from typing import TypedDict

import numpy as np
from scipy import ndimage

__all__ = ["Detection", "dice", "lesion_detection", "suv_threshold_baseline"]

_CONNECTIVITY_26 = np.ones((3, 3, 3), dtype=bool)


class Detection(TypedDict):
    """Component-wise detection counts and AutoPET false-positive/false-negative volumes."""

    tp: int  # predicted components that overlap a reference lesion
    fp: int  # predicted components that overlap none
    fn: int  # reference lesions that no prediction overlaps
    fp_volume_ml: float  # total volume of the ``fp`` components
    fn_volume_ml: float  # total volume of the ``fn`` lesions


def _binary_pair(pred: np.ndarray, ref: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pred, ref = np.asarray(pred), np.asarray(ref)
    if pred.shape != ref.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from reference {ref.shape}")
    return pred != 0, ref != 0


def dice(pred: np.ndarray, ref: np.ndarray) -> float:
    """Binary Dice of non-zero voxels; 1.0 when both are empty (nothing to find, nothing found)."""
    pred, ref = _binary_pair(pred, ref)
    total = int(np.count_nonzero(pred)) + int(np.count_nonzero(ref))
    if total == 0:
        return 1.0
    return 2.0 * int(np.count_nonzero(pred & ref)) / total


def lesion_detection(
    pred: np.ndarray, ref: np.ndarray, spacing: tuple[float, float, float]
) -> Detection:
    """Match 26-connected components of ``pred`` and ``ref`` by any overlap.

    A predicted component is a true positive if it touches any reference lesion, otherwise a false
    positive; a reference lesion that no predicted voxel touches is a false negative. Volumes are
    in millilitres from ``spacing`` (mm).
    """
    pred, ref = _binary_pair(pred, ref)
    voxel_ml = float(np.prod(spacing)) / 1000.0
    pred_ids, n_pred = ndimage.label(pred, structure=_CONNECTIVITY_26)
    ref_ids, n_ref = ndimage.label(ref, structure=_CONNECTIVITY_26)
    both = pred & ref
    pred_hit = np.zeros(n_pred + 1, dtype=bool)
    pred_hit[pred_ids[both]] = True
    ref_hit = np.zeros(n_ref + 1, dtype=bool)
    ref_hit[ref_ids[both]] = True
    pred_sizes = np.bincount(pred_ids.ravel(), minlength=n_pred + 1)
    ref_sizes = np.bincount(ref_ids.ravel(), minlength=n_ref + 1)
    tp = int(pred_hit[1:].sum())
    detected = int(ref_hit[1:].sum())
    return Detection(
        tp=tp,
        fp=n_pred - tp,
        fn=n_ref - detected,
        fp_volume_ml=float(pred_sizes[1:][~pred_hit[1:]].sum()) * voxel_ml,
        fn_volume_ml=float(ref_sizes[1:][~ref_hit[1:]].sum()) * voxel_ml,
    )


def suv_threshold_baseline(
    pet: np.ndarray,
    threshold: float = 2.5,
    min_volume_ml: float = 0.5,
    *,
    spacing: tuple[float, float, float],
) -> np.ndarray:
    """The classic fixed-SUV baseline: voxels with ``SUV >= threshold``, minus tiny components.

    Deliberately plain: no organ masks, no liver-adaptive threshold. It finds most avid lesions but
    also every physiologically hot organ (brain, bladder, kidneys, heart, ...) and misses
    low-contrast lesions, which is what a learned model has to improve on. Components (26-connected)
    smaller than ``min_volume_ml`` are dropped as noise.
    """
    hot = np.asarray(pet) >= threshold
    ids, count = ndimage.label(hot, structure=_CONNECTIVITY_26)
    voxel_ml = float(np.prod(spacing)) / 1000.0
    sizes = np.bincount(ids.ravel(), minlength=count + 1)
    keep = sizes * voxel_ml >= min_volume_ml
    keep[0] = False
    return keep[ids].astype(np.uint8)
