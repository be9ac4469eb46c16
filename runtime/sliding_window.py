"""Pipelined, memory-bounded sliding-window inference over a ``(C, X, Y, Z)`` volume (numpy only).

Results match MONAI's ``sliding_window_inference`` (see :mod:`veloxseg.runtime.tiling`). Windows are
cut into batches on the calling thread while worker threads run ``predict_batch`` (ONNX Runtime and
OpenVINO release the GIL), and finished batches are stitched in window order, so extraction,
inference and stitching overlap while at most ``max_in_flight + 1`` batches are alive. A window
whose input is constant in every channel is computed once per distinct value and its result
reused, which changes no output of a deterministic predictor.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from functools import partial
from typing import Literal

import numpy as np
from rich.console import Console
from rich.progress import MofNCompleteColumn, Progress

from veloxseg.runtime.errors import InputError, ModelFileError
from veloxseg.runtime.tiling import (
    Blend,
    DenseAccumulator,
    StreamingLabelAccumulator,
    TilePlan,
    importance_map,
    plan_tiles,
)

__all__ = ["Output", "PredictBatch", "sliding_window_predict", "softmax_inplace"]

Output = Literal["labels", "probabilities", "logits", "margins"]
PredictBatch = Callable[[np.ndarray], np.ndarray]
"""Maps a ``(B, C, *patch)`` float32 batch to ``(B, n_classes, *patch)`` float32 logits (or
``(B, n_classes - 1, *patch)`` margins over class 0)."""
_WindowResult = tuple[Future[np.ndarray], int]
"""A window's result: the batch future that computes it and the window's index in that batch."""

_MAX_REUSED = 8  # distinct constant windows whose results are kept for reuse

_MIRROR_AXES = tuple(
    axes for r in range(4) for axes in itertools.combinations((2, 3, 4), r)
)  # the 8 flip combinations of a (B, C, X, Y, Z) batch, nnU-Net's test-time mirroring


def sliding_window_predict(
    volume: np.ndarray,
    predict_batch: PredictBatch,
    patch: tuple[int, int, int],
    n_classes: int,
    overlap: float = 0.25,
    blend: Blend = "constant",
    batch_size: int = 1,
    tta: bool = False,
    output: Output = "labels",
    progress: bool = False,
    *,
    in_channels: int | None = None,
    max_in_flight: int = 2,
    margins: bool = False,
    reuse_constant: bool = True,
) -> np.ndarray:
    """Segment a ``(C, X, Y, Z)`` float32 volume window by window.

    Returns ``(X, Y, Z)`` uint8/uint16 labels (streamed: no full-volume float logits), or
    ``(n_classes, X, Y, Z)`` float32 blended logits or their softmax over classes.
    ``tta`` averages the logits of all 8 axis flips. ``max_in_flight`` is how many
    ``predict_batch`` calls may run at once on worker threads; above 1 it must be thread-safe
    (an ONNX Runtime session is; an engine can also spread the calls over several infer requests).

    ``reuse_constant`` computes a window whose input is constant in every channel once per
    distinct value and reuses the result; ``predict_batch`` must be deterministic (ONNX Runtime and
    OpenVINO are). Off, every window is computed, as MONAI does (for benchmarks).

    With ``margins``, ``predict_batch`` returns logit margins over class 0 (``K - 1`` channels);
    they give ``labels``, or blended ``(n_classes - 1, X, Y, Z)`` margins for ``output="margins"``.
    """
    _check_volume(volume, in_channels)
    _check_options(n_classes, batch_size, output, max_in_flight)
    if output != "labels" and margins != (output == "margins"):
        source = "margins" if margins else "logits"
        raise ValueError(f"output={output!r} cannot be computed from {source}")
    plan = plan_tiles(volume.shape[1:], patch, overlap)
    weight = importance_map(plan.patch, blend)
    channels = n_classes - 1 if margins else n_classes
    if output == "labels":
        accumulator = StreamingLabelAccumulator(plan, n_classes, weight, margins=margins)
    else:
        accumulator = DenseAccumulator(plan, channels, weight)
    infer = partial(_infer, predict_batch, (channels, *plan.patch), tta)
    batches = [plan.starts[i : i + batch_size] for i in range(0, len(plan.starts), batch_size)]
    reused: dict[bytes, _WindowResult] = {}  # constant window values -> where its result is
    pool = ThreadPoolExecutor(max_workers=max_in_flight, thread_name_prefix="veloxseg-infer")
    pending: deque[tuple[Sequence[tuple[int, int, int]], list[_WindowResult]]] = deque()
    try:
        with _progress_bar(progress, len(plan.starts)) as advance:
            for starts in batches:
                batch = extract_windows(volume, plan, starts)
                keys = [_constant_key(w) if reuse_constant else None for w in batch]
                if all(key in reused for key in keys):  # every window already computed
                    pending.append((starts, [reused[key] for key in keys]))  # type: ignore[index]
                else:
                    future = pool.submit(infer, batch)
                    results = [(future, i) for i in range(len(starts))]
                    for key, result in zip(keys, results, strict=True):
                        if key is not None and len(reused) < _MAX_REUSED:
                            reused.setdefault(key, result)
                    pending.append((starts, results))
                if len(pending) > max_in_flight:  # one queued extra keeps workers busy
                    _stitch(accumulator, *pending.popleft(), advance)
            while pending:
                _stitch(accumulator, *pending.popleft(), advance)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    result = accumulator.finalize()
    if output == "probabilities":
        softmax_inplace(result)
    return result


def _check_volume(volume: np.ndarray, in_channels: int | None) -> None:
    """Reject inputs that would silently give wrong results; messages say what was expected."""
    if not isinstance(volume, np.ndarray):
        raise InputError(f"volume must be a numpy array (C, X, Y, Z), got {type(volume).__name__}")
    if volume.ndim != 4:
        raise InputError(
            f"volume must be 4D (C, X, Y, Z), got {volume.ndim}D with shape {volume.shape}"
        )
    if volume.dtype != np.float32:
        raise InputError(
            f"volume must be float32, got {volume.dtype}; convert it with volume.astype(np.float32)"
        )
    if in_channels is not None and volume.shape[0] != in_channels:
        raise InputError(
            f"volume has {volume.shape[0]} channels (shape {volume.shape}), expected {in_channels}"
        )
    if volume.size and not (np.isfinite(volume.min()) and np.isfinite(volume.max())):
        raise InputError("volume contains NaN or infinite values; expected finite intensities")


def _check_options(n_classes: int, batch_size: int, output: str, max_in_flight: int) -> None:
    """Validate the scalar options that plan_tiles and importance_map do not cover."""
    if n_classes < 1:
        raise ValueError(f"n_classes must be >= 1, got {n_classes}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if max_in_flight < 1:
        raise ValueError(f"max_in_flight must be >= 1, got {max_in_flight}")
    if output not in ("labels", "probabilities", "logits", "margins"):
        raise ValueError(
            f"output must be 'labels', 'probabilities', 'logits' or 'margins', got {output!r}"
        )


def extract_windows(
    volume: np.ndarray, plan: TilePlan, starts: Sequence[tuple[int, int, int]]
) -> np.ndarray:
    """Cut a contiguous ``(B, C, *patch)`` batch; voxels in the plan's padding are 0."""
    padded = plan.shape != plan.padded_shape
    alloc = np.zeros if padded else np.empty
    batch = alloc((len(starts), volume.shape[0], *plan.patch), dtype=np.float32)
    for b, start in enumerate(starts):
        src, dst = [slice(None)], [b, slice(None)]
        for s, p, (before, _), n in zip(start, plan.patch, plan.pad, plan.shape, strict=True):
            origin = s - before  # window corner in original coordinates, may be negative
            lo, hi = max(origin, 0), min(origin + p, n)
            src.append(slice(lo, hi))
            dst.append(slice(lo - origin, hi - origin))
        batch[tuple(dst)] = volume[tuple(src)]
    return batch


