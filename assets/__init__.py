"""The bundled model (trained on phantoms in the AutoPET-II setting) and one sample case."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

__all__ = ["BUNDLED_MODEL", "bundled_model", "sample_case"]

BUNDLED_MODEL = "veloxseg_autopetii_phantom.onnx"


def _asset(*parts: str) -> Path:
    return Path(str(resources.files("veloxseg.assets").joinpath(*parts)))


def bundled_model() -> Path:
    """Path of the bundled ONNX model."""
    return _asset(BUNDLED_MODEL)


def sample_case() -> tuple[list[Path], Path]:
    """``(inputs, label)``: the sample's modality files in model order (CT, PET) and its label."""
    return (
        [_asset("sample", "sample_0000.nii.gz"), _asset("sample", "sample_0001.nii.gz")],
        _asset("sample", "sample_label.nii.gz"),
    )
