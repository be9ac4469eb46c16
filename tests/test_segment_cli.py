"""`veloxseg segment` end to end on real NIfTI files: headers and orientation preserved, bad
input rejected in one line with exit code 2 and no output, folder mode skips, resumes and
survives failing cases."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage
from typer.testing import CliRunner

from veloxseg.cli.app import app

SPACING = (2.03642, 2.03642, 3.0)
runner = CliRunner()


def _scan(shape=(60, 50, 40), seed=0) -> np.ndarray:
    """Smooth random CT-like and PET-like channels (C, X, Y, Z)."""
    rng = np.random.default_rng(seed)
    ct = ndimage.gaussian_filter(rng.standard_normal(shape), 3) * 3000 - 200
    pet = np.abs(ndimage.gaussian_filter(rng.standard_normal(shape), 2)) * 20
    return np.stack([ct, pet]).astype(np.float32)


def _ras_affine(shape) -> np.ndarray:
    affine = np.diag([*SPACING, 1.0])
    affine[:3, 3] = -np.array(SPACING) * np.array(shape) / 2
    return affine


def _write(folder, name, data, affine) -> list:
    paths = []
    for c, channel in enumerate(data):
        img = nib.Nifti1Image(channel, affine)
        img.set_qform(affine, code=1)
        img.set_sform(affine, code=1)
        path = folder / f"{name}_{c:04d}.nii.gz"
        nib.save(img, path)
        paths.append(path)
    return paths


def _segment(model, inputs, output, *extra):
    args = ["segment", "-m", str(model), "-o", str(output), "--threads", "2", "-q"]
    for path in inputs:
        args += ["-i", str(path)]
    return runner.invoke(app, [*args, *extra])


def _variants(data):
    """The same scan stored four ways: (name, data, affine)."""
    shape = data.shape[1:]
    ras = _ras_affine(shape)
    flip = np.diag([-1.0, -1.0, 1.0, 1.0])
    flip[0, 3], flip[1, 3] = shape[0] - 1, shape[1] - 1
    perm = np.zeros((4, 4))
    perm[[0, 1, 2, 3], [1, 2, 0, 3]] = 1  # file axes (z, x, y) -> RAS voxel axes
    angle = np.deg2rad(8)
    rot = np.eye(4)
    rot[:2, :2] = [[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]
    return [
        ("RAS", data, ras),
        ("LPS", data[:, ::-1, ::-1, :].copy(), ras @ flip),
        ("ZXY", data.transpose(0, 3, 1, 2).copy(), ras @ perm),
        ("oblique", data, rot @ ras),
    ]


@pytest.fixture(scope="module")
def model(exported):
    return exported("autopetii")


def test_same_scan_in_any_orientation_segments_to_same_world_labels(model, tmp_path):
    data = _scan()
    canonical = {}
    for name, array, affine in _variants(data):
        inputs = _write(tmp_path, name, array, affine)
        out = tmp_path / f"{name}_seg.nii.gz"
        result = _segment(model, inputs, out)
        assert result.exit_code == 0, result.output
        seg = nib.load(out)
        assert seg.shape == array.shape[1:]
        assert np.allclose(seg.affine, affine)
        assert seg.header["qform_code"] == 1 and seg.header["sform_code"] == 1
        assert seg.get_data_dtype() == np.uint8
        image, label = sitk.ReadImage(str(inputs[0])), sitk.ReadImage(str(out))
        assert np.allclose(image.GetOrigin(), label.GetOrigin(), atol=1e-4)
        assert np.allclose(image.GetDirection(), label.GetDirection(), atol=1e-6)
        assert np.allclose(image.GetSpacing(), label.GetSpacing(), atol=1e-6)
        canonical[name] = np.asarray(nib.as_closest_canonical(seg).dataobj)
    for name in ("LPS", "ZXY", "oblique"):
        assert np.array_equal(canonical[name], canonical["RAS"]), name
    sidecar = json.loads((tmp_path / "RAS_seg.json").read_text())
    assert set(sidecar["labels"]) == {"background", "lesion"}
    assert {"load", "preprocess", "inference", "postprocess", "save"} <= set(sidecar["timings_s"])
    assert len(sidecar["model_sha256"]) == 64


def test_other_spacing_is_resampled_and_output_keeps_input_grid(model, tmp_path):
    data = _scan((70, 64, 30), seed=1)
    affine = np.diag([1.5, 1.5, 4.0, 1.0])
    inputs = _write(tmp_path, "iso", data, affine)
    out = tmp_path / "iso_seg.nii.gz"
    result = _segment(model, inputs, out, "--save-probabilities", "--preview")
    assert result.exit_code == 0, result.output
    seg = nib.load(out)
    assert seg.shape == (70, 64, 30) and np.allclose(seg.affine, affine)
    probs = nib.load(tmp_path / "iso_seg_probabilities.nii.gz")
    assert probs.shape == (70, 64, 30, 2)
    assert np.allclose(np.asarray(probs.dataobj).sum(-1), 1, atol=1e-4)
    assert (tmp_path / "iso_seg.png").stat().st_size > 1000


def test_single_4d_input_equals_separate_files(model, tmp_path):
    data = _scan(seed=2)
    affine = _ras_affine(data.shape[1:])
    separate = _write(tmp_path, "sep", data, affine)
    nib.save(nib.Nifti1Image(np.moveaxis(data, 0, -1), affine), tmp_path / "stack.nii.gz")
    assert _segment(model, separate, tmp_path / "a.nii.gz").exit_code == 0
    assert _segment(model, [tmp_path / "stack.nii.gz"], tmp_path / "b.nii.gz").exit_code == 0
    a = np.asarray(nib.load(tmp_path / "a.nii.gz").dataobj)
    assert np.array_equal(a, np.asarray(nib.load(tmp_path / "b.nii.gz").dataobj))


def _bad_inputs(tmp_path):
    data = _scan((40, 40, 30), seed=3)
    affine = _ras_affine(data.shape[1:])
    good = _write(tmp_path, "good", data, affine)
    truncated = tmp_path / "trunc_0000.nii.gz"
    truncated.write_bytes(good[0].read_bytes()[: good[0].stat().st_size // 2])
    text = tmp_path / "text.nii.gz"
    text.write_bytes(gzip.compress(b"hello, not a nifti"))
    other_shape = _write(tmp_path, "shape", _scan((40, 40, 31)), affine)
    shifted = affine.copy()
    shifted[0, 3] += 5
    moved = _write(tmp_path, "moved", data, shifted)
    flat = tmp_path / "flat.nii.gz"
    nib.save(nib.Nifti1Image(data[0, :, :, 0], np.eye(4)), flat)
    five = tmp_path / "five.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((40, 40, 30, 1, 2), np.float32), affine), five)
    nan = data.copy()
    nan[0, 3, 3, 3] = np.nan
    nans = _write(tmp_path, "nan", nan, affine)
    return {
        "missing": ([tmp_path / "nope_0000.nii.gz", good[1]], "does not exist"),
        "truncated gzip": ([truncated, good[1]], "truncated"),
        "not nifti": ([text, good[1]], "NIfTI"),
        "one modality": ([good[0]], "2 modalities"),
        "shapes differ": ([other_shape[0], good[1]], "shape"),
        "affines differ": ([moved[0], good[1]], "affine"),
        "2D": ([flat, flat], "2D"),
        "5D": ([five], "5D"),
        "NaN": ([nans[0], nans[1]], "NaN"),
    }


def test_each_bad_input_gets_one_line_exit_2_and_no_output(model, tmp_path):
    for case, (inputs, phrase) in _bad_inputs(tmp_path).items():
        out = tmp_path / "out" / f"{case.replace(' ', '_')}.nii.gz"
        result = _segment(model, inputs, out)
        assert result.exit_code == 2, (case, result.output)
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error:"), (case, result.output)
        assert phrase.lower() in lines[0].lower(), (case, lines[0])
        assert "Traceback" not in result.output
        assert not out.exists() and not (out.parent / (out.name[:-7] + ".json")).exists()


def test_bad_model_files_get_one_line_exit_2(tmp_path):
    inputs = _write(tmp_path, "ok", _scan((40, 40, 30)), _ras_affine((40, 40, 30)))
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(np.random.default_rng(0).bytes(5000))
    import onnx
    from onnx import helper

    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])], "other",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])],
    )  # fmt: skip
    other = tmp_path / "other.onnx"
    onnx.save(helper.make_model(graph), other)
    cases = ((garbage, "not a readable ONNX"), (other, "no VeloxSeg model card"))
    for model, phrase in (*cases, (tmp_path, "is a folder")):
        result = _segment(model, inputs, tmp_path / "o.nii.gz")
        assert result.exit_code == 2, result.output
        assert phrase in result.output and len(result.output.strip().splitlines()) == 1


def test_output_that_is_an_input_is_refused(model, tmp_path):
    inputs = _write(tmp_path, "self", _scan((40, 40, 30)), _ras_affine((40, 40, 30)))
    before = inputs[0].read_bytes()
    result = _segment(model, inputs, inputs[0], "--overwrite")
    assert result.exit_code == 2
    assert inputs[0].read_bytes() == before


def test_folder_mode_skips_resumes_and_reports_failing_case(model, tmp_path):
    cases = tmp_path / "cases"
    cases.mkdir()
    for i in range(2):
        data = _scan((40, 40, 30), seed=10 + i)
        _write(cases, f"case{i}", data, _ras_affine((40, 40, 30)))
    broken = _write(cases, "broken", _scan((40, 40, 30)), _ras_affine((40, 40, 30)))
    broken[1].write_bytes(broken[1].read_bytes()[:100])
    out = tmp_path / "out"
    args = ["segment", "-i", str(cases), "-o", str(out), "-m", str(model), "--threads", "2"]

    first = runner.invoke(app, args)
    assert first.exit_code == 1
    assert "done 2, skipped 0, failed 1" in first.output and "broken" in first.output
    assert sorted(p.name for p in out.glob("*.nii.gz")) == ["case0.nii.gz", "case1.nii.gz"]
    stamp = (out / "case0.nii.gz").stat().st_mtime_ns

    (out / "case1.json").unlink()  # as if killed after the labels but before the sidecar
    second = runner.invoke(app, args)
    assert "done 1, skipped 1, failed 1" in second.output
    assert (out / "case0.nii.gz").stat().st_mtime_ns == stamp
    assert (out / "case1.json").exists()
    assert not list(out.glob(".*tmp*"))

    quiet = runner.invoke(app, [*args, "-q"])  # the failure only, on one line
    assert quiet.exit_code == 1
    lines = quiet.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("failed broken: "), quiet.output


@pytest.mark.slow
def test_four_class_model_labels_from_margins_match_its_logits_on_a_resampled_scan(
    exported, tmp_path
):
    """BraTS: 4 modalities, classes written as 0, 1, 2, 4. The scan's spacing differs from the
    model's, so labels come from blended margins resampled to the input grid (3 channels)."""
    import onnx

    from veloxseg.runtime.model_file import graph_for_output, open_model_file

    model = exported("brats2021")
    logits_only = tmp_path / "logits_only.onnx"
    onnx.save(graph_for_output(open_model_file(model), "logits"), logits_only)
    rng = np.random.default_rng(11)
    data = np.stack(
        [ndimage.gaussian_filter(rng.standard_normal((70, 60, 36)), 2) for _ in range(4)]
    )
    affine = np.diag([0.8, 0.8, 1.9, 1.0])  # the model's spacing is 1 mm
    inputs = _write(tmp_path, "case", data.astype(np.float32), affine)
    outputs = {}
    for name, path in (("margins", model), ("logits", logits_only)):
        out = tmp_path / f"{name}.nii.gz"
        result = _segment(path, inputs, out, "--backend", "onnxruntime", "--precision", "fp32")
        assert result.exit_code == 0, result.output
        outputs[name] = np.asarray(nib.load(out).dataobj)
    assert outputs["margins"].shape == data.shape[1:]
    assert set(np.unique(outputs["margins"])) <= {0, 1, 2, 4}
    assert len(np.unique(outputs["logits"])) > 1
    # Same sums in another order: only voxels at a near-tie between two classes may differ.
    assert (outputs["margins"] == outputs["logits"]).mean() > 0.999


