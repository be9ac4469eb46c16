"""Exported files carry ai.veloxseg nodes, pass the checker, run in stock ONNX Runtime and in
OpenVINO through Engine, and match PyTorch within 1e-3 (reference checkpoint and all configs)."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from typer.testing import CliRunner

from veloxseg.cli.app import app
from veloxseg.export import export_onnx
from veloxseg.model import CONFIG_NAMES, VeloxSeg, get_config, seeded_state_dict
from veloxseg.runtime import Engine
from veloxseg.runtime.card import CARD_KEY, ModelCard

# Issue 3's bound. Observed: ~3e-5 (ORT and OpenVINO f32 reorder float32 sums in convs and
# softmax); a wrong window layout or bias shifts logits by > 0.1.
EXPORT_TOL = 1e-3


def _seeded_torch(name: str) -> VeloxSeg:
    model = VeloxSeg(**get_config(name)).eval()
    model.load_state_dict(seeded_state_dict(model, CONFIG_NAMES.index(name) + 1))
    return model


@pytest.mark.slow
@pytest.mark.parametrize("name", CONFIG_NAMES)
def test_export_has_custom_nodes_and_matches_pytorch_in_both_runtimes(exported, name):
    path = exported(name)
    proto = onnx.load(path)
    onnx.checker.check_model(proto)
    custom = [n for n in proto.graph.node if n.domain == "ai.veloxseg"]
    assert len(custom) == 4  # one per PWA block, depths [1, 1, 1, 1]
    assert {f.overload for f in proto.functions} == {n.overload for n in custom}
    assert not any(n.op_type == "ScatterND" for n in proto.graph.node)
    config = get_config(name)
    x = np.random.default_rng(5).standard_normal(
        (2, sum(config["in_ch"]), *config["input_size"]), np.float32
    )
    with torch.no_grad():
        expected = _seeded_torch(name)(torch.from_numpy(x)).numpy()
    stock = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert np.abs(stock.run(None, {"image": x})[0] - expected).max() <= EXPORT_TOL
    engine = Engine.open(path, backend="openvino", precision="fp32", threads=2)
    assert np.abs(engine.predict_patches(x) - expected).max() <= EXPORT_TOL


def test_card_in_file_round_trips_with_config_defaults(exported):
    proto = onnx.load(exported("brats2021"))
    card = ModelCard.from_json({p.key: p.value for p in proto.metadata_props}[CARD_KEY])
    assert card.modalities == ("FLAIR", "T1", "T1ce", "T2")
    assert card.label_values == (0, 1, 2, 4)
    assert card.patch_size == (96, 96, 96)
    assert card.model_config == get_config("brats2021")


@pytest.mark.slow
def test_reference_checkpoint_export_reproduces_upstream_logits(reference, tmp_path):
    result = export_onnx(
        reference / "autopetii_checkpoint.pth", "autopetii", tmp_path / "ref.onnx", verify=False
    )
    assert len(result.card.source_sha256) == 64
    io = np.load(reference / "autopetii_io.npz")
    for backend in ("onnxruntime", "openvino"):
        engine = Engine.open(result.path, backend=backend, precision="fp32", threads=2)
        assert np.abs(engine.predict_patches(io["input"]) - io["logits"]).max() <= EXPORT_TOL


@pytest.mark.slow
def test_export_command_writes_verified_file_and_info_prints_card(tmp_path):
    model = _seeded_torch("autopetii")
    torch.save(
        {"model": {f"module.{k}": v for k, v in model.state_dict().items()}}, tmp_path / "c.pth"
    )
    card = tmp_path / "card.json"
    card.write_text('{"class_names": ["background", "tumour"]}')
    out = tmp_path / "m.onnx"
    runner = CliRunner()
    result = runner.invoke(
        app,
        [
            "export",
            str(tmp_path / "c.pth"),
            "--config",
            "autopetii",
            "-o",
            str(out),
            "--card",
            str(card),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "openvino: max |Δlogit|" in result.output
    info = runner.invoke(app, ["info", str(out)])
    assert info.exit_code == 0
    assert "tumour" in info.output and "ai.veloxseg::PairedWindowAttention" in info.output


def test_export_of_mismatched_checkpoint_exits_2_with_one_line(tmp_path):
    model = _seeded_torch("autopetii")
    torch.save(model.state_dict(), tmp_path / "c.pth")
    result = CliRunner().invoke(
        app,
        [
            "export",
            str(tmp_path / "c.pth"),
            "--config",
            "brats2021",
            "-o",
            str(tmp_path / "m.onnx"),
        ],
    )
    assert result.exit_code == 2
    assert "fits config 'autopetii'" in result.output
    assert "Traceback" not in result.output


def test_patch_merging_as_strided_conv_equals_layernorm_of_stacked_cells():
    from veloxseg.export.inference_graph import patch_merging_forward
    from veloxseg.model.layers import PatchMerging

    torch.manual_seed(0)
    merge = PatchMerging(16).eval()
    with torch.no_grad():
        merge.norm.weight.normal_()
        merge.norm.bias.normal_()
        x = torch.randn(2, 16, 12, 8, 6) * 3 + 5  # an offset mean, as residual streams have
        expected, got = merge(x), patch_merging_forward(merge, x)
    # Same sums in another order; observed 1.4e-6 at |y| ~ 3. A wrong cell order is off by ~1.
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
