"""Where OpenVINO fp32 departs from ONNX Runtime: every intermediate tensor of one bundled-sample
patch, in graph order, with its max |Δ| relative to the tensor's max; prints the tensors where the
relative error first grows, and the logits. It compiles the graph as read, without the backend's
flattened InstanceNorms (`flatten_instance_norms`), so it shows what that rewrite fixes.

Usage: python benchmarks/bisect_openvino_error.py [THREADS]   (1 = one thread per stream)
"""

from __future__ import annotations

import argparse

import numpy as np
import onnx
import onnxruntime as ort
import openvino as ov

from veloxseg.assets import bundled_model
from veloxseg.runtime.benchmark import sample_patches
from veloxseg.runtime.model_file import graph_for_output, open_model_file
from veloxseg.runtime.openvino_pwa import pwa_conversion_extension

_WATCHED = ("InstanceNormalization", "Conv", "Erf", "Div", "Mul", "Add")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("threads", type=int, nargs="?", default=1, help="1: one per stream")
    threads = parser.parse_args().threads
    x = sample_patches(bundled_model(), 2)[:1]
    proto = graph_for_output(open_model_file(bundled_model()), "logits")
    order = {n.output[0]: i for i, n in enumerate(proto.graph.node)}
    watched = [n.output[0] for n in proto.graph.node if n.op_type in _WATCHED]
    for name in watched:
        proto.graph.output.append(
            onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None)
        )
    names = [o.name for o in proto.graph.output]
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    expected = dict(zip(names, session.run(names, {"image": x}), strict=True))
    core = ov.Core()
    core.add_extension(pwa_conversion_extension())
    config = {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": threads}
    request = core.compile_model(core.read_model(proto.SerializeToString(), b""), "CPU", config)
    request = request.create_infer_request()
    request.infer({0: x})
    rows = []
    for name in names:
        got = request.get_tensor(name).data
        if got.shape != expected[name].shape:
            continue
        err = float(np.abs(got - expected[name]).max())
        scale = float(np.abs(expected[name]).max()) + 1e-12
        rows.append((order.get(name, len(order)), name, err, err / scale, scale))
    worst = 0.0
    for _, name, err, rel, scale in sorted(rows):
        if rel > 2 * worst or rel > 1e-5 or name == "logits":
            print(f"{name[-78:]:78} abs {err:.2e} rel {rel:.2e} max {scale:.1f}")
        worst = max(worst, rel)


if __name__ == "__main__":
    main()
