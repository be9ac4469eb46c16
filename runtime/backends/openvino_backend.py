"""OpenVINO backend: native PWA via a conversion extension, f32 or bf16 (AMX), async requests."""

from __future__ import annotations

import queue

import numpy as np

from veloxseg.runtime.backends.base import BackendOptions
from veloxseg.runtime.errors import ModelFileError
from veloxseg.runtime.model_file import ModelFile
from veloxseg.runtime.openvino_pwa import pwa_conversion_extension

__all__ = ["OpenVINOBackend"]

_PRECISION_HINT = {"fp32": "f32", "bf16": "bf16"}


class OpenVINOBackend:
    """A compiled model with one infer request per stream; ``infer`` borrows one per call, so
    ``parallel_requests`` calls run at once on separate streams."""

    name = "openvino"

    def __init__(self, model: ModelFile, options: BackendOptions) -> None:
        import openvino as ov

        self.precision = options.precision
        core = ov.Core()
        core.add_extension(pwa_conversion_extension())
        config: dict[str, str | int] = {
            "INFERENCE_PRECISION_HINT": _PRECISION_HINT[options.precision],
            "PERFORMANCE_HINT": "LATENCY" if options.streams == 1 else "THROUGHPUT",
        }
        if options.streams > 1:
            config["NUM_STREAMS"] = options.streams
        if options.threads:
            config["INFERENCE_NUM_THREADS"] = options.threads
        try:
            graph = core.read_model(str(model.path))
            for result in list(graph.get_results()):  # dropping a Result drops its branch
                if result.input_value(0).get_names().isdisjoint({options.output}):
                    graph.remove_result(result)
            # A static batch of one: OpenVINO compiles a dynamic batch to slower kernels (13%
            # fp32, 18% bf16 per patch here); a larger batch runs one window per call.
            shape = graph.input(0).get_partial_shape()
            shape[0] = 1
            graph.reshape({graph.input(0): shape})
            compiled = core.compile_model(graph, "CPU", config)
        except RuntimeError as e:
            first = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
            raise ModelFileError(f"openvino cannot load {model.path}: {first}") from e
        self._compiled = compiled
        self._window_shape = tuple(compiled.output(0).get_shape())[1:]
        self.parallel_requests = int(compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
        self._requests: queue.Queue = queue.Queue()
        for _ in range(self.parallel_requests):
            self._requests.put(compiled.create_infer_request())

    def infer(self, batch: np.ndarray) -> np.ndarray:
        request = self._requests.get()
        try:
            out = np.empty((len(batch), *self._window_shape), dtype=np.float32)
            for i in range(len(batch)):  # the graph's batch is 1
                request.infer({0: batch[i : i + 1]}, share_inputs=True)
                out[i] = request.get_output_tensor(0).data[0]
            return out
        finally:
            self._requests.put(request)
