"""Inference backends behind one small protocol, chosen by name from a registry.

Each backend imports its runtime lazily, so an install without one of them still runs the other.
"""

from __future__ import annotations

from veloxseg.runtime.backends.base import Backend, BackendOptions

__all__ = ["BACKENDS", "Backend", "BackendOptions", "available_backends", "create_backend"]

BACKENDS = ("openvino", "onnxruntime")


def available_backends() -> list[str]:
    """Backends whose runtime is importable here, fastest first."""
    import importlib.util

    modules = {"openvino": "openvino", "onnxruntime": "onnxruntime"}
    return [b for b in BACKENDS if importlib.util.find_spec(modules[b]) is not None]


def create_backend(name: str, model, options: BackendOptions) -> Backend:  # type: ignore[no-untyped-def]
    """Instantiate backend ``name`` (``openvino`` or ``onnxruntime``) for a validated model."""
    if name == "openvino":
        from veloxseg.runtime.backends.openvino_backend import OpenVINOBackend

        return OpenVINOBackend(model, options)
    if name == "onnxruntime":
        from veloxseg.runtime.backends.onnxruntime_backend import OnnxRuntimeBackend

        return OnnxRuntimeBackend(model, options)
    raise ValueError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)} or auto")
