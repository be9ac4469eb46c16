"""Resample volumes between the input grid and the model's voxel spacing.

All arrays are channel-first ``(C, X, Y, Z)`` (or ``(K, X, Y, Z)`` for per-class scores) and all
spacings are mm in the same X, Y, Z order. Forward and backward maps are consistent the way
nnU-Net's are: the model-space shape is ``round(shape * spacing_in / spacing_out)``, both
directions align the outer voxel edges (``scipy.ndimage.zoom`` with ``grid_mode=True``, which is
what scikit-image's ``resize`` does), and the backward resample lands on exactly the input shape.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

__all__ = [
    "SPACING_RTOL",
    "labels_from_resampled_scores",
    "new_shape",
    "resample_to_shape",
    "resample_to_spacing",
]

SPACING_RTOL = 1e-3  # spacings this close count as equal: no resampling at all


def new_shape(
    shape: Sequence[int], spacing_in: Sequence[float], spacing_out: Sequence[float]
) -> tuple[int, int, int]:
    """Spatial shape (X, Y, Z) of a grid of ``shape`` resampled from ``spacing_in`` to
    ``spacing_out`` (mm): ``round(shape * spacing_in / spacing_out)``, at least 1."""
    scaled = np.round(np.asarray(shape) * np.asarray(spacing_in) / np.asarray(spacing_out))
    return tuple(int(n) for n in np.maximum(scaled, 1))  # type: ignore[return-value]


SLAB_VOXELS = 1 << 22  # labels are resampled in Z slabs of about this many voxels (16 MB float32)


def _zoom_into(volume: np.ndarray, out: np.ndarray) -> None:
    """Linearly resample one (X, Y, Z) volume onto ``out``'s shape, edge-aligned, edges
    extended."""
    if volume.shape == out.shape:
        out[...] = volume
        return
    factors = np.divide(out.shape, volume.shape)
    ndimage.zoom(volume, factors, output=out, order=1, mode="nearest", grid_mode=True)


def _zoom_slab_into(volume: np.ndarray, shape: Sequence[int], z0: int, out: np.ndarray) -> None:
    """Slices ``z0 : z0 + out.shape[2]`` of the linear, edge-aligned resample of ``volume`` to
    ``shape``, the same numbers as :func:`_zoom_into` computes for the whole grid (to rounding):
    output voxel ``o`` samples input coordinate ``(o + 0.5) * in / out - 0.5`` per axis."""
    step = np.divide(volume.shape, shape)
    offset = 0.5 * step - 0.5
    offset[2] += step[2] * z0
    ndimage.affine_transform(volume, step, offset=offset, output=out, order=1, mode="nearest")


def resample_to_shape(
    data: np.ndarray, shape: Sequence[int], *, out: np.ndarray | None = None
) -> np.ndarray:
    """Linearly resample ``data`` (C, X, Y, Z) to spatial ``shape``, channel by channel, as
    float32.

    Linear never overshoots, so clipped intensities, logits and probabilities stay in range.
    Returns ``data`` itself when the shape already matches,
    unless ``out`` (float32 ``(C, *shape)``) is given to receive the result.
    """
    if data.ndim != 4:
        raise ValueError(f"expected (C, X, Y, Z) data, got shape {data.shape}")
    shape = tuple(int(n) for n in shape)
    if out is None:
        if data.shape[1:] == shape:
            return data
        out = np.empty((data.shape[0], *shape), dtype=np.float32)
    for c in range(data.shape[0]):
        _zoom_into(data[c], out[c])
    return out


def resample_to_spacing(
    data: np.ndarray,
    spacing_in: Sequence[float],
    spacing_out: Sequence[float],
) -> np.ndarray:
    """Linearly resample an image ``data`` (C, X, Y, Z) from ``spacing_in`` to ``spacing_out``
    (mm). Returns ``data`` itself when the spacings agree within ``SPACING_RTOL`` or the new
    shape equals the old one (the resample would be the identity)."""
    if np.allclose(spacing_in, spacing_out, rtol=SPACING_RTOL, atol=0.0):
        return data
    return resample_to_shape(data, new_shape(data.shape[1:], spacing_in, spacing_out))


def labels_from_resampled_scores(
    scores: np.ndarray, shape: Sequence[int], *, margins: bool = False
) -> np.ndarray:
    """Class map (X, Y, Z) at ``shape`` from per-class ``scores`` (K, x, y, z), probabilities or
    logits: resample each class linearly, then take the argmax.

    The target grid is filled in Z slabs of about ``SLAB_VOXELS`` voxels, each class resampled
    into a running maximum and argmax, so the only full-size array is the labels: a CT-sized
    grid needs no float32 volume per class (for 512 x 512 x 1000, 2 GB less at peak). Ties go
    to the lowest class, exactly as ``np.argmax``. Returns class indices 0..K-1 as uint8
    (uint16 if K > 256). With ``margins``, ``scores`` are (K-1, x, y, z) logits of classes
    1..K-1 minus class 0's, and class 0 scores 0 everywhere: linear resampling commutes with
    that difference.
    """
    if scores.ndim != 4 or scores.shape[0] < (0 if margins else 1):
        raise ValueError(f"expected (K, X, Y, Z) scores, got shape {scores.shape}")
    shape = tuple(int(n) for n in shape)
    n_classes = scores.shape[0] + int(margins)
    labels = np.zeros(shape, dtype=np.uint8 if n_classes <= 256 else np.uint16)
    depth = max(1, min(shape[2], SLAB_VOXELS // (shape[0] * shape[1])))
    best = np.empty((*shape[:2], depth), dtype=np.float32)
    current = np.empty_like(best)
    better = np.empty(best.shape, dtype=bool)
    for z0 in range(0, shape[2], depth):
        n = min(depth, shape[2] - z0)
        slab_best, slab_current, slab_better = best[..., :n], current[..., :n], better[..., :n]
        slab_labels = labels[..., z0 : z0 + n]
        if margins:
            slab_best.fill(0.0)
        else:
            _zoom_slab_into(scores[0], shape, z0, slab_best)
        for k in range(1, n_classes):
            _zoom_slab_into(scores[k - int(margins)], shape, z0, slab_current)
            np.greater(slab_current, slab_best, out=slab_better)
            slab_labels[slab_better] = k
            np.maximum(slab_best, slab_current, out=slab_best)
    return labels
