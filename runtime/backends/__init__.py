"""Inference backends behind one small protocol, chosen by name from a registry.

Each backend imports its runtime lazily, so an install without one of them still runs the other.
"""

from __future__ import annotations

from veloxseg.runtime.backends.base import Backend, BackendOptions

__all__ = [
    "BACKENDS",
    "BACKEND_PRECISIONS",
    "Backend",
    "BackendOptions",
    "available_backends",
    "check_precision",
    "create_backend",
    "require_backend",
]

BACKENDS = ("openvino", "onnxruntime")
BACKEND_PRECISIONS = {"openvino": ("fp32", "bf16"), "onnxruntime": ("fp32",)}  # fp32 first


def check_precision(backend: str, precision: str) -> None:
    """Raise ``ValueError`` if ``backend`` cannot run ``precision``, saying what can."""
    if precision not in BACKEND_PRECISIONS[backend]:
        raise ValueError(
            f"the {backend} backend runs {' or '.join(BACKEND_PRECISIONS[backend])} only, got "
            f"precision {precision!r}; use --backend openvino for bf16"
        )


def available_backends() -> list[str]:
    """Backends whose runtime is importable here, fastest first."""
    import importlib.util

    modules = {"openvino": "openvino", "onnxruntime": "onnxruntime"}
    return [b for b in BACKENDS if importlib.util.find_spec(modules[b]) is not None]


def require_backend(name: str) -> None:
    """Raise ``ValueError`` saying what to install if backend ``name``'s runtime is missing."""
    found = available_backends()
    if name not in found:
        instead = f", or use --backend {found[0]}" if found else ""
        raise ValueError(f"the {name} runtime is not installed: pip install {name}{instead}")


def create_backend(name: str, model, options: BackendOptions) -> Backend:  # type: ignore[no-untyped-def]
    """Instantiate backend ``name`` (``openvino`` or ``onnxruntime``) for a validated model."""
    if name in BACKEND_PRECISIONS:
        check_precision(name, options.precision)
        require_backend(name)
    if name == "openvino":
        from veloxseg.runtime.backends.openvino_backend import OpenVINOBackend

        return OpenVINOBackend(model, options)
    if name == "onnxruntime":
        from veloxseg.runtime.backends.onnxruntime_backend import OnnxRuntimeBackend

        return OnnxRuntimeBackend(model, options)
    raise ValueError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)} or auto")
