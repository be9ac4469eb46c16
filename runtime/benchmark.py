"""Patch-throughput measurement of model formats, each in its own process for a clean peak RSS.

Torch-free: the PyTorch eager baseline is measured by ``veloxseg.export.torch_reference`` and
passed in as one more result by the caller.
"""

from __future__ import annotations

import multiprocessing
import resource
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

import numpy as np

from veloxseg.runtime.errors import one_line
from veloxseg.runtime.tiling import labels_from_margins

__all__ = [
    "FormatResult",
    "Subject",
    "Timing",
    "case_patches",
    "compare_logits",
    "compare_margins",
    "engine_subject",
    "run_isolated",
    "sample_patches",
    "time_calls",
    "time_interleaved",
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


def case_patches(model: str | Path, inputs: Sequence[Path], count: int) -> np.ndarray:
    """``count`` windows spread over one case (a file per modality, or one 4D file),
    preprocessed exactly as ``veloxseg segment`` does (real anatomy, not noise), so that argmax
    agreement means something for a trained model."""
    from veloxseg.runtime.model_file import open_model_file
    from veloxseg.runtime.nifti_io import load_case
    from veloxseg.runtime.orientation import to_canonical
    from veloxseg.runtime.segment import to_model_grid
    from veloxseg.runtime.sliding_window import extract_windows
    from veloxseg.runtime.tiling import plan_tiles

    card = open_model_file(model).card
    data, geometry = load_case(inputs, card.in_channels, modality_names=card.modalities)
    canonical, affine, _ = to_canonical(data, geometry.affine)
    volume, _ = to_model_grid(np.ascontiguousarray(canonical), affine, card)
    plan = plan_tiles(volume.shape[1:], card.patch_size, 0.25)
    picks = np.linspace(0, len(plan.starts) - 1, count).round().astype(int)
    return extract_windows(volume, plan, [plan.starts[i] for i in picks])


def sample_patches(model: str | Path, count: int) -> np.ndarray:
    """``count`` windows of the bundled sample (CT, PET) for a model taking those modalities."""
    from veloxseg.assets import sample_case

    return case_patches(model, sample_case()[0], count)


def time_calls(fn: Callable[[], object], iterations: int) -> list[float]:
    """Wall-clock seconds of each of ``iterations`` calls."""
    times = []
    for _ in range(iterations):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def peak_rss_mb() -> float:
    """This process's peak resident set size in MB.

    Linux's ``VmHWM`` where there is one: ``ru_maxrss`` survives ``exec``, so a spawned worker
    would report its parent's size at the fork whenever that was larger than its own peak.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


@dataclass
class Subject:
    """What a timing worker serves: its outputs on the bench patches, and a one-patch call of
    which ``lanes`` may run at once (OpenVINO throughput streams; 1 otherwise)."""

    outputs: np.ndarray
    call: Callable[[], object]
    lanes: int = 1


def engine_subject(
    path: str,
    backend: str,
    precision: str,
    threads: int,
    x: np.ndarray,
    streams: int = 1,
    output: str = "logits",
) -> Subject:
    """Graph output ``output`` of an engine; outputs computed one patch per call, as sliding
    windows run."""
    from veloxseg.runtime.engine import Engine

    engine = Engine.open(
        path, backend=backend, precision=precision, threads=threads, streams=streams
    )  # type: ignore[arg-type]
    outputs = np.concatenate([engine.predict_patches(x[i : i + 1], output) for i in range(len(x))])
    single = x[:1]
    lanes = engine.compiled(output).parallel_requests
    return Subject(outputs, lambda: engine.predict_patches(single, output), lanes)


@dataclass
class Timing:
    """One subject's timed rounds: per round the wall seconds and patches, and every call's
    seconds; ``peak_rss_mb`` of its process."""

    walls: list[float]
    patches: list[int]
    calls: list[float]
    peak_rss_mb: float

    @property
    def round_ms(self) -> list[float]:
        return [1000 * w / n for w, n in zip(self.walls, self.patches, strict=True)]

    def stats(self) -> dict[str, float]:
        """ms/patch (median over rounds of each round's wall time per patch, so throughput
        lanes count), p90 of single calls, and patches/s."""
        ms = float(np.median(self.round_ms))
        return {
            "ms_median": ms,
            "ms_p90": 1000 * float(np.percentile(self.calls, 90)),
            "patches_per_s": 1000 / ms,
            "peak_rss_mb": self.peak_rss_mb,
        }


def _time_round(
    subject: Subject, pool: ThreadPoolExecutor | None, iterations: int
) -> tuple[float, int, list[float]]:
    per_lane = max(1, iterations // subject.lanes)
    start = time.perf_counter()
    if pool is None:
        calls = time_calls(subject.call, per_lane)
    else:
        runs = pool.map(lambda n: time_calls(subject.call, n), [per_lane] * subject.lanes)
        calls = [t for run in runs for t in run]
    return time.perf_counter() - start, len(calls), calls


def _serve(conn: Connection, make: Callable[..., Subject], args: tuple) -> None:
    """Worker process: build the subject, send its outputs, then time a round per request."""
    try:
        subject = make(*args)
        pool = ThreadPoolExecutor(subject.lanes) if subject.lanes > 1 else None
        _time_round(subject, pool, 2 * subject.lanes)  # warm every request
        conn.send(("ready", subject.outputs))
        while (iterations := conn.recv()) is not None:
            conn.send(_time_round(subject, pool, iterations))
        conn.send(peak_rss_mb())
    except Exception as e:  # reported as this subject's status, never fatal to the others
        conn.send(("failed", one_line(e)[:80]))


def time_interleaved(
    subjects: dict[str, tuple[Callable[..., Subject], tuple]],
    rounds: int,
    iterations: int,
    on_step: Callable[[], None] | None = None,
) -> dict[str, tuple[np.ndarray, Timing] | str]:
    """Time every subject in its own process, round-robin: round r of each runs before round
    r+1 of any, so a shared machine's drifting load hits all of them alike and ratios within a
    round compare like with like. Returns per subject ``(outputs, timing)``, or the reason it
    failed. ``on_step`` is called once per subject loaded and once per subject and round (for a
    progress bar over ``len(subjects) * (rounds + 1)`` steps; a failed subject skips its rest)."""
    step = on_step or (lambda: None)
    context = multiprocessing.get_context("spawn")
    workers: dict[str, tuple[BaseProcess, Connection]] = {}
    for name, (make, args) in subjects.items():  # all load at once; timing waits for all
        parent, child = context.Pipe()
        process = context.Process(target=_serve, args=(child, make, args), daemon=True)
        process.start()
        workers[name] = (process, parent)
    results: dict[str, tuple[np.ndarray, Timing] | str] = {}
    ready: dict[str, np.ndarray] = {}
    for name, (_, conn) in workers.items():
        message = conn.recv()
        if message[0] == "ready":
            ready[name] = message[1]
        else:
            results[name] = f"failed: {message[1]}"
        step()
    rounds_done: dict[str, list[tuple[float, int, list[float]]]] = {n: [] for n in ready}
    for _ in range(rounds):
        for name in list(ready):
            conn = workers[name][1]
            conn.send(iterations)
            reply = conn.recv()
            if reply[0] == "failed":
                results[name] = f"failed: {reply[1]}"
                del ready[name]
            else:
                rounds_done[name].append(reply)
            step()
            time.sleep(0.05)  # let the last subject's spinning threads go idle
    for name, outputs in ready.items():
        conn = workers[name][1]
        conn.send(None)
        walls, patches, calls = zip(*rounds_done[name], strict=True)
        timing = Timing(list(walls), list(patches), [t for c in calls for t in c], conn.recv())
        results[name] = (outputs, timing)
    for process, conn in workers.values():
        conn.close()
        process.join(timeout=30)
    return results


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
    labels = labels_from_margins(margins, axis=1)
    return diff, float((labels == reference.argmax(1)).mean())


def file_size_mb(path: Path) -> float:
    return path.stat().st_size / 1e6
