"""Exported files carry ai.veloxseg nodes, pass the checker, run in stock ONNX Runtime and in
OpenVINO through Engine, and match PyTorch within 1e-3 (reference checkpoint and all configs).
The export command takes the training run's normalisation, never replaces its inputs or (without
--overwrite) other files, leaves no file when verification fails, and refuses bad input in one
line."""

from __future__ import annotations

import json
import os
import pickle
import re
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from click.testing import Result
from typer.testing import CliRunner

from veloxseg.cli.app import app
from veloxseg.export import export_onnx
from veloxseg.model import CONFIG_NAMES, VeloxSeg, get_config, seeded_state_dict
from veloxseg.runtime import Engine
from veloxseg.runtime.card import CARD_KEY, NORMALIZATION_FILE, ModelCard, Normalization
from veloxseg.runtime.model_file import open_model_file
from veloxseg.train.trainer import FINAL_CHECKPOINT, TrainConfig, train

# Issue 3's bound. Observed: ~3e-5 (ORT and OpenVINO f32 reorder float32 sums in convs and
# softmax); a wrong window layout or bias shifts logits by > 0.1.
EXPORT_TOL = 1e-3


def _seeded_torch(name: str) -> VeloxSeg:
    model = VeloxSeg(**get_config(name)).eval()
    model.load_state_dict(seeded_state_dict(model, CONFIG_NAMES.index(name) + 1))
    return model


def _seeded_checkpoint(path: Path) -> Path:
    torch.save(_seeded_torch("autopetii").state_dict(), path)
    return path


def _export(*args: str | Path) -> Result:
    return CliRunner().invoke(app, ["export", *map(str, args)])


def _one_line(result: Result) -> str:
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    return lines[0]


@pytest.fixture(scope="module")
def training_run(tmp_path_factory) -> Path:
    """A real ``veloxseg train`` run folder (stopped at once): checkpoints and its
    normalization.json with the CT statistics of its phantoms."""
    run = tmp_path_factory.mktemp("run")
    shape = (48, 48, 48)
    config = TrainConfig(run, steps=1, pool_size=1, pool_shape=shape, time_limit_minutes=1e-9)
    train(config, progress=False)
    return run


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
    line = _one_line(result)
    assert line.index("fits config 'autopetii'") < line.index("[")  # the fix before the details
    assert all(len(keys.split(", ")) <= 2 for keys in re.findall(r"\[([^]]*)\]", line))


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


@pytest.mark.parametrize("given", ["beside the checkpoint", "with --card"])
def test_export_card_carries_the_training_runs_normalization(training_run, tmp_path, given):
    checkpoint, card = training_run / FINAL_CHECKPOINT, []
    if given == "with --card":
        checkpoint = shutil.copy(checkpoint, tmp_path / "c.pth")
        card = ["--card", training_run / NORMALIZATION_FILE]
    output = tmp_path / "m.onnx"
    result = _export(checkpoint, "-c", "autopetii", "-o", output, "--no-verify", *card)
    assert result.exit_code == 0, result.output
    trained = json.loads((training_run / NORMALIZATION_FILE).read_text())
    card_norms = open_model_file(output).card.normalization
    assert card_norms == tuple(Normalization(**n) for n in trained["normalization"])
    assert "placeholder" not in result.output
    if given == "beside the checkpoint":
        assert f"normalisation from {training_run / NORMALIZATION_FILE}" in result.output


def test_export_without_training_statistics_warns_that_the_card_has_placeholders(tmp_path):
    checkpoint = _seeded_checkpoint(tmp_path / "c.pth")
    result = _export(checkpoint, "-c", "autopetii", "-o", tmp_path / "m.onnx", "--no-verify")
    assert result.exit_code == 0, result.output
    warnings = [line for line in result.output.splitlines() if "placeholder CT stat" in line]
    assert len(warnings) == 1 and "--card" in warnings[0]


@pytest.mark.parametrize("alias", ["same path", "symlink", "hard link"])
def test_export_never_replaces_its_checkpoint_even_with_overwrite(tmp_path, alias):
    checkpoint = _seeded_checkpoint(tmp_path / "c.pth")
    before = checkpoint.read_bytes()
    output = checkpoint if alias == "same path" else tmp_path / "m.onnx"
    if alias == "symlink":
        output.symlink_to(checkpoint)
    elif alias == "hard link":
        os.link(checkpoint, output)
    result = _export(checkpoint, "-c", "autopetii", "-o", output, "--no-verify", "--overwrite")
    assert result.exit_code == 2
    assert f"is the checkpoint {checkpoint}" in _one_line(result)
    assert checkpoint.read_bytes() == before


