"""Per-modality intensity normalisation, matching upstream VeloxSeg's preprocessing scripts.

Upstream (``preprocess/normalization_CT_PET.py`` and ``normalization_MRI.py``):

* ``zscore``: ``(x - mean) / max(std, 1e-8)`` over the whole volume. Upstream passes a mask but
  tests it with ``seg >= 0``, which every boolean voxel satisfies, so all voxels count. ``std`` is
  numpy's population std (ddof 0).
* ``ct``: clip to the dataset's 0.5/99.5 percentiles, then ``(x - mean) / max(std, 1e-8)`` with
  the dataset's foreground mean and std, all stored in the model card.

Statistics are accumulated in float64 (upstream used the image's float32), which differs only in
rounding.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from veloxseg.runtime.card import Normalization

__all__ = ["STD_FLOOR", "normalize"]

STD_FLOOR = 1e-8  # upstream's max(std, 1e-8): a constant volume maps to all zeros
_FLOAT32_MAX = float(np.finfo(np.float32).max)


def _mean_std(volume: np.ndarray) -> tuple[float, float]:
    """Population mean and std of a float32 (X, Y, Z) volume in float64, two-pass, one X slab
    at a time so no full-size float64 temporary is ever allocated."""
    mean = float(volume.mean(dtype=np.float64))
    squares = 0.0
    for slab in volume:
        centred = slab.astype(np.float64).ravel()
        centred -= mean
        squares += float(np.dot(centred, centred))
    return mean, (squares / volume.size) ** 0.5


def normalize(data: np.ndarray, schemes: Sequence[Normalization]) -> np.ndarray:
    """Normalise ``data`` (C, X, Y, Z) channel by channel with ``schemes`` (one per modality,
    in the card's order). Works in place and returns ``data`` when it is a writeable float32
    array; otherwise normalises a float32 copy."""
    if data.ndim != 4 or data.shape[0] != len(schemes):
        raise ValueError(
            f"expected (C, X, Y, Z) data with C = {len(schemes)} modalities, got {data.shape}"
        )
    if data.dtype != np.float32 or not data.flags.writeable:
        data = data.astype(np.float32)
    for channel, scheme in zip(data, schemes, strict=True):
        if scheme.scheme == "ct":
            np.clip(channel, scheme.clip_low, scheme.clip_high, out=channel)
            mean, std = float(scheme.mean), float(scheme.std)  # type: ignore[arg-type]
            channel -= mean
            channel /= max(std, STD_FLOOR)
        else:
            _zscore(channel)
    return data


def _zscore(channel: np.ndarray) -> None:
    """``(x - mean) / std`` in place. Intensities of both signs near float32's limit would
    overflow ``x - mean``; then divide first: a z-score is at most sqrt(voxels) in size, so that
    order cannot overflow (it only rounds differently, hence not the default)."""
    mean, std = _mean_std(channel)
    std = max(std, STD_FLOOR)
    if max(float(channel.max()) - mean, mean - float(channel.min())) <= _FLOAT32_MAX:
        channel -= mean
        channel /= std
    else:
        channel /= std
        channel -= mean / std
