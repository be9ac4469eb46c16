"""Untrusted ONNX files are bounded: external data never leaves the model's folder, foreign
operator domains and cards that contradict the graph are refused, truncated files are refused,
each through ``Engine.open`` and through ``veloxseg segment`` (exit 2, one line)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import onnx
import pytest
from onnx import helper
from typer.testing import CliRunner

from veloxseg.assets import bundled_model
from veloxseg.cli.app import app
from veloxseg.runtime import Engine, ModelFileError
from veloxseg.runtime.card import CARD_KEY

runner = CliRunner()
Edit = Callable[[onnx.ModelProto, Path], None]


@pytest.fixture(scope="module")
def base() -> onnx.ModelProto:
    return onnx.load(str(bundled_model()), load_external_data=False)


@pytest.fixture(scope="module")
def scan(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """A valid two-modality case, so that only the model can be at fault."""
    folder = tmp_path_factory.mktemp("scan")
    affine = np.diag([2.03642, 2.03642, 3.0, 1.0])
    rng = np.random.default_rng(0)
    paths = [folder / f"case_{c:04d}.nii.gz" for c in range(2)]
    for path in paths:
        nib.save(nib.Nifti1Image(rng.normal(size=(20, 20, 16)).astype(np.float32), affine), path)
    return paths


def _external(tensor: onnx.TensorProto, location: str, offset: int = 0, length: int = 64) -> None:
    """Turn ``tensor`` into one whose bytes live in ``location``."""
    tensor.ClearField("raw_data")
    tensor.ClearField("float_data")
    tensor.data_location = onnx.TensorProto.EXTERNAL
    del tensor.external_data[:]
    for key, value in (("location", location), ("offset", offset), ("length", length)):
        tensor.external_data.add(key=key, value=str(value))


def _outside(folder: Path) -> Path:
    """A readable file beside (not inside) the model's folder."""
    secret = folder.parent / "outside" / "secret.bin"
    secret.parent.mkdir(exist_ok=True)
    secret.write_bytes(bytes(4096))
    return secret


def _dotdot(proto: onnx.ModelProto, folder: Path) -> None:
    _outside(folder)
    _external(proto.graph.initializer[0], "../outside/secret.bin")


def _absolute(proto: onnx.ModelProto, folder: Path) -> None:
    _external(proto.graph.initializer[0], str(_outside(folder)))


def _symlink_out(proto: onnx.ModelProto, folder: Path) -> None:
    # The link's target does not exist: reading it would fail differently than the refusal.
    (folder / "weights.bin").symlink_to(folder.parent / "outside" / "never_created.bin")
    _external(proto.graph.initializer[0], "weights.bin")


def _fifo_out(proto: onnx.ModelProto, folder: Path) -> None:
    # Opening a FIFO for reading blocks until a writer comes: any read would hang the test.
    fifo = folder.parent / "outside" / "pipe"
    fifo.parent.mkdir(exist_ok=True)
    os.mkfifo(fifo)
    (folder / "weights.bin").symlink_to(fifo)
    _external(proto.graph.initializer[0], "weights.bin")


def _nested_in_subgraph(proto: onnx.ModelProto, folder: Path) -> None:
    """An ``If`` whose branch holds a ``Constant`` with external data out of the folder."""
    _outside(folder)
    value = helper.make_tensor("hidden", onnx.TensorProto.FLOAT, [16], np.zeros(16, np.float32))
    _external(value, "../outside/secret.bin")
    branch = helper.make_graph(
        [helper.make_node("Constant", [], ["c"], value=value)], "branch", [],
        [helper.make_tensor_value_info("c", onnx.TensorProto.FLOAT, [16])],
    )  # fmt: skip
    cond = helper.make_tensor("cond", onnx.TensorProto.BOOL, [], [True])
    proto.graph.initializer.append(cond)
    proto.graph.node.append(
        helper.make_node("If", ["cond"], ["unused"], then_branch=branch, else_branch=branch)
    )


def _missing_bytes(proto: onnx.ModelProto, folder: Path) -> None:
    (folder / "weights.bin").write_bytes(bytes(100))
    _external(proto.graph.initializer[0], "weights.bin", offset=64, length=4096)


def _foreign_domain(proto: onnx.ModelProto, folder: Path) -> None:
    proto.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    first = proto.graph.input[0].name
    proto.graph.node.append(
        helper.make_node("Gelu", [first], ["side"], domain="com.microsoft", name="foreign")
    )


def _foreign_domain_in_subgraph(proto: onnx.ModelProto, folder: Path) -> None:
    branch = helper.make_graph(
        [helper.make_node("Gelu", ["x0"], ["y0"], domain="com.microsoft")], "branch", [],
        [helper.make_tensor_value_info("y0", onnx.TensorProto.FLOAT, None)],
    )  # fmt: skip
    proto.graph.initializer.append(helper.make_tensor("cond", onnx.TensorProto.BOOL, [], [True]))
    proto.graph.node.append(
        helper.make_node("If", ["cond"], ["unused"], then_branch=branch, else_branch=branch)
    )


def _newer_custom_op(proto: onnx.ModelProto, folder: Path) -> None:
    next(o for o in proto.opset_import if o.domain == "ai.veloxseg").version = 2