def test_missing_output_folder_is_created(model, tmp_path):
    inputs = _write(tmp_path, "new", _scan((40, 40, 30)), _ras_affine((40, 40, 30)))
    out = tmp_path / "not" / "yet" / "seg.nii.gz"
    assert _segment(model, inputs, out).exit_code == 0 and out.exists()


def test_existing_sidecar_is_not_replaced_without_overwrite(model, tmp_path):
    inputs = _write(tmp_path, "side", _scan((40, 40, 30)), _ras_affine((40, 40, 30)))
    sidecar = tmp_path / "seg.json"
    sidecar.write_text('{"from": "dcm2niix"}')
    result = _segment(model, inputs, tmp_path / "seg.nii.gz")
    assert result.exit_code == 2 and "seg.json exists" in result.output
    assert sidecar.read_text() == '{"from": "dcm2niix"}'
    assert not (tmp_path / "seg.nii.gz").exists()


def test_folder_of_cases_refuses_an_output_that_names_a_file(model, tmp_path):
    cases = tmp_path / "cases"
    cases.mkdir()
    _write(cases, "case0", _scan((40, 40, 30)), _ras_affine((40, 40, 30)))
    existing = tmp_path / "existing.txt"
    existing.write_text("keep")
    for out in (tmp_path / "seg.nii.gz", existing):
        result = runner.invoke(app, ["segment", "-i", str(cases), "-o", str(out), "-m", str(model)])
        assert result.exit_code == 2 and "names a file" in result.output, result.output
    assert not (tmp_path / "seg.nii.gz").exists() and existing.read_text() == "keep"


