"""Patch-throughput measurement of model formats, each in its own process for a clean peak RSS.

Torch-free: the PyTorch eager baseline is measured by ``veloxseg.export.torch_reference`` and
passed in as one more result by the caller.
"""

from __future__ import annotations

import multiprocessing
import resource
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "FormatResult",
    "compare_logits",
    "compare_margins",
    "measure_engine",
    "run_isolated",
    "time_calls",
]


@dataclass
class FormatResult:
    """One row of the benchmark table."""

    format: str
    status: str = "ok"
    size_mb: float | None = None
    max_abs_diff: float | None = None
    agreement: float | None = None
    ms_median: float | None = None
    ms_p90: float | None = None
    patches_per_s: float | None = None
    peak_rss_mb: float | None = None
    speedup_vs_eager: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def time_calls(fn: Callable[[], object], iterations: int, warmup: int = 2) -> list[float]:
    """Wall-clock seconds of ``iterations`` calls after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iterations):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def peak_rss_mb() -> float:
    """This process's peak resident set size in MB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def summarise(times: list[float], batch: int) -> dict[str, float]:
    """Median and p90 ms per patch, and patches/s, from per-call times of ``batch`` patches."""
    per_patch = np.asarray(times) * 1000 / batch
    return {
        "ms_median": float(np.median(per_patch)),
        "ms_p90": float(np.percentile(per_patch, 90)),
        "patches_per_s": float(1000 / np.median(per_patch)),
    }


def measure_engine(
    path: str,
    backend: str,
    precision: str,
    threads: int,
    x: np.ndarray,
    iterations: int,
    streams: int = 1,
    output: str = "logits",
) -> tuple[dict[str, float], np.ndarray]:
    """Time ``predict_patches`` of graph output ``output`` on ``x`` one patch per call; returns
    stats and that output.

    With ``streams`` != 1, as many calls run at once as the engine has parallel requests (as in
    a whole volume): patches/s is then throughput, and ms/patch its inverse; p90 is per call.
    """
    from concurrent.futures import ThreadPoolExecutor

    from veloxseg.runtime.engine import Engine

    engine = Engine.open(
        path, backend=backend, precision=precision, threads=threads, streams=streams
    )  # type: ignore[arg-type]
    # one patch per call, as sliding-window inference runs (OpenVINO's batch-2 kernels round
    # differently: 1.0e-3 vs 4e-4 max |Δlogit| on the bundled sample)
    result = np.concatenate([engine.predict_patches(x[i : i + 1], output) for i in range(len(x))])
    single = x[:1]
    lanes = engine.compiled(output).parallel_requests
    if lanes == 1:
        stats = summarise(time_calls(lambda: engine.predict_patches(single, output), iterations), 1)
    else:
        per_lane = max(1, iterations // lanes)

        def lane(count: int) -> list[float]:
            return time_calls(lambda: engine.predict_patches(single, output), count, warmup=0)

        with ThreadPoolExecutor(lanes) as pool:
            list(pool.map(lane, [1] * lanes))  # warm every request
            start = time.perf_counter()
            runs = list(pool.map(lane, [per_lane] * lanes))
            wall = time.perf_counter() - start
        rate = lanes * per_lane / wall
        stats = {
            "ms_median": 1000 / rate,
            "ms_p90": float(np.percentile(np.concatenate(runs) * 1000, 90)),
            "patches_per_s": rate,
        }
    stats["peak_rss_mb"] = peak_rss_mb()
    return stats, result


def run_isolated(fn: Callable[..., Any], *args: Any) -> Any:
    """Run ``fn(*args)`` in a fresh spawned process (its own threads and peak RSS)."""
    context = multiprocessing.get_context("spawn")
    with context.Pool(1) as pool:
        return pool.apply(fn, args)


def compare_logits(logits: np.ndarray, reference: np.ndarray) -> tuple[float, float]:
    """Max |Δlogit| and the fraction of voxels whose argmax class agrees."""
    diff = float(np.abs(logits - reference).max())
    agreement = float((logits.argmax(1) == reference.argmax(1)).mean())
    return diff, agreement


def compare_margins(margins: np.ndarray, reference: np.ndarray) -> tuple[float, float]:
    """Max |Δ| of label margins against the reference logits' margins over class 0, and the
    fraction of voxels whose label (0 unless a margin is positive) matches the logits' argmax."""
    expected = reference[:, 1:] - reference[:, :1]
    diff = float(np.abs(margins - expected).max())
    labels = np.where(margins.max(1) > 0, margins.argmax(1) + 1, 0)
    return diff, float((labels == reference.argmax(1)).mean())


def file_size_mb(path: Path) -> float:
    return path.stat().st_size / 1e6
