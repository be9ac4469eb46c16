"""Torch-free VeloxSeg inference: model files, backends, tiling, NIfTI I/O and preprocessing."""

import sys

from veloxseg.runtime.card import ModelCard, Normalization
from veloxseg.runtime.engine import Engine
from veloxseg.runtime.errors import InputError, ModelFileError, VeloxSegError

__all__ = ["Engine", "InputError", "ModelCard", "ModelFileError", "Normalization", "VeloxSegError"]

# OpenVINO's converter, imported with openvino, sends a usage event to Google Analytics unless
# its telemetry package cannot be imported (then it uses its own stub). Scans are segmented here,
# often in hospitals: the package makes no network calls, so that import is made to fail. (The
# backends import openvino only when used, after this line.)
sys.modules.setdefault("openvino_telemetry", None)