def test_model_that_outputs_nan_is_refused_without_output(model, tmp_path):
    import onnx
    from onnx import numpy_helper

    proto = onnx.load(model)
    name = "encoder.encoder_conv.down1.down.weight"  # the first conv: every output depends on it
    first = next(t for t in proto.graph.initializer if t.name == name)
    weights = numpy_helper.to_array(first).copy()
    weights.flat[0] = np.nan
    first.CopyFrom(numpy_helper.from_array(weights, name))
    broken = tmp_path / "nan.onnx"
    onnx.save(proto, broken)
    inputs = _write(tmp_path, "n", _scan((40, 40, 30)), _ras_affine((40, 40, 30)))
    result = _segment(broken, inputs, tmp_path / "seg.nii.gz", "--backend", "onnxruntime")
    assert result.exit_code == 2 and "NaN or infinite" in result.output, result.output
    assert len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "seg.nii.gz").exists()


def test_unreachable_ray_address_fails_in_seconds_without_output(model, tmp_path):
    pytest.importorskip("ray")
    import time

    cases = tmp_path / "cases"
    cases.mkdir()
    _write(cases, "case0", _scan((40, 40, 30)), _ras_affine((40, 40, 30)))
    out = tmp_path / "out"
    start = time.perf_counter()
    args = ["segment", "-i", str(cases), "-o", str(out), "-m", str(model), "-q"]
    result = runner.invoke(app, [*args, "--ray-address", "127.0.0.1:1"])
    assert result.exit_code == 2 and "cannot reach the Ray cluster" in result.output
    assert time.perf_counter() - start < 30 and not out.exists()


