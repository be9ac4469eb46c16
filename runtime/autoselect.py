"""``--backend auto`` / ``--precision auto``: the fastest format that meets the accuracy bounds
on this CPU, measured once per machine and model and cached.

Candidates are OpenVINO fp32, OpenVINO bf16 (only where the CPU has native bf16: AVX512-BF16 or
AMX) and ONNX Runtime fp32. Each is timed on the same calibration patch; a reduced-precision
format is eligible only if its argmax agrees with fp32 on >= 99.5% of voxels. The choice is
stored in ``$VELOXSEG_CACHE_DIR`` (default ``~/.cache/veloxseg``) under a key made of the CPU
description and the model's SHA-256.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from pathlib import Path

import numpy as np
from scipy import ndimage

from veloxseg.runtime.backends import (
    BACKEND_PRECISIONS,
    Backend,
    BackendOptions,
    available_backends,
    create_backend,
    require_backend,
)
from veloxseg.runtime.benchmark import time_calls
from veloxseg.runtime.cache_dir import cache_root
from veloxseg.runtime.model_file import ModelFile

__all__ = ["MIN_AGREEMENT", "cache_path", "choose_format", "cpu_info", "cpu_signature"]

MIN_AGREEMENT = 0.995
_TIMED_RUNS = 3


@functools.cache
def cpu_info() -> tuple[str, frozenset[str]]:
    """The CPU model name and instruction-set flags from ``/proc/cpuinfo`` (read once)."""
    name, flags = "unknown CPU", frozenset()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and name == "unknown CPU":
                name = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = frozenset(value.split())
    except OSError:
        pass
    return name, flags


def cpu_signature() -> str:
    """CPU model, core count and the instruction sets that decide the fastest format."""
    name, flags = cpu_info()
    wanted = sorted(flags & {"avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile"})
    return f"{name}|{os.cpu_count()}|{','.join(wanted)}"


def _has_native_bf16() -> bool:
    return bool(cpu_info()[1] & {"avx512_bf16", "amx_bf16"})


def cache_path() -> Path:
    return cache_root() / "autoselect.json"


def _cache_key(model: ModelFile, threads: int) -> str:
    raw = f"{cpu_signature()}|{model.sha256}|{threads}"
    return hashlib.sha256(raw.encode()).hexdigest()[:24]


def _read_cache() -> dict:
    """The cached choices; a missing, unreadable or malformed cache counts as empty (and is
    rewritten on the next choice)."""
    try:
        entries = json.loads(cache_path().read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(entries, dict):
        return {}
    return {k: v for k, v in entries.items() if isinstance(v, dict)}


def _write_cache(entries: dict) -> None:
    from veloxseg.runtime.output_files import atomic_write_bytes

    path = cache_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, (json.dumps(entries, indent=1) + "\n").encode())
    except OSError:
        pass  # a read-only home only costs a re-calibration next time


def _calibration_patch(model: ModelFile) -> np.ndarray:
    """A smooth, normalised-looking random patch: structure at several scales, like anatomy."""
    card = model.card
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, card.in_channels, *card.patch_size)).astype(np.float32)
    for c in range(card.in_channels):
        x[0, c] = ndimage.gaussian_filter(x[0, c], 2.0)
        x[0, c] /= x[0, c].std() + 1e-8
    return x


def _time(backend: Backend, x: np.ndarray) -> tuple[float, np.ndarray]:
    """Median seconds per call after a first, untimed one, and that call's logits."""
    logits = backend.infer(x)
    return float(np.median(time_calls(lambda: backend.infer(x), _TIMED_RUNS))), logits


def _candidates(backend: str, precision: str) -> list[tuple[str, str]]:
    pairs = [(b, p) for b in available_backends() for p in BACKEND_PRECISIONS[b]]
    if not _has_native_bf16():
        pairs = [(b, p) for b, p in pairs if p != "bf16"]
    if backend != "auto":
        pairs = [(b, p) for b, p in pairs if b == backend]
    if precision != "auto":
        pairs = [(b, p) for b, p in pairs if p == precision]
    return pairs


def choose_format(
    model: ModelFile,
    backend: str,
    precision: str,
    threads: int,
) -> tuple[str, str]:
    """``(backend, precision)`` to use when either is ``auto`` (cached per machine and model).

    Formats are compared at one stream (latency, all threads), on the logits output.
    """
    candidates = _candidates(backend, precision)
    if not candidates:
        if backend != "auto":
            require_backend(backend)
        elif not available_backends():
            raise ValueError("no runtime is installed: pip install openvino (or onnxruntime)")
        raise ValueError(
            f"precision {precision} needs a CPU with native bf16 (AVX512-BF16 or AMX), which "
            "this one lacks; use --precision fp32 or auto"
        )
    entries = _read_cache()
    key = _cache_key(model, threads)
    cached = entries.get(key, {}).get(f"{backend}/{precision}")
    if cached and tuple(cached) in candidates:
        return cached[0], cached[1]
    x = _calibration_patch(model)
    results, reference, best = [], None, None
    for name, prec in candidates:
        options = BackendOptions(threads=threads, precision=prec)  # type: ignore[arg-type]
        seconds, logits = _time(create_backend(name, model, options), x)
        if reference is None and prec == "fp32":
            reference = logits
        agreement = 1.0
        if reference is not None:
            agreement = float((logits.argmax(1) == reference.argmax(1)).mean())
        eligible = prec == "fp32" or agreement >= MIN_AGREEMENT
        results.append({"backend": name, "precision": prec, "ms": seconds * 1000,
                        "agreement": agreement, "eligible": eligible})  # fmt: skip
        if eligible and (best is None or seconds < best[0]):
            best = (seconds, (name, prec))
    chosen = best[1]  # type: ignore[index]  # the first candidate is always eligible
    entries.setdefault(key, {})[f"{backend}/{precision}"] = list(chosen)
    entries[key]["calibration"] = results
    _write_cache(entries)
    return chosen
