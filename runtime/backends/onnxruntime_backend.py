"""ONNX Runtime backend: the portable path (any CPU ORT supports), fp32 only."""

from __future__ import annotations

import os
import queue

import numpy as np

from veloxseg.runtime.backends.base import BackendOptions
from veloxseg.runtime.errors import ModelFileError
from veloxseg.runtime.model_file import ModelFile, graph_for_output

__all__ = ["OnnxRuntimeBackend", "session_lanes"]

# Throughput lanes when the runtime may choose (streams=0): at most this many sessions, since each
# holds its own activation arena (about 90 MB more peak RSS per lane for a 96^3 patch, measured).
_MAX_AUTO_LANES = 4


def session_lanes(streams: int, threads: int) -> int:
    """How many sessions run windows at once: ``streams``, or with 0 one per thread up to
    ``_MAX_AUTO_LANES``. One single-threaded run per core wastes no time waiting for the
    other threads of a call at the end of each small op, as intra-op threads do."""
    lanes = streams if streams > 0 else min(threads, _MAX_AUTO_LANES)
    return max(1, min(lanes, threads))


class OnnxRuntimeBackend:
    """``parallel_requests`` sessions sharing the threads; ``infer`` borrows one per call."""

    name = "onnxruntime"

    def __init__(self, model: ModelFile, options: BackendOptions) -> None:
        import onnxruntime as ort

        self.precision = options.precision
        threads = options.threads or os.cpu_count() or 1
        self.parallel_requests = session_lanes(options.streams, threads)
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.intra_op_num_threads = max(1, threads // self.parallel_requests)
        so.inter_op_num_threads = 1
        source: str | bytes = str(model.path)
        if len(model.proto.graph.output) > 1:
            source = graph_for_output(model, options.output).SerializeToString()
        self._sessions: queue.Queue = queue.Queue()
        try:
            for _ in range(self.parallel_requests):
                session = ort.InferenceSession(source, so, providers=["CPUExecutionProvider"])
                self._sessions.put(session)
        except Exception as e:  # ORT raises its own exception types for bad graphs
            raise ModelFileError(f"onnxruntime cannot load {model.path}: {e}") from e
        self._input = model.input_name
        self._outputs = [options.output]

    def infer(self, batch: np.ndarray) -> np.ndarray:
        session = self._sessions.get()
        try:
            return session.run(self._outputs, {self._input: batch})[0]
        finally:
            self._sessions.put(session)
