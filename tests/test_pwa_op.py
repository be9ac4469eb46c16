"""The PairedWindowAttention op agrees in its four forms: NumPy reference (from the definition),
PyTorch core, the ONNX function body in ONNX Runtime, and the OpenVINO conversion extension."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import openvino as ov
import pytest
import torch
from onnx import helper

from veloxseg.export.pwa_op import (
    function_body,
    input_names,
    node_attributes,
    reference_pwa,
)
from veloxseg.model import CONFIG_NAMES, VeloxSeg, get_config
from veloxseg.model.pwa import window_attention_core
from veloxseg.runtime.card import PWA_DOMAIN, PWA_OP_TYPE
from veloxseg.runtime.openvino_pwa import pwa_conversion_extension

# All four forms compute in float32 except the float64 reference; softmax over <= 432 tokens and
# sums over <= 64 channels keep float32 error near 1e-6. A wrong window order or upsampling gives
# errors of order 1.
TOL = 1e-4


def _levels():
    for name in CONFIG_NAMES:
        config = get_config(name)
        model = VeloxSeg(**config)
        size = [s // config["patch_size"] for s in config["input_size"]]
        for level, scheme in enumerate(model.schemes):
            yield pytest.param(scheme, len(config["in_ch"]), tuple(size), id=f"{name}-L{level}")
            size = [s // 2 for s in size]


def _inputs(scheme, modalities, size, batch=2):
    rng = np.random.default_rng(0)
    arrays = []
    for _ in range(modalities):
        for channels in (scheme.channels_qk, scheme.channels_qk, scheme.channels_v):
            arrays.append(rng.standard_normal((batch, channels, *size)).astype(np.float32))
    tokens = scheme.tokens * modalities
    bias = rng.standard_normal((scheme.heads, tokens, tokens)).astype(np.float32)
    return arrays, bias


def _single_node_model(scheme, modalities, size, arrays, bias) -> onnx.ModelProto:
    names = input_names(modalities)
    attrs = node_attributes(scheme, modalities, size)
    outputs = [f"out_{m}" for m in range(modalities)]
    node = helper.make_node(
        PWA_OP_TYPE, names, outputs, domain=PWA_DOMAIN, overload=attrs["scheme"], **attrs
    )
    graph_inputs = [
        helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, ["B", a.shape[1], *size])
        for n, a in zip(names[:-1], arrays, strict=True)
    ]
    graph = helper.make_graph(
        [node],
        "pwa",
        graph_inputs,
        [helper.make_tensor_value_info(o, onnx.TensorProto.FLOAT, [None] * 5) for o in outputs],
        initializer=[onnx.numpy_helper.from_array(bias, "bias")],
    )
    return helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(PWA_DOMAIN, 1)],
        functions=[function_body(scheme, modalities, size, 17)],
        ir_version=10,
    )


@pytest.mark.parametrize(("scheme", "modalities", "size"), list(_levels()))
def test_torch_onnxruntime_and_openvino_match_numpy_reference(scheme, modalities, size, tmp_path):
    arrays, bias = _inputs(scheme, modalities, size)
    expected = reference_pwa(arrays[0::3], arrays[1::3], arrays[2::3], bias, scheme)

    tensors = [torch.from_numpy(a) for a in arrays]
    got_torch = window_attention_core(
        tensors[0::3], tensors[1::3], tensors[2::3], torch.from_numpy(bias), scheme
    )
    model = _single_node_model(scheme, modalities, size, arrays, bias)
    onnx.checker.check_model(model)
    feeds = dict(zip(input_names(modalities), arrays, strict=False))
    got_ort = ort.InferenceSession(model.SerializeToString()).run(None, feeds)
    path = tmp_path / "pwa.onnx"
    onnx.save(model, path)
    core = ov.Core()
    core.add_extension(pwa_conversion_extension())
    compiled = core.compile_model(
        core.read_model(str(path)), "CPU", {"INFERENCE_PRECISION_HINT": "f32"}
    )
    result = compiled(arrays)
    got_ov = [result[compiled.output(m)] for m in range(modalities)]
    for m in range(modalities):
        assert np.abs(got_torch[m].numpy() - expected[m]).max() <= TOL
        assert np.abs(got_ort[m] - expected[m]).max() <= TOL
        assert np.abs(got_ov[m] - expected[m]).max() <= TOL