def test_export_replaces_an_existing_file_only_with_overwrite(tmp_path):
    checkpoint = _seeded_checkpoint(tmp_path / "c.pth")
    output = tmp_path / "m.onnx"
    output.write_text("keep")
    refused = _export(checkpoint, "-c", "autopetii", "-o", output, "--no-verify")
    assert refused.exit_code == 2
    assert "exists; pass --overwrite to replace it" in _one_line(refused)
    assert output.read_text() == "keep"
    replaced = _export(checkpoint, "-c", "autopetii", "-o", output, "--no-verify", "--overwrite")
    assert replaced.exit_code == 0, replaced.output
    assert open_model_file(output).card.config_name == "autopetii"


@pytest.mark.slow
def test_export_failing_verification_leaves_no_file_and_keeps_an_existing_one(tmp_path):
    state = _seeded_torch("autopetii").state_dict()
    state[next(k for k, v in state.items() if v.ndim > 1)][0] = float("nan")
    torch.save(state, tmp_path / "nan.pth")
    folder = tmp_path / "out"
    folder.mkdir()
    (folder / "old.onnx").write_text("keep")
    for output in (folder / "new.onnx", folder / "old.onnx", folder / "new" / "sub" / "m.onnx"):
        result = _export(tmp_path / "nan.pth", "-c", "autopetii", "-o", output, "--overwrite")
        assert result.exit_code == 1
        assert "max |Δlogit|" in _one_line(result)
    assert [p.name for p in folder.iterdir()] == ["old.onnx"]  # no temp file or new folder
    assert (folder / "old.onnx").read_text() == "keep"


@pytest.mark.parametrize("opset", [10, 99])
def test_export_refuses_an_unsupported_opset_with_exit_2(tmp_path, opset):
    checkpoint = _seeded_checkpoint(tmp_path / "c.pth")
    output = tmp_path / "m.onnx"
    result = _export(checkpoint, "-c", "autopetii", "-o", output, "--opset", str(opset))
    assert result.exit_code == 2
    assert f"opset {opset} is not supported; use 11 to 20" in _one_line(result)
    assert not output.exists()


@pytest.mark.parametrize(
    "content",
    [
        b"hello, I am not a nifti\n",  # torch.load: KeyError: 101
        pickle.dumps({"weights": [1.0, 2.0]}, protocol=4),  # plus a torch warning line
        pickle.dumps({"weights": [1.0, 2.0]}, protocol=2),  # "Invalid magic number"
    ],
    ids=["text", "pickle", "old pickle"],
)
def test_export_of_a_file_that_is_not_a_checkpoint_exits_2_naming_it(tmp_path, content):
    path = tmp_path / "c.pth"
    path.write_bytes(content)
    result = _export(path, "-c", "autopetii", "-o", tmp_path / "m.onnx")
    assert result.exit_code == 2
    line = _one_line(result)
    assert f"{path} is not a VeloxSeg checkpoint that loads with torch.load" in line
    assert "internal error" not in line
    assert not (tmp_path / "m.onnx").exists()


def test_export_refuses_a_pickle_that_would_run_code_in_one_line(tmp_path):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    torch.save({"model": Payload()}, tmp_path / "evil.pth")
    result = _export(tmp_path / "evil.pth", "-c", "autopetii", "-o", tmp_path / "m.onnx")
    assert result.exit_code == 2
    line = _one_line(result)
    assert "loads with torch.load(weights_only=True): " in line and "GLOBAL" in line
    assert "could run code" in line and "documentation" not in line
    assert not marker.exists()


def test_export_refuses_a_misspelt_card_field_naming_the_right_one(tmp_path):
    card = tmp_path / "card.json"
    card.write_text('{"normalisation": [{"scheme": "zscore"}, {"scheme": "zscore"}]}')
    output = tmp_path / "m.onnx"
    checkpoint = _seeded_checkpoint(tmp_path / "c.pth")
    result = _export(checkpoint, "-c", "autopetii", "-o", output, "--card", card)
    assert result.exit_code == 2
    assert "unknown field 'normalisation'; did you mean 'normalization'?" in _one_line(result)
    assert not output.exists()


