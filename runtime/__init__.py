"""Torch-free VeloxSeg inference: model files, backends, tiling, NIfTI I/O and preprocessing."""

from veloxseg.runtime.card import ModelCard, Normalization
from veloxseg.runtime.engine import Engine
from veloxseg.runtime.errors import InputError, ModelFileError, VeloxSegError

__all__ = ["Engine", "InputError", "ModelCard", "ModelFileError", "Normalization", "VeloxSegError"]
