"""Where OpenVINO spends its time on one patch: PERF_COUNT per node, grouped by layer type and
listed for the slowest nodes, for one graph output (the other is dropped, as the engine does).

Usage: [THREADS=2] python benchmarks/profile_openvino.py [MODEL] [fp32|bf16] [logits|label_margins]
(THREADS=1 profiles one throughput stream, as `veloxseg segment` runs each on 2 cores)."""

from __future__ import annotations

import argparse
import os
from collections import defaultdict

import numpy as np
import openvino as ov

from veloxseg.assets import bundled_model
from veloxseg.runtime.backends.openvino_backend import flatten_instance_norms
from veloxseg.runtime.openvino_pwa import pwa_conversion_extension


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("model", nargs="?", default=str(bundled_model()))
    parser.add_argument("precision", nargs="?", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("output", nargs="?", default="logits", choices=["logits", "label_margins"])
    args = parser.parse_args()
    path, precision, output = args.model, args.precision, args.output
    core = ov.Core()
    core.add_extension(pwa_conversion_extension())
    config = {
        "PERF_COUNT": True,
        "INFERENCE_NUM_THREADS": int(os.environ.get("THREADS", 2)),
        "INFERENCE_PRECISION_HINT": {"fp32": "f32", "bf16": "bf16"}[precision],
    }
    model = core.read_model(path)
    for result in list(model.get_results()):
        if output not in result.input_value(0).get_names():
            model.remove_result(result)
    shape = model.input(0).get_partial_shape()
    shape[0] = 1  # a static batch, as the engine compiles it
    model.reshape({model.input(0): shape})
    if precision == "fp32":
        flatten_instance_norms(model)  # as the engine compiles fp32
    compiled = core.compile_model(model, "CPU", config)
    request = compiled.create_infer_request()
    x = np.random.default_rng(0).standard_normal((1, 2, 96, 96, 96), np.float32)
    for _ in range(3):
        request.infer({0: x})
    by_type: dict[str, float] = defaultdict(float)
    nodes = []
    for info in request.profiling_info:
        ms = info.real_time.total_seconds() * 1000
        by_type[f"{info.node_type} ({info.exec_type})"] += ms
        nodes.append((ms, info.node_name, info.node_type, info.exec_type))
    total = sum(by_type.values())
    print(f"total {total:.1f} ms")
    for name, ms in sorted(by_type.items(), key=lambda kv: -kv[1])[:20]:
        print(f"{ms:8.2f} ms  {100 * ms / total:5.1f}%  {name}")
    print("slowest nodes:")
    for ms, name, kind, exec_type in sorted(nodes, reverse=True)[:25]:
        print(f"{ms:8.2f} ms  {kind:>24} {exec_type:>28}  {name[:70]}")


if __name__ == "__main__":
    main()
