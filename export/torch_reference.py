"""Rebuild the PyTorch VeloxSeg of an exported file, for same-weights comparisons and timing.

The exporter keeps every inference weight under its state-dict name; each relative-position
table is recovered exactly from the tiled bias constant (every table entry occurs in the index).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import numpy_helper

from veloxseg.model import VeloxSeg
from veloxseg.runtime.benchmark import Subject
from veloxseg.runtime.model_file import open_model_file

__all__ = ["eager_subject", "torch_model_from_onnx"]

_BIAS_SUFFIX = ".export_bias"


def torch_model_from_onnx(path: str | Path) -> VeloxSeg:
    """The eval-mode PyTorch model whose weights are those of the ONNX file at ``path``."""
    model_file = open_model_file(path)
    proto = onnx.load(str(path))
    weights = {
        i.name: torch.from_numpy(numpy_helper.to_array(i).copy()) for i in proto.graph.initializer
    }
    model = VeloxSeg(**model_file.card.model_config).eval()
    state = model.state_dict()
    for name, tensor in weights.items():
        if name.endswith(_BIAS_SUFFIX):
            prefix = name[: -len(_BIAS_SUFFIX)] + ".position_embedding."
            index = state[prefix + "relative_position_index"]
            length = index.shape[0]
            table = state[prefix + "relative_position_bias_table"].clone()
            table[index.reshape(-1)] = tensor[:, :length, :length].reshape(tensor.shape[0], -1).T
            state[prefix + "relative_position_bias_table"] = table
        elif name in state:
            state[name] = tensor
    model.load_state_dict(state, strict=True)
    return model


def eager_subject(path: str, threads: int, x: np.ndarray) -> Subject:
    """Upstream-equivalent PyTorch eager on ``threads`` threads, for timing: its logits on ``x``
    and a one-patch call."""
    torch.set_num_threads(threads)
    model = torch_model_from_onnx(path)
    with torch.inference_mode():
        logits = model(torch.from_numpy(x)).numpy()
    single = torch.from_numpy(x[:1])

    def call() -> torch.Tensor:
        with torch.inference_mode():
            return model(single)

    return Subject(logits, call)
