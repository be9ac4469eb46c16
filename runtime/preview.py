"""A PNG preview: axial, coronal and sagittal slices through the largest labelled component,
shown in RAS order whatever the file's voxel order, so every orientation of a scan previews
alike."""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
from nibabel.affines import voxel_sizes
from scipy import ndimage

from veloxseg.runtime.nifti_io import ImageGeometry
from veloxseg.runtime.orientation import to_canonical
from veloxseg.runtime.output_files import atomic_write_bytes

__all__ = ["preview_centre", "preview_stride", "write_preview"]

_PREVIEW_VOXELS = 1 << 25  # 32 M: still finer than the PNG's ~320 pixels per panel


def preview_stride(shape: tuple[int, ...]) -> int:
    """Every how many voxels a preview samples a scan of ``shape``, so that the image kept for
    it, the component labelling and the window levels stay near 32 M voxels, not 1 GB each."""
    return max(1, math.ceil((math.prod(shape) / _PREVIEW_VOXELS) ** (1 / 3)))


def preview_centre(labels: np.ndarray) -> tuple[int, int, int]:
    """Centre of mass of the largest connected foreground component (volume centre if none)."""
    components, count = ndimage.label(labels > 0)
    if count == 0:
        return tuple(s // 2 for s in labels.shape)  # type: ignore[return-value]
    sizes = np.bincount(components.ravel())[1:]
    largest = int(np.argmax(sizes)) + 1
    centre = ndimage.center_of_mass(components == largest)
    return tuple(round(float(c)) for c in centre)  # type: ignore[return-value]


def write_preview(
    labels: np.ndarray, image: np.ndarray, geometry: ImageGeometry, path: Path, stride: int = 1
) -> None:
    """Write axial, coronal and sagittal slices of ``image`` with ``labels`` overlaid (both
    (X, Y, Z) in file order), turned to RAS, aspect from the voxel size, to ``path``.
    ``image`` may be sampled every ``stride`` voxels (``full[::stride, ::stride, ::stride]``);
    the labels are then sampled alike, and titles give slice numbers of the full grid."""
    labels = labels[::stride, ::stride, ::stride]
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    labels = to_canonical(labels[None], geometry.affine)[0][0]  # views: no copies
    image, affine, _ = to_canonical(image[None], geometry.affine)
    image = image[0]
    cx, cy, cz = preview_centre(labels)
    sx, sy, sz = voxel_sizes(affine)
    views = [
        (f"axial {cz * stride}", np.s_[:, :, cz], sy / sx),
        (f"coronal {cy * stride}", np.s_[:, cy, :], sz / sx),
        (f"sagittal {cx * stride}", np.s_[cx, :, :], sz / sy),
    ]
    low, high = np.percentile(image, [1, 99])
    fig, axes = plt.subplots(1, 3, figsize=(12, 4.5), layout="constrained")  # titles fit
    vmax = max(int(labels.max()), 1)
    for ax, (title, index, aspect) in zip(axes, views, strict=True):
        shown = np.ma.masked_equal(labels[index].T, 0)
        ax.imshow(image[index].T, cmap="gray", vmin=low, vmax=high, origin="lower", aspect=aspect)
        ax.imshow(shown, cmap="autumn", vmin=0, vmax=vmax, alpha=0.6, origin="lower", aspect=aspect)
        ax.set_title(title)
        ax.axis("off")
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=80)
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())
