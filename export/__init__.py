"""PyTorch to ONNX export with the ``ai.veloxseg`` PWA custom op, and its verification."""

from veloxseg.export.onnx_export import (
    DEFAULT_OPSET,
    SUPPORTED_OPSETS,
    ExportError,
    ExportResult,
    build_card,
    export_onnx,
    load_card_file,
)
from veloxseg.export.verify import ExportMismatchError, verify_export

__all__ = [
    "DEFAULT_OPSET",
    "SUPPORTED_OPSETS",
    "ExportError",
    "ExportMismatchError",
    "ExportResult",
    "build_card",
    "export_onnx",
    "load_card_file",
    "verify_export",
]
