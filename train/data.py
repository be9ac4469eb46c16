"""Training data: phantom pools, nnU-Net style intensity normalisation, and patch sampling.

Why: the network trains on 96^3 patches of normalised (CT, PET) pairs. Normalisation must match
what the runtime applies from the model card (PET z-scored per volume; CT clipped to the pool's
0.5/99.5 foreground percentiles and z-scored with the pool's statistics), so the statistics
computed here are written next to the checkpoint. Patches are cut on the training device, from
cases that stay there, so that a GPU is never waiting for a CPU data loader.

Arrays are ``(X, Y, Z)`` per modality and ``(C, X, Y, Z)`` stacked, channel 0 CT, channel 1 PET
(the upstream training order, ``inputs = [ct, pet]``).
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from itertools import repeat
from typing import Any

import numpy as np
import torch

from veloxseg.runtime.card import Normalization
from veloxseg.runtime.normalization import normalize
from veloxseg.train.phantom import Phantom, make_phantom

__all__ = [
    "HELD_OUT_FIRST_SEED",
    "MODALITIES",
    "PatchPool",
    "build_pool",
    "ct_statistics",
    "generate_phantoms",
    "normalization_record",
    "normalize_case",
]

MODALITIES = ("CT", "PET")
HELD_OUT_FIRST_SEED = 10_000  # phantoms from this seed on are kept for evaluation


def ct_statistics(phantoms: Sequence[Phantom]) -> dict[str, float]:
    """CT clipping bounds and z-score statistics over the foreground (label > 0) of the pool.

    ``clip_low``/``clip_high`` are the 0.5/99.5 percentiles of foreground HU; ``mean``/``std``
    (population std) are taken after clipping to those bounds.
    """
    values = [p.ct[p.label > 0] for p in phantoms]
    if not values or sum(v.size for v in values) == 0:
        raise ValueError("the phantom pool has no foreground voxels to take CT statistics from")
    fg = np.concatenate(values).astype(np.float64)
    low, high = np.percentile(fg, [0.5, 99.5])
    clipped = np.clip(fg, low, high)
    return {
        "clip_low": float(low),
        "clip_high": float(high),
        "mean": float(clipped.mean()),
        "std": float(clipped.std()),
    }


def normalize_case(pet: np.ndarray, ct: np.ndarray, stats: dict[str, float]) -> np.ndarray:
    """``(2, X, Y, Z)`` float32 (CT, PET), normalised by the runtime's own code from the card
    fields of :func:`normalization_record`, so training and inference cannot drift apart."""
    if pet.shape != ct.shape:
        raise ValueError(f"PET shape {pet.shape} differs from CT shape {ct.shape}")
    schemes = [Normalization(**n) for n in normalization_record(stats)["normalization"]]
    return normalize(np.stack([ct, pet]).astype(np.float32, copy=False), schemes)


def normalization_record(stats: dict[str, float]) -> dict[str, Any]:
    """Modality order and per-modality schemes in the model card's ``Normalization`` fields."""
    return {
        "modalities": list(MODALITIES),
        "normalization": [{"scheme": "ct", **stats}, {"scheme": "zscore"}],
    }


def generate_phantoms(
    seeds: Sequence[int], shape: tuple[int, int, int] | None = None, workers: int | None = None
) -> list[Phantom]:
    """Phantoms for ``seeds``, in order, generated in parallel over ``workers`` processes
    (default: all CPUs). Spawned workers import only the torch-free phantom module."""
    seeds = [int(s) for s in seeds]
    workers = min(len(seeds), workers or os.cpu_count() or 1)
    if workers <= 1:
        return [make_phantom(s, shape) for s in seeds]
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=context) as pool:
        return list(pool.map(make_phantom, seeds, repeat(shape)))


