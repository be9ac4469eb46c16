"""Window placement, blending weights and stitching for sliding-window inference (numpy only).

The arithmetic mirrors MONAI's ``sliding_window_inference`` (constant padding with 0, scan
interval ``int(patch * (1 - overlap))``, gaussian weights with ``sigma = 0.125 * patch`` and a
``1e-3`` floor, output ``sum(w * logits) / sum(w)``) so results agree with MONAI to float32
rounding.

Axis convention: spatial shapes and window starts are ``(X, Y, Z)``; logits are ``(K, X, Y, Z)``.
Window starts are in *padded* coordinates: volumes smaller than the patch along an axis are padded
symmetrically (the odd voxel goes after) up to the patch size, and outputs are cropped back.
"""

from __future__ import annotations

import itertools
import operator
from dataclasses import dataclass
from typing import Literal

import numpy as np

__all__ = [
    "SIGMA_SCALE",
    "Blend",
    "DenseAccumulator",
    "StreamingLabelAccumulator",
    "TilePlan",
    "importance_map",
    "labels_from_margins",
    "plan_tiles",
]

Blend = Literal["constant", "gaussian"]
Index3 = tuple[int, int, int]

SIGMA_SCALE = 0.125
"""Gaussian sigma as a fraction of the patch size along each axis (MONAI's default)."""

_MIN_WEIGHT = (
    1e-3  # MONAI floors gaussian weights so that sum(w) never underflows at window corners
)


@dataclass(frozen=True)
class TilePlan:
    """Where the windows go over a ``shape`` volume padded to ``padded_shape``.

    ``pad`` holds ``(before, after)`` per axis; ``starts`` are window corners in padded
    coordinates, in MONAI's order (axis 0 slowest, axis 2 fastest, so axis-0 starts never drop).
    """

    shape: Index3
    patch: Index3
    padded_shape: Index3
    pad: tuple[tuple[int, int], tuple[int, int], tuple[int, int]]
    starts: tuple[Index3, ...]

    @property
    def crop(self) -> tuple[slice, slice, slice]:
        """Slices of a padded-shape array that hold the original volume."""
        return tuple(slice(b, b + n) for (b, _), n in zip(self.pad, self.shape, strict=True))  # type: ignore[return-value]


def _triple(name: str, value: tuple[int, int, int]) -> Index3:
    """Validate a positive 3-tuple of ints; the message names the bad value."""
    try:
        items = tuple(operator.index(v) for v in value)
    except TypeError:
        raise ValueError(f"{name} must be three positive integers, got {value!r}") from None
    if len(items) != 3 or min(items) < 1:
        raise ValueError(f"{name} must be three positive integers, got {value!r}")
    return items  # type: ignore[return-value]


