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
    "new_shape",
    "resample_labels_via_probabilities",
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


def _zoom_into(volume: np.ndarray, out: np.ndarray, order: int) -> None:
    """Resample one (X, Y, Z) volume onto ``out``'s shape, edge-aligned, edges extended."""
    if volume.shape == out.shape:
        out[...] = volume
        return
    factors = np.divide(out.shape, volume.shape)
    ndimage.zoom(volume, factors, output=out, order=order, mode="nearest", grid_mode=True)


def resample_to_shape(data: np.ndarray, shape: Sequence[int], *, order: int = 1) -> np.ndarray:
    """Resample ``data`` (C, X, Y, Z) to spatial ``shape``, channel by channel, as float32.

    Order 1 (linear) suits probabilities and logits: it never overshoots. Higher orders are
    clipped to each channel's input range, as scikit-image / nnU-Net do. Returns ``data``
    itself when the shape already matches.
    """
    if data.ndim != 4:
        raise ValueError(f"expected (C, X, Y, Z) data, got shape {data.shape}")
    shape = tuple(int(n) for n in shape)
    if data.shape[1:] == shape:
        return data
    out = np.empty((data.shape[0], *shape), dtype=np.float32)
    for c in range(data.shape[0]):
        _zoom_into(data[c], out[c], order)
        if order > 1:
            np.clip(out[c], data[c].min(), data[c].max(), out=out[c])
    return out


def resample_to_spacing(
    data: np.ndarray,
    spacing_in: Sequence[float],
    spacing_out: Sequence[float],
    *,
    order: int = 3,
) -> np.ndarray:
    """Resample an image ``data`` (C, X, Y, Z) from ``spacing_in`` to ``spacing_out`` (mm).

    Cubic by default, clipped to the input range. Returns ``data`` unchanged when the spacings
    agree within ``SPACING_RTOL`` or the new shape equals the old one (the resample would be the
    identity).
    """
    if np.allclose(spacing_in, spacing_out, rtol=SPACING_RTOL, atol=0.0):
        return data
    return resample_to_shape(data, new_shape(data.shape[1:], spacing_in, spacing_out), order=order)


def resample_labels_via_probabilities(
    scores: np.ndarray, shape: Sequence[int], *, order: int = 1, margins: bool = False
) -> np.ndarray:
    """Class map (X, Y, Z) at ``shape`` from per-class ``scores`` (K, x, y, z), probabilities or
    logits: resample each class linearly, then take the argmax.

    Classes are resampled one at a time into a running maximum and running argmax, so memory is
    two float32 volumes at the target grid (plus one byte mask), not K. Ties go to the lowest
    class, exactly as ``np.argmax``. Returns class indices 0..K-1 as uint8 (uint16 if K > 256).
    With ``margins``, ``scores`` are (K-1, x, y, z) logits of classes 1..K-1 minus class 0's, and
    class 0 scores 0 everywhere: linear resampling commutes with that difference.
    """
    if scores.ndim != 4 or scores.shape[0] < (0 if margins else 1):
        raise ValueError(f"expected (K, X, Y, Z) scores, got shape {scores.shape}")
    shape = tuple(int(n) for n in shape)
    n_classes = scores.shape[0] + int(margins)
    labels = np.zeros(shape, dtype=np.uint8 if n_classes <= 256 else np.uint16)
    best = np.zeros(shape, dtype=np.float32)
    current = np.empty(shape, dtype=np.float32)
    better = np.empty(shape, dtype=bool)
    if not margins:
        _zoom_into(scores[0], best, order)
    for k in range(1, n_classes):
        _zoom_into(scores[k - int(margins)], current, order)
        np.greater(current, best, out=better)
        labels[better] = k
        np.maximum(best, current, out=best)
    return labels