def _card(**changes: object) -> Edit:
    def edit(proto: onnx.ModelProto, folder: Path) -> None:
        entry = next(p for p in proto.metadata_props if p.key == CARD_KEY)
        card = json.loads(entry.value)
        card.update(changes)
        entry.value = json.dumps(card)

    return edit


REFUSED: dict[str, tuple[Edit, str]] = {
    "external data with ..": (_dotdot, "lies outside the model's folder"),
    "external data at an absolute path": (_absolute, "lies outside the model's folder"),
    "external data through a symlink out": (_symlink_out, "lies outside the model's folder"),
    "external data through a symlink to a FIFO": (_fifo_out, "lies outside the model's folder"),
    "external data in a subgraph": (_nested_in_subgraph, "lies outside the model's folder"),
    "external data shorter than named": (_missing_bytes, "shorter than the bytes 64..4160"),
    "com.microsoft node": (_foreign_domain, "['com.microsoft']"),
    "com.microsoft node in a subgraph": (_foreign_domain_in_subgraph, "['com.microsoft']"),
    "3 classes, 2 output channels": (
        _card(class_names=["bg", "a", "b"], label_values=[0, 1, 2]),
        "lists 3 classes but the graph outputs",
    ),
    "zero spacing": (_card(spacing=[0.0, 2.0, 3.0]), "spacing must be three positive"),
    "negative spacing": (_card(spacing=[2.0, -2.0, 3.0]), "spacing must be three positive"),
    "NaN spacing": (_card(spacing=[float("nan"), 2.0, 3.0]), "spacing must be three positive"),
    "patch smaller than the graph's": (_card(patch_size=[64, 64, 64]), "but the graph takes"),
    "3 modalities, 2 input channels": (
        _card(modalities=["CT", "PET", "MR"], normalization=[{"scheme": "zscore"}] * 3),
        "but the graph takes",
    ),
    "label value past uint16": (_card(label_values=[0, 70000]), "label values must be"),
    "a newer custom op in the graph": (_newer_custom_op, "upgrade veloxseg"),
    "a newer custom op on the card": (_card(custom_opset=2), "upgrade veloxseg"),
    "another custom op domain on the card": (_card(custom_domain="ai.other"), "not 'ai.veloxseg'"),
    "NaN CT statistics": (
        _card(
            normalization=[
                {"scheme": "ct", "clip_low": 0, "clip_high": 1, "mean": "NaN", "std": 1},
                {"scheme": "zscore"},
            ]
        ),
        "must be finite",
    ),
}


def _write(base: onnx.ModelProto, tmp_path: Path, edit: Edit) -> Path:
    folder = tmp_path / "model"
    folder.mkdir()
    proto = onnx.ModelProto()
    proto.CopyFrom(base)
    edit(proto, folder)
    path = folder / "model.onnx"
    path.write_bytes(proto.SerializeToString())
    return path


def _segment(model: Path, scan: list[Path], output: Path):  # type: ignore[no-untyped-def]
    args = ["segment", "-m", str(model), "-o", str(output), "-q", "--threads", "1"]
    return runner.invoke(app, [*args, *(a for p in scan for a in ("-i", str(p)))])


def _assert_one_line_exit_2(result, phrase: str, output: Path) -> None:  # type: ignore[no-untyped-def]
    lines = result.output.strip().splitlines()
    assert result.exit_code == 2, result.output
    assert len(lines) == 1 and lines[0].startswith("error:"), result.output
    assert phrase in lines[0] and "Traceback" not in result.output
    assert not output.exists()


@pytest.mark.parametrize("case", REFUSED)
def test_unsafe_or_inconsistent_model_is_refused_by_engine_and_cli(
    base: onnx.ModelProto, scan: list[Path], tmp_path: Path, case: str
) -> None:
    edit, phrase = REFUSED[case]
    model = _write(base, tmp_path, edit)
    with pytest.raises(ModelFileError) as info:
        Engine.open(model, threads=1)
    assert phrase in str(info.value) and "\n" not in str(info.value)
    output = tmp_path / "seg.nii.gz"
    _assert_one_line_exit_2(_segment(model, scan, output), phrase, output)


@pytest.mark.parametrize("keep", [0.1, 0.5, 0.9, 0.999])
def test_truncated_model_file_is_refused_by_engine_and_cli(
    scan: list[Path], tmp_path: Path, keep: float
) -> None:
    data = bundled_model().read_bytes()
    model = tmp_path / "truncated.onnx"
    model.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(ModelFileError, match=r"not a readable ONNX model|no VeloxSeg model card"):
        Engine.open(model, threads=1)
    output = tmp_path / "seg.nii.gz"
    _assert_one_line_exit_2(_segment(model, scan, output), str(model), output)


def test_external_data_inside_the_folder_is_accepted(base: onnx.ModelProto, tmp_path: Path) -> None:
    model = tmp_path / "model" / "model.onnx"
    model.parent.mkdir()
    onnx.save_model(base, model, save_as_external_data=True, location="weights.bin")
    engine = Engine.open(model, backend="onnxruntime", threads=1)
    reference = Engine.open(bundled_model(), backend="onnxruntime", threads=1)
    batch = np.random.default_rng(0).normal(size=(1, 2, 96, 96, 96)).astype(np.float32)
    np.testing.assert_array_equal(engine.predict_patches(batch), reference.predict_patches(batch))
