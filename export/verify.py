"""Parity of an exported file with PyTorch, in ONNX Runtime and OpenVINO (f32)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from veloxseg.runtime import Engine
from veloxseg.runtime.model_file import MARGINS

__all__ = ["ExportMismatchError", "verify_export"]


class ExportMismatchError(ValueError):
    """An exported file disagrees with PyTorch beyond the tolerance."""


def verify_export(
    model: nn.Module, path: Path, *, tolerance: float = 1e-3, seed: int = 0, batch: int = 2
) -> dict[str, float]:
    """Max |Δlogit| per backend on a seeded normal input; raise above ``tolerance``.

    The label margins, where the file has them, are held to the same tolerance against PyTorch's
    logit differences (the larger of the two is reported). A batch of 2 checks the dynamic batch
    axis too.
    """
    config = model.config
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, sum(config["in_ch"]), *config["input_size"]), np.float32)
    with torch.no_grad():
        expected = model.eval()(torch.from_numpy(x)).numpy()
    diffs = {}
    for backend in ("onnxruntime", "openvino"):
        engine = Engine.open(path, backend=backend, precision="fp32")
        diffs[backend] = float(np.abs(engine.predict_patches(x) - expected).max())
        if engine.model.has_margins:
            margins = engine.predict_patches(x, MARGINS)
            diff = np.abs(margins - (expected[:, 1:] - expected[:, :1])).max()
            diffs[backend] = max(diffs[backend], float(diff))
    bad = {k: v for k, v in diffs.items() if not v <= tolerance}
    if bad:
        raise ExportMismatchError(
            f"exported model differs from PyTorch: max |Δlogit| {bad} > {tolerance}"
        )
    return diffs
