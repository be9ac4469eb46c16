"""Training: PET/CT phantoms, the upstream VeloxSeg loss and recipe, upstream-format checkpoints.

Submodules: ``phantom`` (deterministic PET/CT phantoms), ``metrics`` (Dice, lesion detection),
``data`` (normalisation, on-device patch pool), ``losses`` (:class:`VeloxSegLoss`) and ``trainer``
(:class:`TrainConfig`, :func:`train`, :func:`train_main`).

Why lazy: ``phantom`` and ``metrics`` need only numpy and scipy, so importing this package must not
pull in torch. The names below are resolved from their submodule on first access.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = [
    "Phantom",
    "TrainConfig",
    "VeloxSegLoss",
    "build_pool",
    "dice",
    "make_phantom",
    "train",
    "train_main",
]

_HOME = {
    "Phantom": "phantom",
    "make_phantom": "phantom",
    "dice": "metrics",
    "build_pool": "data",
    "VeloxSegLoss": "losses",
    "TrainConfig": "trainer",
    "train": "trainer",
    "train_main": "trainer",
}


def __getattr__(name: str) -> Any:
    if name not in _HOME:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_HOME[name]}"), name)


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