def _config_file(path: Path, **changes: object) -> Path:
    """The AutoPET-II config with ``changes`` (``None`` drops the key) as a JSON file."""
    config = {**get_config("autopetii"), **changes}
    path.write_text(json.dumps({k: v for k, v in config.items() if v is not None}))
    return path


def test_export_refuses_a_one_class_model_whose_labels_would_all_be_background(tmp_path):
    state = _seeded_torch("autopetii").state_dict()
    heads = ("decoder.out_conv",)  # class-major outputs: the first half is class 0's
    one_class = {k: v[: len(v) // 2] if k.startswith(heads) else v for k, v in state.items()}
    torch.save(one_class, tmp_path / "c.pth")
    config = _config_file(tmp_path / "cfg.json", n_classes=1)
    result = _export(tmp_path / "c.pth", "-c", config, "-o", tmp_path / "m.onnx", "--no-verify")
    assert result.exit_code == 2
    assert "n_classes must be at least 2" in _one_line(result)
    assert not (tmp_path / "m.onnx").exists()


def test_export_refuses_an_input_size_the_windows_cannot_tile_in_one_line(tmp_path):
    config = _config_file(tmp_path / "cfg.json", input_size=[100, 96, 96])
    checkpoint = _seeded_checkpoint(tmp_path / "c.pth")
    result = _export(checkpoint, "-c", config, "-o", tmp_path / "m.onnx", "--no-verify")
    assert result.exit_code == 2
    line = _one_line(result)
    assert "input_size [100, 96, 96] cannot be tiled" in line and "multiple of (96, 96, 96)" in line
    assert not (tmp_path / "m.onnx").exists()


def test_export_with_a_config_lacking_n_classes_says_how_many_classes_the_card_needs(tmp_path):
    config = _config_file(tmp_path / "cfg.json", n_classes=None)  # upstream's default: 2
    card = tmp_path / "card.json"
    card.write_text('{"class_names": ["background", "a", "b"], "label_values": [0, 1, 2]}')
    checkpoint = _seeded_checkpoint(tmp_path / "c.pth")
    result = _export(checkpoint, "-c", config, "-o", tmp_path / "m.onnx", "--card", card)
    assert result.exit_code == 2
    line = _one_line(result)
    assert "card lists 3 classes but the model outputs 2; pass --card with 2 class_names" in line


def test_export_of_an_upstream_config_file_without_a_veloxseg_entry_says_so(tmp_path):
    config = tmp_path / "models_config_mine.json"
    config.write_text('{"UNet": {"in_channels": 2}}')
    checkpoint = _seeded_checkpoint(tmp_path / "c.pth")
    result = _export(checkpoint, "-c", config, "-o", tmp_path / "m.onnx")
    assert result.exit_code == 2
    assert "has no 'VeloxSeg' entry (it configures UNet)" in _one_line(result)


def test_export_of_a_named_config_file_with_another_class_count_guesses_labels_and_says_so(
    tmp_path,
):
    config = tmp_path / "models_config_hecktor2022.json"  # upstream's file names the config
    config.write_text(json.dumps({"VeloxSeg": {**get_config("hecktor2022"), "n_classes": 3}}))
    result = export_onnx(None, config, tmp_path / "m.onnx", verify=False)
    assert result.card.config_name == "hecktor2022"
    assert result.card.label_values == (0, 1, 2)
    assert result.card.modalities == ("CT", "PET")  # the named defaults that still fit
    assert result.generic_card_fields == ("class_names", "label_values")
    assert "class_names, label_values are generic guesses" in result.generic_card_notice


def test_export_of_a_renamed_config_counts_class_names_and_label_values_as_guesses(tmp_path):
    config = tmp_path / "my_brats.json"
    config.write_text(json.dumps(get_config("brats2021")))
    result = export_onnx(None, config, tmp_path / "m.onnx", verify=False)
    assert result.card.label_values == (0, 1, 2, 3)  # not BraTS's 0, 1, 2, 4: only a guess
    assert {"class_names", "label_values"} <= set(result.generic_card_fields)
    assert "labels 0..K-1" in result.generic_card_notice