def _axis_starts(size: int, patch: int, overlap: float) -> list[int]:
    """Window starts along one padded axis: a regular step, the last window flush with the end."""
    step = max(int(patch * (1 - overlap)), 1)  # same float expression and truncation as MONAI
    count = -(-(size - patch) // step) + 1
    return [min(i * step, size - patch) for i in range(count)]


def plan_tiles(
    shape: tuple[int, int, int], patch: tuple[int, int, int], overlap: float
) -> TilePlan:
    """Plan MONAI-identical windows of ``patch`` over a spatial ``shape`` (X, Y, Z).

    ``overlap`` is the fraction of the patch shared by neighbouring windows, in ``[0, 1)``.
    """
    shape, patch = _triple("shape", shape), _triple("patch", patch)
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"overlap must be in [0, 1), got {overlap!r}")
    diffs = [max(p - n, 0) for n, p in zip(shape, patch, strict=True)]
    pad = tuple((d // 2, d - d // 2) for d in diffs)
    padded = tuple(n + d for n, d in zip(shape, diffs, strict=True))
    per_axis = [_axis_starts(n, p, overlap) for n, p in zip(padded, patch, strict=True)]
    starts = tuple(itertools.product(*per_axis))  # last axis fastest, like MONAI's meshgrid "ij"
    return TilePlan(shape, patch, padded, pad, starts)  # type: ignore[arg-type]


def importance_map(patch: tuple[int, int, int], blend: Blend) -> np.ndarray:
    """Per-voxel blending weight of one window, float32 of shape ``patch``.

    ``constant`` is all ones; ``gaussian`` is an unnormalised separable gaussian (peak about 1,
    sigma ``0.125 * patch``), floored at ``max(min, 1e-3)`` exactly as MONAI does.
    """
    patch = _triple("patch", patch)
    if blend == "constant":
        return np.ones(patch, dtype=np.float32)
    if blend != "gaussian":
        raise ValueError(f"blend must be 'constant' or 'gaussian', got {blend!r}")
    weights = np.ones((), dtype=np.float32)
    for n in patch:
        x = np.arange(n, dtype=np.float32) - np.float32((n - 1) / 2)
        gauss = np.exp(x * x / np.float32(-2 * (n * SIGMA_SCALE) ** 2))
        weights = weights[..., None] * gauss
    floor = max(float(weights.min()), _MIN_WEIGHT)
    return np.maximum(weights, np.float32(floor))


def labels_from_margins(margins: np.ndarray, axis: int = 0) -> np.ndarray:
    """Class indices from logit margins over class 0 along ``axis`` (class 0 scores 0): the
    argmax of the logits, ties going to the lower class as ``np.argmax`` does."""
    best = margins.argmax(axis=axis)
    top = np.take_along_axis(margins, np.expand_dims(best, axis), axis).squeeze(axis)
    return np.where(top > 0, best + 1, 0)


def _window(start: Index3, patch: Index3) -> tuple[slice, ...]:
    """Spatial slices of the window with corner ``start``."""
    return tuple(slice(s, s + p) for s, p in zip(start, patch, strict=True))


class _Accumulator:
    """Shared checks: windows are ``(K, *patch)`` logits placed at a plan's padded ``start``."""

    def __init__(self, plan: TilePlan, n_classes: int, weight: np.ndarray) -> None:
        if n_classes < 1:
            raise ValueError(f"n_classes must be >= 1, got {n_classes}")
        if weight.shape != plan.patch:
            raise ValueError(f"weight has shape {weight.shape}, expected the patch {plan.patch}")
        self.plan = plan
        self.n_classes = n_classes
        self._weight = weight.astype(np.float32, copy=False)
        self._unit_weight = bool(np.all(self._weight == 1.0))  # constant blend: x * 1 == x

    def _weighted(self, logits: np.ndarray) -> np.ndarray:
        """``logits * w`` in float32, as MONAI multiplies each window before summing."""
        logits = np.asarray(logits, dtype=np.float32)
        expected = (self.n_classes, *self.plan.patch)
        if logits.shape != expected:
            raise ValueError(f"window logits have shape {logits.shape}, expected {expected}")
        return logits if self._unit_weight else logits * self._weight


class DenseAccumulator(_Accumulator):
    """Blends windows into full-volume float32 sums; for logits and probabilities output.

    Holds ``(K, *padded_shape)`` sums and a ``(1, *padded_shape)`` weight total.
    """

    def __init__(self, plan: TilePlan, n_classes: int, weight: np.ndarray) -> None:
        super().__init__(plan, n_classes, weight)
        self._sum = np.zeros((n_classes, *plan.padded_shape), dtype=np.float32)
        self._count = np.zeros((1, *plan.padded_shape), dtype=np.float32)

    def add(self, start: Index3, logits: np.ndarray) -> None:
        """Add one window's ``(K, *patch)`` logits at padded corner ``start``."""
        region = (slice(None), *_window(start, self.plan.patch))
        self._sum[region] += self._weighted(logits)
        self._count[region] += self._weight

    def finalize(self) -> np.ndarray:
        """Blended ``(K, X, Y, Z)`` float32 logits, cropped to the original shape (call once)."""
        self._sum /= self._count
        out = self._sum[(slice(None), *self.plan.crop)]
        return np.ascontiguousarray(out) if self.plan.shape != self.plan.padded_shape else out


_EMIT_ROWS = 8


class StreamingLabelAccumulator(_Accumulator):
    """Blends windows and argmaxes them into labels without full-volume float buffers.

    Windows must arrive in non-decreasing order of their axis-0 start (the plan's order). Only
    ``patch[0]`` padded axis-0 rows of ``(K + 1)`` float32 sums are kept: once a window starts at
    row ``r`` no later window touches rows ``< r``, so those are divided and argmaxed. Each voxel
    sees the same float32 operations in the same order as :class:`DenseAccumulator`, so the labels
    equal ``argmax(dense, axis=0)`` exactly. Labels are uint8, or uint16 beyond 256 classes.

    With ``margins``, windows are ``(K - 1, *patch)`` logit margins over class 0 and the label is
    0 unless some margin is positive. Only their weighted sums are kept (``K - 1`` rows of
    buffers, a third of the logits' for two classes): dividing by the positive weight total
    changes no sign and no argmax, so it is skipped.
    """

    def __init__(
        self, plan: TilePlan, n_classes: int, weight: np.ndarray, *, margins: bool = False
    ) -> None:
        if margins and n_classes < 2:
            raise ValueError(f"label margins need at least 2 classes, got {n_classes}")
        super().__init__(plan, n_classes - 1 if margins else n_classes, weight)
        self._margins = margins
        rows = (plan.patch[0], *plan.padded_shape[1:])
        self._sum = np.zeros((self.n_classes, *rows), dtype=np.float32)
        self._count = np.zeros((0 if margins else 1, *rows), dtype=np.float32)
        self._base = 0  # padded axis-0 index of buffer row 0; rows below it are final
        self._labels = np.zeros(plan.shape, dtype=np.uint8 if n_classes <= 256 else np.uint16)

    @property
    def buffer_bytes(self) -> int:
        """Bytes of the float buffers, which stay one window deep whatever the volume's size."""
        return self._sum.nbytes + self._count.nbytes

    def add(self, start: Index3, logits: np.ndarray) -> None:
        """Add one window's ``(K, *patch)`` logits at padded corner ``start``."""
        if start[0] < self._base:
            raise ValueError(
                f"window starts at axis-0 row {start[0]} but rows < {self._base} are already "
                "final; add windows in non-decreasing order of their axis-0 start"
            )
        self._flush(start[0])
        local = (start[0] - self._base, *start[1:])  # axis 0 relative to the buffer
        region = (slice(None), *_window(local, self.plan.patch))
        self._sum[region] += self._weighted(logits)
        if not self._margins:
            self._count[region] += self._weight

    def finalize(self) -> np.ndarray:
        """Labels ``(X, Y, Z)`` of the original shape, uint8 or uint16 (call once)."""
        self._flush(self.plan.padded_shape[0])
        return self._labels

    def _flush(self, upto: int) -> None:
        """Finalise padded rows ``[base, upto)`` and slide the buffer forward."""
        rows = self._sum.shape[1]
        while self._base < upto:
            n = min(upto - self._base, rows)
            self._emit(n)
            for buf in (self._sum, self._count):
                # Row by row: an overlapping slice assignment would make numpy copy the whole
                # buffer into a temporary, doubling the peak memory of this accumulator.
                for row in range(rows - n):
                    buf[:, row] = buf[:, row + n]
                buf[:, rows - n :] = 0
            self._base += n

    def _emit(self, n: int) -> None:
        """Divide and argmax the buffer's first ``n`` rows into the cropped label volume."""
        before, size = self.plan.pad[0][0], self.plan.shape[0]
        lo, hi = max(before - self._base, 0), min(before + size - self._base, n)
        if lo >= hi:
            return  # these rows are all padding
        for start in range(lo, hi, _EMIT_ROWS):  # a few rows at a time bounds the argmax temporary
            stop = min(start + _EMIT_ROWS, hi)
            region = (slice(None), slice(start, stop), *self.plan.crop[1:])
            block = self._sum[region]
            first = self._base + start - before
            out = self._labels[first : first + stop - start]
            if not self._margins:
                np.divide(block, self._count[region], out=block)
                out[...] = block.argmax(axis=0)
            elif len(block) == 1:  # two classes: no argmax temporaries
                np.greater(block[0], 0, out=out, casting="unsafe")
            else:
                out[...] = labels_from_margins(block)
