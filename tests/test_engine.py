"""Engine: opening models safely, patch inference contracts, and a torch-free runtime."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import helper

from veloxseg.runtime import Engine, InputError, ModelFileError


def test_runtime_imports_without_torch():
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "import veloxseg.runtime, veloxseg.runtime.segment, veloxseg.runtime.cases\n"
        "import veloxseg.runtime.backends.openvino_backend\n"
        "import veloxseg.runtime.backends.onnxruntime_backend\n"
        "import veloxseg.cli.app\n"
        "assert 'torch' not in [m for m in sys.modules if sys.modules[m] is not None]\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_corrupt_model_file_raises_model_file_error(tmp_path):
    path = tmp_path / "bad.onnx"
    path.write_bytes(b"\x08\x07this is not protobuf" * 10)
    with pytest.raises(ModelFileError, match="not a readable ONNX model"):
        Engine.open(path)


def test_missing_model_file_raises_model_file_error(tmp_path):
    with pytest.raises(ModelFileError, match="does not exist"):
        Engine.open(tmp_path / "nope.onnx")


def test_onnx_file_without_card_is_refused(tmp_path):
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])],
    )
    onnx.save(helper.make_model(graph), tmp_path / "relu.onnx")
    with pytest.raises(ModelFileError, match="no VeloxSeg model card"):
        Engine.open(tmp_path / "relu.onnx")


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_predict_patches_checks_shape_and_dtype(exported, backend):
    engine = Engine.open(exported("autopetii"), backend=backend, precision="fp32", threads=2)
    with pytest.raises(InputError, match=r"expected a \(B, 2, 96, 96, 96\) array"):
        engine.predict_patches(np.zeros((1, 3, 96, 96, 96), np.float32))
    with pytest.raises(InputError, match="float32"):
        engine.predict_patches(np.zeros((1, 2, 96, 96, 96), np.float64))
    out = engine.predict_patches(np.zeros((3, 2, 96, 96, 96), np.float32))
    assert out.shape == (3, 2, 96, 96, 96) and out.dtype == np.float32


def test_onnxruntime_backend_refuses_bf16(exported):
    with pytest.raises(ValueError, match="fp32 only"):
        Engine.open(exported("autopetii"), backend="onnxruntime", precision="bf16")
