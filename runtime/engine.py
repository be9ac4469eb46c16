"""The runtime's public entry point: open a model file, run patches or whole volumes."""

from __future__ import annotations

import dataclasses
import os
import threading
from pathlib import Path
from typing import Literal

import numpy as np

from veloxseg.runtime.autoselect import choose_format
from veloxseg.runtime.backends import (
    BACKENDS,
    Backend,
    BackendOptions,
    check_precision,
    create_backend,
)
from veloxseg.runtime.card import ModelCard
from veloxseg.runtime.errors import InputError
from veloxseg.runtime.model_file import LOGITS, MARGINS, ModelFile, open_model_file
from veloxseg.runtime.sliding_window import Output, sliding_window_predict
from veloxseg.runtime.tiling import Blend

__all__ = ["Engine", "check_format"]

BackendName = Literal["auto", "openvino", "onnxruntime"]
PrecisionName = Literal["auto", "fp32", "bf16"]


def check_format(backend: str, precision: str) -> None:
    """Refuse an unknown backend or precision, or a pair no backend runs, in one line: before
    any work (a model compile, a cluster start)."""
    if backend not in ("auto", *BACKENDS):
        raise ValueError(f"unknown backend {backend!r}; choose auto, {', '.join(BACKENDS)}")
    if precision not in ("auto", "fp32", "bf16"):
        raise ValueError(f"unknown precision {precision!r}; choose auto, fp32 or bf16")
    if "auto" not in (backend, precision):
        check_precision(backend, precision)


class Engine:
    """A loaded VeloxSeg model on one backend and precision.

    Arrays are ``(C, X, Y, Z)`` volumes or ``(B, C, *patch)`` batches in the model's canonical
    (RAS) axis order, float32, already normalised as ``metadata.normalization`` says. Each graph
    output is compiled on first use: labels come from ``label_margins`` where the file has them
    (K-1 channels instead of K), logits and probabilities from ``logits``.
    """

    def __init__(self, model: ModelFile, backend: str, options: BackendOptions) -> None:
        self.model = model
        self.backend_name = backend
        self.options = options
        self._backends: dict[str, Backend] = {}
        self._lock = threading.Lock()

    @classmethod
    def open(
        cls,
        path: str | Path,
        backend: BackendName = "auto",
        precision: PrecisionName = "auto",
        threads: int | None = None,
        streams: int = 1,
    ) -> Engine:
        """Validate ``path`` and choose how to run it: ``backend`` with ``precision``; each
        output compiles on first use.

        ``auto`` picks the fastest format meeting the accuracy bounds on this CPU, measured once
        per machine and model and cached (see :mod:`veloxseg.runtime.autoselect`). ``threads``
        defaults to, and is capped at, this machine's cores: more only oversubscribe them (64
        threads ran 9x slower on 2 cores). ``streams`` > 1 (or 0 for the runtime's choice) trades
        single-patch latency for throughput over the many windows of a volume: OpenVINO streams,
        or as many ONNX Runtime sessions sharing the threads.
        """
        check_format(backend, precision)
        model = open_model_file(path)
        cores = os.cpu_count() or 1
        threads = min(threads or cores, cores)
        if backend == "auto" or precision == "auto":
            backend, precision = choose_format(model, backend, precision, threads)  # type: ignore[assignment]
        options = BackendOptions(threads=threads, precision=precision, streams=streams)  # type: ignore[arg-type]
        return cls(model, backend, options)

    @classmethod
    def open_for_volumes(
        cls,
        path: str | Path,
        backend: BackendName = "auto",
        precision: PrecisionName = "auto",
        threads: int | None = None,
    ) -> Engine:
        """:meth:`open` in throughput mode (a scan is many windows, so one window's latency does
        not matter), with the labels output compiled now: a model the runtime cannot load fails
        before any case starts."""
        engine = cls.open(path, backend=backend, precision=precision, threads=threads, streams=0)
        engine.compiled(engine.label_output)
        return engine

    @property
    def metadata(self) -> ModelCard:
        """The model card parsed from the file."""
        return self.model.card

    @property
    def precision(self) -> str:
        return self.options.precision

    @property
    def label_output(self) -> str:
        """The output labels are computed from: ``label_margins`` if present, else ``logits``."""
        return MARGINS if self.model.has_margins else LOGITS

    def compiled(self, output: str) -> Backend:
        """The backend computing graph output ``output``, compiled on first use."""
        if output not in (LOGITS, MARGINS):
            raise ValueError(f"output must be {LOGITS!r} or {MARGINS!r}, got {output!r}")
        if output == MARGINS and not self.model.has_margins:
            raise ValueError(f"{self.model.path} has no {MARGINS} output; re-export it")
        with self._lock:
            if output not in self._backends:
                options = dataclasses.replace(self.options, output=output)
                self._backends[output] = create_backend(self.backend_name, self.model, options)
            return self._backends[output]

    def predict_patches(self, x: np.ndarray, output: str = LOGITS) -> np.ndarray:
        """``(B, C, *patch)`` float32 to ``(B, n_classes, *patch)`` float32 logits, or with
        ``output="label_margins"`` to ``(B, n_classes - 1, *patch)`` margins over class 0."""
        card = self.metadata
        expected = (card.in_channels, *card.patch_size)
        if not isinstance(x, np.ndarray) or x.ndim != 5 or tuple(x.shape[1:]) != expected:
            got = getattr(x, "shape", type(x).__name__)
            raise InputError(f"expected a (B, {', '.join(map(str, expected))}) array, got {got}")
        if x.dtype != np.float32:
            raise InputError(f"expected float32 patches, got {x.dtype}; use x.astype(np.float32)")
        return self.compiled(output).infer(np.ascontiguousarray(x))

    def predict_volume(
        self,
        volume: np.ndarray,
        overlap: float = 0.25,
        blend: Blend = "constant",
        batch_size: int = 1,
        tta: bool = False,
        output: Output = "labels",
        progress: bool = False,
        reuse_constant: bool = True,
    ) -> np.ndarray:
        """Sliding-window inference over a ``(C, X, Y, Z)`` float32 volume, as MONAI does.

        Returns class indices ``(X, Y, Z)`` (streamed, never full float logits), or
        ``(n_classes, X, Y, Z)`` float32 probabilities or logits, or ``margins``: blended
        ``(n_classes - 1, X, Y, Z)`` logit margins over class 0 (whose argmax, with class 0 at 0,
        is the labels'), the cheapest input for resampling labels to another grid.

        Windows whose input is constant in every channel (clipped air, zero background) are
        computed once per distinct value unless ``reuse_constant`` is off; the output is the same.
        """
        card = self.metadata
        graph_output = {"labels": self.label_output, "margins": MARGINS}.get(output, LOGITS)
        backend = self.compiled(graph_output)
        return sliding_window_predict(
            volume,
            backend.infer,
            card.patch_size,
            card.n_classes,
            overlap=overlap,
            blend=blend,
            batch_size=batch_size,
            tta=tta,
            output=output,
            progress=progress,
            reuse_constant=reuse_constant,
            in_channels=card.in_channels,
            max_in_flight=backend.parallel_requests,
            margins=graph_output == MARGINS,
        )