def _pad_to(array: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """Zero-pad the last three axes symmetrically up to at least ``size``."""
    extra = [max(0, p - s) for s, p in zip(array.shape[-3:], size, strict=True)]
    if not any(extra):
        return array
    pads = [(0, 0)] * (array.ndim - 3) + [(e // 2, e - e // 2) for e in extra]
    return np.pad(array, pads)


class PatchPool:
    """Normalised cases held on ``device``, sampled into batches of random patches.

    Each patch is centred on a random foreground voxel with probability ``fg_fraction``
    (nnU-Net's probabilistic foreground oversampling), else placed uniformly; each is flipped
    along each spatial axis with probability 1/2. Cases smaller than the patch are zero-padded.
    """

    def __init__(
        self,
        images: Sequence[np.ndarray],
        labels: Sequence[np.ndarray],
        patch_size: Sequence[int] = (96, 96, 96),
        device: str | torch.device = "cpu",
        seed: int = 0,
        fg_fraction: float = 1 / 3,
    ) -> None:
        if len(images) != len(labels) or not images:
            raise ValueError(
                f"need equal, non-zero numbers of images and labels, got "
                f"{len(images)} and {len(labels)}"
            )
        self.patch_size = tuple(int(p) for p in patch_size)
        self.fg_fraction = float(fg_fraction)
        self.device = torch.device(device)
        self.images: list[torch.Tensor] = []
        self.labels: list[torch.Tensor] = []
        self._foreground: list[np.ndarray] = []
        for image, label in zip(images, labels, strict=True):
            if image.shape[1:] != label.shape:
                raise ValueError(f"image {image.shape} and label {label.shape} do not match")
            label = _pad_to(np.asarray(label, dtype=np.uint8), self.patch_size)
            self.images.append(torch.from_numpy(_pad_to(image, self.patch_size)).to(self.device))
            self.labels.append(torch.from_numpy(label).to(self.device))
            self._foreground.append(np.argwhere(label > 0).astype(np.int32))
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return len(self.images)

    def _crop_start(self, case: int) -> list[int]:
        shape = self.images[case].shape[1:]
        fg = self._foreground[case]
        if self.rng.random() < self.fg_fraction and len(fg):
            centre = fg[self.rng.integers(len(fg))]
            return [
                int(np.clip(c - p // 2, 0, s - p))
                for c, s, p in zip(centre, shape, self.patch_size, strict=True)
            ]
        return [
            int(self.rng.integers(s - p + 1)) for s, p in zip(shape, self.patch_size, strict=True)
        ]

    def sample(self, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(images (B, C, *patch) float32, labels (B, *patch) int64)`` on the pool's device."""
        images, labels = [], []
        for _ in range(batch_size):
            case = int(self.rng.integers(len(self)))
            start = self._crop_start(case)
            window = tuple(slice(a, a + p) for a, p in zip(start, self.patch_size, strict=True))
            axes = [axis for axis in range(3) if self.rng.random() < 0.5]
            image, label = self.images[case][(slice(None), *window)], self.labels[case][window]
            if axes:
                image, label = image.flip([a + 1 for a in axes]), label.flip(axes)
            images.append(image)
            labels.append(label)
        return torch.stack(images), torch.stack(labels).long()

    def state_dict(self) -> dict[str, Any]:
        """The sampler's random state, so a resumed run draws the same patches."""
        return {"rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rng.bit_generator.state = state["rng"]


def build_pool(
    seeds: Sequence[int],
    device: str | torch.device = "cpu",
    patch_size: Sequence[int] = (96, 96, 96),
    shape: tuple[int, int, int] | None = None,
    workers: int | None = None,
    seed: int = 0,
) -> tuple[PatchPool, dict[str, float]]:
    """A :class:`PatchPool` of phantoms ``seeds`` and the pool's CT statistics.

    Refuses held-out seeds (>= ``HELD_OUT_FIRST_SEED``) so evaluation cases never leak into
    training.
    """
    bad = [int(s) for s in seeds if not 0 <= int(s) < HELD_OUT_FIRST_SEED]
    if bad:
        raise ValueError(
            f"training seeds must lie in [0, {HELD_OUT_FIRST_SEED}), got {bad[:5]}; seeds from "
            f"{HELD_OUT_FIRST_SEED} on are held out for evaluation"
        )
    phantoms = generate_phantoms(seeds, shape, workers)
    stats = ct_statistics(phantoms)
    images = [normalize_case(p.pet, p.ct, stats) for p in phantoms]
    labels = [p.label for p in phantoms]
    return PatchPool(images, labels, patch_size, device, seed), stats
