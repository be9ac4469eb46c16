"""ONNX Runtime backend: the portable path (any CPU ORT supports), fp32 only."""

from __future__ import annotations

import numpy as np

from veloxseg.runtime.backends.base import BackendOptions
from veloxseg.runtime.errors import ModelFileError
from veloxseg.runtime.model_file import ModelFile, graph_for_output

__all__ = ["OnnxRuntimeBackend"]


class OnnxRuntimeBackend:
    """One ``InferenceSession``; ORT sessions are safe to call from several threads."""

    name = "onnxruntime"
    parallel_requests = 1

    def __init__(self, model: ModelFile, options: BackendOptions) -> None:
        import onnxruntime as ort

        self.precision = options.precision
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if options.threads:
            so.intra_op_num_threads = options.threads
            so.inter_op_num_threads = 1
        source: str | bytes = str(model.path)
        if len(model.proto.graph.output) > 1:
            source = graph_for_output(model, options.output).SerializeToString()
        try:
            self._session = ort.InferenceSession(
                source, sess_options=so, providers=["CPUExecutionProvider"]
            )
        except Exception as e:  # ORT raises its own exception types for bad graphs
            raise ModelFileError(f"onnxruntime cannot load {model.path}: {e}") from e
        self._input = model.input_name
        self._outputs = [options.output]

    def infer(self, batch: np.ndarray) -> np.ndarray:
        return self._session.run(self._outputs, {self._input: batch})[0]