def _constant_key(window: np.ndarray) -> bytes | None:
    """The per-channel values of a ``(C, *patch)`` window constant in every channel, else None.

    Such windows (air clipped to one CT value, the zero background around a skull-stripped brain,
    padding) all give the same result, so each distinct one is computed once.
    """
    first = window[:, :1, :1, :1]
    if (window[:, ::7, ::7, ::7] != first).any():
        return None  # a sparse sample already differs: most windows stop here, cheaply
    if any(channel.min() != channel.max() for channel in window):
        return None
    return first.tobytes()


def _infer(
    predict_batch: PredictBatch, out_shape: tuple[int, ...], tta: bool, batch: np.ndarray
) -> np.ndarray:
    """Run the predictor (8 mirrored passes with ``tta``) on a worker thread; return logits."""
    if not tta:
        return _checked(predict_batch(batch), (len(batch), *out_shape))
    total = np.zeros((len(batch), *out_shape), dtype=np.float32)
    for axes in _MIRROR_AXES:
        flipped = np.ascontiguousarray(np.flip(batch, axes)) if axes else batch
        logits = _checked(predict_batch(flipped), total.shape)
        total += np.flip(logits, axes) if axes else logits
    total /= len(_MIRROR_AXES)
    return total


def _checked(logits: np.ndarray, expected: tuple[int, ...]) -> np.ndarray:
    """Turn a predictor's result into float32 logits of the expected ``(B, K, *patch)`` shape."""
    logits = np.asarray(logits, dtype=np.float32)
    if logits.shape != expected:
        raise ValueError(
            f"predict_batch returned shape {logits.shape}, expected {expected} "
            "(batch, channels, *patch)"
        )
    if not np.isfinite(logits.sum()):  # one pass; NaN and inf survive a sum of finite values
        raise ModelFileError(
            "the model produced NaN or infinite scores on finite input; the model file is "
            "broken (re-export it from a checkpoint with finite weights)"
        )
    return logits


def _stitch(
    accumulator: DenseAccumulator | StreamingLabelAccumulator,
    starts: Sequence[tuple[int, int, int]],
    results: Sequence[_WindowResult],
    advance: Callable[[int], None],
) -> None:
    """Wait for one batch and add its windows in plan order (keeps per-voxel sums deterministic)."""
    for start, (future, index) in zip(starts, results, strict=True):
        accumulator.add(start, future.result()[index])
    advance(len(starts))


@contextmanager
def _progress_bar(enabled: bool, total: int) -> Iterator[Callable[[int], None]]:
    """Yield a callable that advances a rich progress bar over windows (a no-op if disabled).
    The bar vanishes when done: under a folder run's case bar, one finished bar per case would
    pile up, and a single case ends with its timing summary anyway."""
    if not enabled:
        yield lambda _n: None
        return
    columns = (*Progress.get_default_columns(), MofNCompleteColumn())
    with Progress(*columns, console=Console(stderr=True), transient=True) as bar:  # not stdout
        task = bar.add_task("sliding window", total=total)
        yield lambda n: bar.advance(task, n)


def softmax_inplace(logits: np.ndarray) -> None:
    """Numerically stable softmax over axis 0 of ``(K, X, Y, Z)`` logits, in place, one X
    slice at a time so that the max and sum temporaries stay slice-sized."""
    for x in range(logits.shape[1]):
        part = logits[:, x]
        part -= part.max(axis=0, keepdims=True)
        np.exp(part, out=part)
        part /= part.sum(axis=0, keepdims=True)
