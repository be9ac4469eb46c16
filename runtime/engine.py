"""The runtime's public entry point: open a model file, run patches or whole volumes."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import numpy as np

from veloxseg.runtime.autoselect import choose_backend
from veloxseg.runtime.backends import BACKENDS, Backend, BackendOptions, create_backend
from veloxseg.runtime.card import ModelCard
from veloxseg.runtime.errors import InputError
from veloxseg.runtime.model_file import ModelFile, open_model_file
from veloxseg.runtime.sliding_window import Output, sliding_window_predict
from veloxseg.runtime.tiling import Blend

__all__ = ["Engine"]

BackendName = Literal["auto", "openvino", "onnxruntime"]
PrecisionName = Literal["auto", "fp32", "bf16"]


class Engine:
    """A loaded VeloxSeg model on one backend.

    Arrays are ``(C, X, Y, Z)`` volumes or ``(B, C, *patch)`` batches in the model's canonical
    (RAS) axis order, float32, already normalised as ``metadata.normalization`` says.
    """

    def __init__(self, model: ModelFile, backend: Backend) -> None:
        self.model = model
        self.backend = backend

    @classmethod
    def open(
        cls,
        path: str | Path,
        backend: BackendName = "auto",
        precision: PrecisionName = "auto",
        threads: int | None = None,
        streams: int = 1,
    ) -> Engine:
        """Validate ``path`` and compile it on ``backend`` with ``precision``.

        ``auto`` picks the fastest format meeting the accuracy bounds on this CPU, measured once
        per machine and model and cached (see :mod:`veloxseg.runtime.autoselect`). ``streams``
        > 1 (or 0 for the runtime's choice) trades single-patch latency for throughput over the
        many windows of a volume (OpenVINO; ONNX Runtime ignores it).
        """
        if backend not in ("auto", *BACKENDS):
            raise ValueError(f"unknown backend {backend!r}; choose auto, {', '.join(BACKENDS)}")
        if precision not in ("auto", "fp32", "bf16"):
            raise ValueError(f"unknown precision {precision!r}; choose auto, fp32 or bf16")
        model = open_model_file(path)
        threads = threads or os.cpu_count() or 1
        if backend == "auto" or precision == "auto":
            return cls(model, choose_backend(model, backend, precision, threads, streams))
        options = BackendOptions(threads=threads, precision=precision, streams=streams)
        return cls(model, create_backend(backend, model, options))

    @property
    def metadata(self) -> ModelCard:
        """The model card parsed from the file."""
        return self.model.card

    def predict_patches(self, x: np.ndarray) -> np.ndarray:
        """``(B, C, *patch)`` float32 to ``(B, n_classes, *patch)`` float32 logits."""
        card = self.metadata
        expected = (card.in_channels, *card.patch_size)
        if not isinstance(x, np.ndarray) or x.ndim != 5 or tuple(x.shape[1:]) != expected:
            got = getattr(x, "shape", type(x).__name__)
            raise InputError(f"expected a (B, {', '.join(map(str, expected))}) array, got {got}")
        if x.dtype != np.float32:
            raise InputError(f"expected float32 patches, got {x.dtype}; use x.astype(np.float32)")
        return self.backend.infer(np.ascontiguousarray(x))

    def predict_volume(
        self,
        volume: np.ndarray,
        overlap: float = 0.25,
        blend: Blend = "constant",
        batch_size: int = 1,
        tta: bool = False,
        output: Output = "labels",
        progress: bool = False,
    ) -> np.ndarray:
        """Sliding-window inference over a ``(C, X, Y, Z)`` float32 volume, as MONAI does.

        Returns class indices ``(X, Y, Z)`` (streamed, never full float logits), or
        ``(n_classes, X, Y, Z)`` float32 probabilities or logits.
        """
        card = self.metadata
        return sliding_window_predict(
            volume,
            self.backend.infer,
            card.patch_size,
            card.n_classes,
            overlap=overlap,
            blend=blend,
            batch_size=batch_size,
            tta=tta,
            output=output,
            progress=progress,
            in_channels=card.in_channels,
            max_in_flight=self.backend.parallel_requests,
        )
