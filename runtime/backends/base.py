"""The protocol every backend implements, and the options that travel to it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

import numpy as np

__all__ = ["Backend", "BackendOptions", "Precision"]

Precision = Literal["fp32", "bf16"]


@dataclass(frozen=True)
class BackendOptions:
    """``threads``: CPU threads (None = all cores); ``precision``: fp32 or bf16; ``streams``:
    parallel inference streams sharing those threads (1 = lowest latency per call; more =
    higher throughput over many windows; 0 = the runtime's own throughput choice); ``output``:
    the graph output to compute (``logits``, or ``label_margins`` where the file has them)."""

    threads: int | None = None
    precision: Precision = "fp32"
    streams: int = 1
    output: str = "logits"


class Backend(Protocol):
    """Runs a ``(B, C, *patch)`` float32 batch to its one output, e.g. ``(B, K, *patch)`` logits.

    ``infer`` is thread-safe; ``parallel_requests`` calls may usefully run at once.
    """

    name: str
    precision: Precision
    parallel_requests: int

    def infer(self, batch: np.ndarray) -> np.ndarray: ...
