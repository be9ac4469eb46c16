"""Deterministic, well-scaled random weights for tests and parity checks without a checkpoint.

Drawn from NumPy's uniform generator (stable across versions) so the same seed gives the same
weights whatever the torch version. Every
parameter (bias tables included) is perturbed so that every branch changes the output.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

__all__ = ["seeded_state_dict"]


def seeded_state_dict(model: nn.Module, seed: int) -> dict[str, torch.Tensor]:
    """A state dict for ``model`` with the same keys, drawn from ``seed``; buffers are kept."""
    rng = np.random.default_rng(seed)
    params = dict(model.named_parameters())
    out = {}
    for name, tensor in model.state_dict().items():
        if name not in params:
            out[name] = tensor.clone()
            continue
        shape = tuple(tensor.shape)
        unit = (rng.random(shape) * 2.0 - 1.0) * np.sqrt(3.0)  # zero mean, unit variance
        if name.endswith("relative_position_bias_table"):
            values = unit * 0.5
        elif len(shape) == 1 and ("norm" in name):
            values = (1.0 if name.endswith("weight") else 0.0) + 0.1 * unit
        elif len(shape) == 1:
            values = 0.05 * unit
        else:
            values = unit * np.sqrt(1.0 / int(np.prod(shape[1:])))
        out[name] = torch.from_numpy(values.astype(np.float32))
    return out
