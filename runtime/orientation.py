"""Reorder voxels into the closest canonical RAS+ orientation and back, exactly.

The model was trained on RAS+ arrays, so inputs are flipped/transposed (never interpolated) to the
voxel order whose axes point closest to Right, Anterior, Superior. Oblique scans keep their
obliqueness in the affine. ``from_canonical`` undoes the same flips and transposes, so the round
trip is exact for any array whose last three axes are the spatial ones.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from nibabel.orientations import (
    apply_orientation,
    axcodes2ornt,
    inv_ornt_aff,
    io_orientation,
    ornt2axcodes,
    ornt_transform,
)

from veloxseg.runtime.errors import InputError

__all__ = ["Reorientation", "empty_in_canonical_layout", "from_canonical", "to_canonical"]

_RAS = axcodes2ornt(("R", "A", "S"))


@dataclass(frozen=True, eq=False)
class Reorientation:
    """How ``to_canonical`` reordered the voxels: the input's nibabel orientation ``source``
    (3x2: output axis, flip per input axis) and its spatial ``shape`` in file order."""

    source: np.ndarray
    shape: tuple[int, int, int]

    @property
    def axcodes(self) -> str:
        """Input axis directions, e.g. ``"LPS"`` for DICOM-style files, ``"RAS"`` if canonical."""
        return "".join(ornt2axcodes(self.source))


def _apply_spatial(array: np.ndarray, ornt: np.ndarray) -> np.ndarray:
    """Apply a nibabel orientation transform to the last three axes (a view, no copy)."""
    leading = array.ndim - 3
    spatial_first = np.moveaxis(array, (-3, -2, -1), (0, 1, 2))
    moved = apply_orientation(spatial_first, ornt)
    return np.moveaxis(moved, (0, 1, 2), (leading, leading + 1, leading + 2))


def to_canonical(
    data: np.ndarray, affine: np.ndarray
) -> tuple[np.ndarray, np.ndarray, Reorientation]:
    """Reorder ``data`` (C, X, Y, Z) in file order to closest-RAS+ voxel order.

    Returns the reordered data (a view of ``data`` when possible), its 4x4 affine (same world
    positions, mm) and the ``Reorientation`` that ``from_canonical`` needs.
    """
    if data.ndim != 4:
        raise ValueError(f"expected (C, X, Y, Z) data, got shape {data.shape}")
    source = io_orientation(affine)
    if np.isnan(source).any():
        raise InputError(
            "the image affine has a degenerate axis, so its orientation is undefined; "
            "fix the qform/sform in its header"
        )
    shape = (int(data.shape[1]), int(data.shape[2]), int(data.shape[3]))
    transform = ornt_transform(source, _RAS)
    canonical_affine = np.asarray(affine, dtype=np.float64) @ inv_ornt_aff(transform, shape)
    return _apply_spatial(data, transform), canonical_affine, Reorientation(source, shape)


def empty_in_canonical_layout(
    channels: int, shape: tuple[int, int, int], affine: np.ndarray
) -> np.ndarray:
    """An uninitialised float32 ``(channels, X, Y, Z)`` array in file voxel order whose memory
    is laid out in canonical order, so that :func:`to_canonical` of it is a contiguous view.

    Loading into it reorders the voxels while they are read, instead of copying a whole
    CT-sized volume afterwards (2 GB for two 512 x 512 x 1000 channels). A degenerate affine
    gets a plain array; :func:`to_canonical` then refuses it.
    """
    source = io_orientation(affine)
    if np.isnan(source).any():
        return np.empty((channels, *shape), dtype=np.float32)
    canonical_shape = [0, 0, 0]
    for axis, (to, _flip) in enumerate(ornt_transform(source, _RAS)):
        canonical_shape[int(to)] = shape[axis]
    canonical = np.empty((channels, *canonical_shape), dtype=np.float32)
    return from_canonical(canonical, Reorientation(source, shape))


def from_canonical(array: np.ndarray, reorientation: Reorientation) -> np.ndarray:
    """Undo ``to_canonical`` on ``array`` (..., X', Y', Z') with any leading axes (channels,
    classes), giving (..., X, Y, Z) in the input file's voxel order (a view, no copy)."""
    transform = ornt_transform(_RAS, reorientation.source)
    restored = _apply_spatial(array, transform)
    if restored.shape[-3:] != reorientation.shape:
        raise ValueError(
            f"array spatial shape {array.shape[-3:]} does not match the canonical grid of an "
            f"input of shape {reorientation.shape}"
        )
    return restored