def test_folder_finds_upper_case_names_and_fails_a_case_with_two_files_per_channel(model, tmp_path):
    cases = tmp_path / "cases"
    cases.mkdir()
    for path in _write(cases, "upper", _scan((40, 40, 30)), _ras_affine((40, 40, 30))):
        path.rename(path.with_name(path.name.upper()))
    doubled = _write(cases, "twice", _scan((40, 40, 30)), _ras_affine((40, 40, 30)))
    nib.save(nib.load(doubled[0]), cases / "twice_0000.nii")
    out = tmp_path / "out"
    result = runner.invoke(app, ["segment", "-i", str(cases), "-o", str(out), "-m", str(model)])
    assert result.exit_code == 1 and "done 1, skipped 0, failed 1" in result.output
    assert "two files for channel 0000" in result.output
    assert (out / "UPPER.nii.gz").exists() and not (out / "twice.nii.gz").exists()


def test_preview_is_the_same_picture_in_every_orientation(tmp_path):
    from veloxseg.runtime.nifti_io import ImageGeometry
    from veloxseg.runtime.preview import write_preview

    data = _scan((40, 36, 30))
    data[1] = ndimage.gaussian_filter(data[1], 2) > 1.5  # a "label" that is not symmetric
    pictures = set()
    for name, variant, affine in _variants(data):
        geometry = ImageGeometry(variant.shape[1:], affine, nib.Nifti1Header())
        write_preview(variant[1].astype(np.uint8), variant[0], geometry, tmp_path / f"{name}.png")
        pictures.add((tmp_path / f"{name}.png").read_bytes())
    assert len(pictures) == 1


def test_probabilities_take_the_suffix_of_the_labels(model, tmp_path):
    inputs = _write(tmp_path, "sfx", _scan((40, 40, 30)), _ras_affine((40, 40, 30)))
    assert _segment(model, inputs, tmp_path / "seg.nii", "--save-probabilities").exit_code == 0
    raw = (tmp_path / "seg_probabilities.nii").read_bytes()
    assert raw[:2] != b"\x1f\x8b" and nib.load(tmp_path / "seg_probabilities.nii").shape[-1] == 2


def test_preview_samples_only_scans_too_large_to_keep_a_copy_of():
    from veloxseg.runtime.preview import preview_stride

    assert preview_stride((128, 128, 96)) == 1 and preview_stride((320, 320, 320)) == 1
    whole_body = (512, 512, 1000)
    stride = preview_stride(whole_body)
    assert stride == 2 and np.prod([-(-n // stride) for n in whole_body]) <= 1 << 25


@pytest.mark.parametrize("spacing", [SPACING, (1.5, 1.5, 4.0)], ids=["model-grid", "resampled"])
def test_saving_probabilities_adds_a_file_without_changing_the_labels(model, tmp_path, spacing):
    data = _scan((70, 64, 30), seed=4)
    inputs = _write(tmp_path, "case", data, np.diag([*spacing, 1.0]))
    labels = {}
    for flag in ("", "--save-probabilities"):
        out = tmp_path / f"seg{flag}.nii.gz"
        extra = ("--backend", "openvino", "--precision", "bf16", *([flag] if flag else []))
        assert _segment(model, inputs, out, *extra).exit_code == 0
        labels[flag] = np.asarray(nib.load(out).dataobj)
    assert np.array_equal(labels[""], labels["--save-probabilities"])
    probs = np.asarray(nib.load(tmp_path / "seg--save-probabilities_probabilities.nii.gz").dataobj)
    assert np.array_equal(probs.argmax(-1), labels[""])


def test_header_in_metres_is_read_in_mm_as_itk_does(model, tmp_path):
    data = _scan(seed=5)
    affine = _ras_affine(data.shape[1:])
    in_mm = _write(tmp_path, "mm", data, affine)
    in_m = []
    for c, channel in enumerate(data):
        img = nib.Nifti1Image(channel, affine * np.array([[1e-3], [1e-3], [1e-3], [1]]))
        img.header.set_xyzt_units(xyz="meter")
        in_m.append(tmp_path / f"m_{c:04d}.nii.gz")
        nib.save(img, in_m[-1])
    assert sitk.ReadImage(str(in_m[0])).GetSpacing() == pytest.approx(SPACING)
    assert _segment(model, in_mm, tmp_path / "mm.nii.gz").exit_code == 0
    assert _segment(model, in_m, tmp_path / "m.nii.gz").exit_code == 0
    seg_m = nib.load(tmp_path / "m.nii.gz")
    assert np.array_equal(seg_m.affine, nib.load(in_m[0]).affine)  # the header, untouched
    assert seg_m.header.get_xyzt_units()[0] == "meter"
    assert np.array_equal(
        np.asarray(seg_m.dataobj), np.asarray(nib.load(tmp_path / "mm.nii.gz").dataobj)
    )
    sidecar = json.loads((tmp_path / "m.json").read_text())
    assert sidecar["spacing_mm"] == pytest.approx(SPACING)


def test_scan_smaller_than_one_model_voxel_warns_to_check_its_voxel_sizes(model, tmp_path):
    data = _scan(shape=(40, 40, 30), seed=6)
    microns_as_mm = np.diag([0.001, 0.001, 0.001, 1.0])  # a units slip: 4 cm read as 40 um
    inputs = _write(tmp_path, "tiny", data, microns_as_mm)
    assert _segment(model, inputs, tmp_path / "tiny.nii.gz").exit_code == 0
    warnings = json.loads((tmp_path / "tiny.json").read_text())["warnings"]
    assert any("less than one model voxel" in w and "pixdim" in w for w in warnings)
    assert _segment(model, _write(tmp_path, "ok", data, _ras_affine((40, 40, 30))),
                    tmp_path / "ok.nii.gz").exit_code == 0  # fmt: skip
    assert json.loads((tmp_path / "ok.json").read_text())["warnings"] == []


def test_sidecar_volume_uses_the_voxel_volume_of_a_sheared_grid(model, tmp_path):
    data = _scan(seed=6)
    affine = _ras_affine(data.shape[1:])
    affine[0, 1] = 0.5 * SPACING[1]  # a shear: column norms overstate the voxel volume
    inputs = _write(tmp_path, "shear", data, affine)
    assert _segment(model, inputs, tmp_path / "s.nii.gz").exit_code == 0
    sidecar = json.loads((tmp_path / "s.json").read_text())
    voxel_ml = abs(np.linalg.det(affine[:3, :3])) / 1000
    for entry in sidecar["labels"].values():
        assert entry["volume_ml"] == pytest.approx(entry["voxels"] * voxel_ml, abs=1e-3)
    assert all(Path(p).is_absolute() for p in sidecar["inputs"])


def test_piped_help_shows_whole_option_names():
    code = "import sys; from veloxseg.cli.app import main; sys.argv[1:] = ['segment', '--help']"
    code += "; main()"
    env = {k: v for k, v in os.environ.items() if k not in ("TERMINAL_WIDTH", "COLUMNS")}
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert run.returncode == 0
    assert "--save-probabilities" in run.stdout and "…" not in run.stdout


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["segment", "-i", "a.nii.gz", "-o", "b.nii.gz", "--threads", "0"], "--threads"),
        (["segment", "-o", "b.nii.gz"], "Missing option '-i'"),
        (["segmnt"], "Did you mean 'segment'?"),
    ],
)
def test_command_line_mistakes_print_one_error_line_with_the_help_to_run(argv, says):
    code = f"import sys; from veloxseg.cli.app import main; sys.argv[1:] = {argv!r}; main()"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert run.returncode == 2 and run.stdout == ""
    assert run.stderr.startswith("error: ") and run.stderr.count("\n") == 1
    assert says in run.stderr and "--help'" in run.stderr


def test_outputs_appear_together_or_not_at_all(model, tmp_path):
    inputs = _write(tmp_path, "case", _scan(seed=7), _ras_affine((60, 50, 40)))
    (tmp_path / "seg_probabilities.nii.gz").mkdir()  # the probabilities file cannot be written
    result = _segment(model, inputs, tmp_path / "seg.nii.gz", "--save-probabilities", "--overwrite")
    assert result.exit_code == 2, result.output
    left = {p.name for p in tmp_path.iterdir()} - {p.name for p in inputs}
    assert left == {"seg_probabilities.nii.gz"}  # no labels, no sidecar, no temp files


def test_an_input_named_like_an_extra_output_is_refused_before_any_work(model, tmp_path):
    inputs = _write(tmp_path, "case", _scan(seed=8), _ras_affine((60, 50, 40)))
    renamed = inputs[1].rename(tmp_path / "seg_probabilities.nii.gz")
    result = _segment(model, [inputs[0], renamed], tmp_path / "seg.nii.gz", "--save-probabilities",
                      "--overwrite")  # fmt: skip
    assert result.exit_code == 2 and "would overwrite input" in result.output
    assert not (tmp_path / "seg.nii.gz").exists()


def test_existing_folder_as_single_case_output_says_to_name_a_file(model, tmp_path):
    inputs = _write(tmp_path, "case", _scan(seed=9), _ras_affine((60, 50, 40)))
    (tmp_path / "out").mkdir()
    result = _segment(model, inputs, tmp_path / "out")
    assert result.exit_code == 2 and "is a folder; name the file for one case" in result.output


def test_output_name_too_long_for_the_file_system_is_one_line_exit_2(model, tmp_path):
    inputs = _write(tmp_path, "case", _scan(seed=10), _ras_affine((60, 50, 40)))
    result = _segment(model, inputs, tmp_path / ("x" * 300) / "seg.nii.gz")
    assert result.exit_code == 2, result.output
    assert len(result.output.strip().splitlines()) == 1 and "internal error" not in result.output


def test_folder_run_ends_with_seconds_per_stage(model, tmp_path):
    cases = tmp_path / "cases"
    cases.mkdir()
    _write(cases, "a", _scan(seed=11), _ras_affine((60, 50, 40)))
    args = ["segment", "-m", str(model), "-i", str(cases), "-o", str(tmp_path / "out")]
    result = runner.invoke(app, [*args, "--threads", "2"])
    assert result.exit_code == 0, result.output
    assert "1 case segmented" in result.output and "inference" in result.output
    assert "done 1, skipped 0, failed 0" in result.output


@pytest.mark.parametrize(
    ("option", "value", "named"),
    [
        ("--overlap", "1.0", "overlap"),
        ("--batch-size", "0", "batch size"),
        ("--blend", "x", "blend"),
    ],
)
def test_bad_window_options_are_refused_before_the_model_loads(tmp_path, option, value, named):
    model = tmp_path / "never_read.onnx"  # not there: an error about it would mean it was opened
    inputs = _write(tmp_path, "case", _scan(seed=12), _ras_affine((60, 50, 40)))
    result = _segment(model, inputs, tmp_path / "seg.nii.gz", option, value)
    assert result.exit_code == 2 and f"error: {named} must be" in result.output


@pytest.mark.parametrize(
    "bad", [{"overlap": 1.0}, {"overlap": -0.1}, {"batch_size": 0}, {"blend": "tent"}]
)
def test_segment_options_refuse_bad_values_when_made(bad):
    from veloxseg.runtime.segment import SegmentOptions

    with pytest.raises(ValueError, match="must be"):
        SegmentOptions(**bad)


def test_python_api_replaces_existing_outputs_only_when_asked(model, tmp_path):
    from veloxseg.runtime import Engine
    from veloxseg.runtime.errors import InputError
    from veloxseg.runtime.segment import segment_case

    inputs = _write(tmp_path, "api", _scan((40, 40, 30)), _ras_affine((40, 40, 30)))
    out = tmp_path / "seg.nii.gz"
    out.write_bytes(b"an older result")
    engine = Engine.open(model, backend="onnxruntime", precision="fp32", threads=1)
    with pytest.raises(InputError, match="exists; pass --overwrite"):
        segment_case(engine, inputs, out)
    assert out.read_bytes() == b"an older result"
    segment_case(engine, inputs, out, overwrite=True)
    assert nib.load(out).shape == (40, 40, 30)


def test_swapped_modalities_warn_that_ct_is_not_in_hounsfield_units(model, tmp_path):
    ct, pet = _write(tmp_path, "case", _scan(seed=13), _ras_affine((60, 50, 40)))
    for order, name in (([ct, pet], "right"), ([pet, ct], "swapped")):
        args = ["segment", "-m", str(model), "-o", str(tmp_path / f"{name}.nii.gz")]
        result = runner.invoke(app, [*args, "-i", str(order[0]), "-i", str(order[1])])
        assert result.exit_code == 0, result.output
        warned = "is not in Hounsfield units" in result.output
        assert warned == (name == "swapped")
        assert bool(json.loads((tmp_path / f"{name}.json").read_text())["warnings"]) == warned


def test_a_folder_among_several_inputs_and_an_output_without_suffix_are_named(model, tmp_path):
    ct, pet = _write(tmp_path, "mix", _scan((40, 40, 30)), _ras_affine((40, 40, 30)))
    mixed = runner.invoke(app, ["segment", "-i", str(tmp_path), "-i", str(ct), "-o", "x.nii.gz"])
    assert mixed.exit_code == 2 and "pass a folder of cases as the only -i" in mixed.output
    out = tmp_path / "results"  # typed as `-o results/`, meaning a folder
    bare = _segment(model, [ct, pet], out)
    assert bare.exit_code == 2 and "has no .nii.gz suffix: name the file" in bare.output
    assert not out.exists()
