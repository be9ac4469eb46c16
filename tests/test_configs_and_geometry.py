"""`veloxseg segment` with the BraTS and HECKTOR configs and on odd geometry: BraTS labels and
names however its four contrasts are given, HECKTOR's non-cubic patch on scans thinner and wider
than it, header codes kept for nibabel and SimpleITK, and sizes and voxel types at the edge."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from nibabel.orientations import apply_orientation, axcodes2ornt, inv_ornt_aff, ornt_transform
from scipy import ndimage
from typer.testing import CliRunner

from veloxseg.cli.app import app

runner = CliRunner()
BRATS_LABELS = {"background": 0, "necrotic core": 1, "edema": 2, "enhancing tumor": 4}


def _smooth(shape, n, seed) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.stack([ndimage.gaussian_filter(rng.standard_normal(shape), 2) for _ in range(n)])


def _ct_pet(shape, seed=0) -> np.ndarray:
    ct, pet = _smooth(shape, 2, seed)
    return np.stack([np.round(ct * 3000 - 200), np.abs(pet) * 20]).astype(np.float32)


def _mri(shape, seed=0) -> np.ndarray:
    return (np.abs(_smooth(shape, 4, seed)) * 1000).astype(np.float32)


def _affine(spacing, origin=(-30.0, 20.0, 10.0)) -> np.ndarray:
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = origin
    return affine


def _reoriented(data, affine, codes):
    """The same scan (C, X, Y, Z in RAS order) stored in voxel order ``codes``, e.g. "PIR"."""
    transform = ornt_transform(axcodes2ornt("RAS"), axcodes2ornt(codes))
    moved = np.stack([apply_orientation(channel, transform) for channel in data])
    return np.ascontiguousarray(moved), affine @ inv_ornt_aff(transform, data.shape[1:])


def _save(path, volume, affine, qform=1, sform=1, dtype=None, scaling=None, qform_affine=None):
    img = nib.Nifti1Image(volume if dtype is None else volume.astype(dtype), affine)
    img.set_qform(affine if qform_affine is None else qform_affine, code=qform)
    img.set_sform(affine, code=sform)
    if scaling is not None:
        img.header.set_slope_inter(*scaling)
    nib.save(img, path)
    return path


def _write(folder, name, data, affine, **header) -> list[Path]:
    return [
        _save(folder / f"{name}_{c:04d}.nii.gz", channel, affine, **header)
        for c, channel in enumerate(data)
    ]


def _segment(model, inputs, output, *extra):
    args = ["segment", "-m", str(model), "-o", str(output), "--threads", "2"]
    args += ["--backend", "onnxruntime", "--precision", "fp32"]
    for path in inputs:
        args += ["-i", str(path)]
    return runner.invoke(app, [*args, *extra])


def _labels(path) -> np.ndarray:
    return np.asarray(nib.load(path).dataobj)


def _world_labels(path) -> np.ndarray:
    """Labels in closest-RAS voxel order: equal for one scan stored in any orientation."""
    return np.asarray(nib.as_closest_canonical(nib.load(path)).dataobj)


def _spatial(image: sitk.Image) -> tuple:
    """SimpleITK's size, origin, spacing and 3x3 direction of a 3D or 4D image's first 3 axes."""
    direction = np.reshape(image.GetDirection(), (image.GetDimension(),) * 2)[:3, :3]
    return image.GetSize()[:3], image.GetOrigin()[:3], image.GetSpacing()[:3], direction


def _assert_on_input_grid(source, output):
    """Shape, affine, both codes, and SimpleITK's origin, direction and spacing of the input."""
    image, seg = nib.load(source), nib.load(output)
    assert seg.shape[:3] == image.shape[:3]
    assert np.allclose(seg.affine, image.affine)
    assert np.allclose(seg.get_qform(), image.get_qform())
    for code in ("qform_code", "sform_code"):
        assert seg.header[code] == image.header[code], code
    ours, theirs = _spatial(sitk.ReadImage(str(output))), _spatial(sitk.ReadImage(str(source)))
    assert ours[0] == theirs[0]
    for mine, expected in zip(ours[1:], theirs[1:], strict=True):
        assert np.allclose(mine, expected, atol=1e-5)


@pytest.fixture(scope="module")
def brats(exported):
    return exported("brats2021")


@pytest.fixture(scope="module")
def hecktor(exported):
    return exported("hecktor2022")


@pytest.fixture(scope="module")
def autopet(exported):
    return exported("autopetii")


def test_brats_gives_labels_0_1_2_4_alike_from_four_files_a_4d_file_and_a_folder(brats, tmp_path):
    data, affine = _reoriented(_mri((44, 40, 30), 1), _affine((1.2, 1.0, 1.5)), "PIR")
    files = _write(tmp_path, "case", data, affine)
    stack = _save(tmp_path / "stack.nii.gz", np.moveaxis(data, 0, -1), affine)
    folder = tmp_path / "cases"
    folder.mkdir()
    for path in files:
        shutil.copy(path, folder / path.name)
    assert _segment(brats, files, tmp_path / "files.nii.gz").exit_code == 0
    assert _segment(brats, [stack], tmp_path / "stack_seg.nii.gz").exit_code == 0
    result = _segment(brats, [folder], tmp_path / "out")
    assert result.exit_code == 0, result.output
    labels = _labels(tmp_path / "files.nii.gz")
    assert set(np.unique(labels)) == {0, 1, 2, 4}
    assert np.array_equal(labels, _labels(tmp_path / "stack_seg.nii.gz"))
    assert np.array_equal(labels, _labels(tmp_path / "out" / "case.nii.gz"))
    _assert_on_input_grid(files[0], tmp_path / "files.nii.gz")
    _assert_on_input_grid(stack, tmp_path / "stack_seg.nii.gz")
    sidecar = json.loads((tmp_path / "files.json").read_text())
    assert {name: entry["label"] for name, entry in sidecar["labels"].items()} == BRATS_LABELS
    assert sidecar["labels"]["enhancing tumor"]["voxels"] == int((labels == 4).sum())


def test_sidecar_names_the_label_of_each_probability_volume(brats, tmp_path):
    """Volume k of the probabilities is class k: for BraTS, volume 3 is label 4."""
    files = _write(tmp_path, "case", _mri((40, 36, 24), 2), _affine((1.3, 1.3, 2.0)))
    out = tmp_path / "seg.nii.gz"
    result = _segment(brats, files, out, "--save-probabilities")
    assert result.exit_code == 0, result.output
    entry = json.loads((tmp_path / "seg.json").read_text())["probabilities"]
    assert entry["output"] == str(tmp_path / "seg_probabilities.nii.gz")
    assert entry["labels"] == [0, 1, 2, 4]
    probs = np.asarray(nib.load(entry["output"]).dataobj)
    assert probs.shape == (40, 36, 24, 4)
    assert np.array_equal(np.asarray(entry["labels"])[probs.argmax(-1)], _labels(out))
    plain = _segment(brats, files, tmp_path / "plain.nii.gz")
    assert "probabilities" not in json.loads((tmp_path / "plain.json").read_text())
    assert plain.exit_code == 0


def test_hecktor_patch_on_a_scan_wider_and_thinner_than_it_gives_one_result_in_any_orientation(
    hecktor, tmp_path
):
    """Patch 128 x 128 x 64 over a RAS scan 150 wide and 24 deep (after resampling to 1 mm):
    windows along X, padding along Z, and the same labels from LPS, PIR and oblique files."""
    data, affine = _ct_pet((100, 50, 12), 3), _affine((1.5, 1.2, 2.0))
    angle = np.deg2rad(30)
    rotation = np.eye(4)
    rotation[:2, :2] = [[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]
    variants = {
        "RAS": (data, affine),
        "LPS": _reoriented(data, affine, "LPS"),
        "PIR": _reoriented(data, affine, "PIR"),
        "oblique": (data, rotation @ affine),
    }
    world = {}
    for name, (array, grid) in variants.items():
        files = _write(tmp_path, name, array, grid)
        out = tmp_path / f"{name}_seg.nii.gz"
        result = _segment(hecktor, files, out, "--blend", "gaussian", "--overlap", "0.5")
        assert result.exit_code == 0, (name, result.output)
        _assert_on_input_grid(files[0], out)
        world[name] = _world_labels(out)
    assert set(np.unique(world["RAS"])) == {0, 1}
    for name in ("LPS", "PIR", "oblique"):
        assert np.array_equal(world[name], world["RAS"]), name


def _rotated(degrees) -> np.ndarray:
    angle = np.deg2rad(degrees)
    rotation = np.eye(4)
    rotation[1:3, 1:3] = [[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]
    return rotation


@pytest.mark.parametrize(
    "header",
    [
        {"qform": 0, "sform": 1},
        {"qform": 1, "sform": 0},
        {"qform": 2, "sform": 4},
        {"qform": 1, "sform": 1, "tilt": 10.0},
    ],
    ids=["sform only", "qform only", "scanner and MNI codes", "qform and sform disagree"],
)
@pytest.mark.parametrize("codes", ["LAS", "PIR"])  # LAS: a negative determinant (qfac -1)
def test_header_codes_and_orientation_are_kept_for_nibabel_and_simpleitk(
    autopet, tmp_path, header, codes
):
    """The engine places voxels by the sform where both are set, as nibabel does; outputs copy
    both forms, so each tool places the labels where it places the scan."""
    data, affine = _reoriented(_ct_pet((36, 30, 20), 4), _affine((2.0, 2.0, 3.0)), codes)
    if "tilt" in header:
        header = {"qform": 1, "sform": 1, "qform_affine": _rotated(header["tilt"]) @ affine}
    files = _write(tmp_path, "case", data, affine, **header)
    out = tmp_path / "seg.nii.gz"
    result = _segment(autopet, files, out, "--save-probabilities")
    assert result.exit_code == 0, result.output
    _assert_on_input_grid(files[0], out)
    _assert_on_input_grid(files[0], tmp_path / "seg_probabilities.nii.gz")
    assert "orientation is unknown" not in result.output


def test_header_without_any_orientation_code_warns_that_orientation_is_unknown(autopet, tmp_path):
    scan, affine = _ct_pet((36, 30, 20), 5), _affine((2.0, 2.0, 3.0))
    files = _write(tmp_path, "case", scan, affine, qform=0, sform=0)
    out = tmp_path / "seg.nii.gz"
    result = _segment(autopet, files, out)
    assert result.exit_code == 0, result.output
    assert "orientation is unknown" in result.output
    assert any("LAS" in w for w in json.loads((tmp_path / "seg.json").read_text())["warnings"])
    _assert_on_input_grid(files[0], out)


def test_qform_and_sform_that_disagree_warn_which_one_was_used(autopet, tmp_path):
    scan, affine = _ct_pet((36, 30, 20), 7), _affine((2.0, 2.0, 3.0))
    shifted = affine.copy()
    shifted[:3, 3] += 5.0  # the qform puts the scan 5 mm away from where the sform does
    agree = _write(tmp_path, "agree", scan, affine)
    apart = _write(tmp_path, "apart", scan, affine, qform_affine=shifted)
    assert _segment(autopet, agree, tmp_path / "agree.nii.gz").exit_code == 0
    assert _segment(autopet, apart, tmp_path / "apart.nii.gz").exit_code == 0
    assert json.loads((tmp_path / "agree.json").read_text())["warnings"] == []
    warnings = json.loads((tmp_path / "apart.json").read_text())["warnings"]
    said = "qform and sform disagree (by up to 5 mm); the sform was used"
    assert any(said in w for w in warnings)


@pytest.mark.parametrize(
    ("shape", "spacing"),
    [((20, 20, 10), (2.0, 2.0, 3.0)), ((40, 36, 2), (1.0, 1.0, 1.0)), ((60, 60, 4), (0.5, 0.5, 6))],
    ids=["smaller than the patch", "two slices", "0.5 x 0.5 x 6 mm"],
)
def test_small_thin_and_anisotropic_scans_are_segmented_on_their_own_grid(
    hecktor, tmp_path, shape, spacing
):
    files = _write(tmp_path, "case", _ct_pet(shape, 6), _affine(spacing))
    out = tmp_path / "seg.nii.gz"
    result = _segment(hecktor, files, out, "--tta")
    assert result.exit_code == 0, result.output
    _assert_on_input_grid(files[0], out)


def test_single_slice_scan_is_refused_as_2d_in_one_line(hecktor, tmp_path):
    files = _write(tmp_path, "case", _ct_pet((40, 40, 1), 7), _affine((1.0, 1.0, 1.0)))
    result = _segment(hecktor, files, tmp_path / "seg.nii.gz")
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "2D" in lines[0]
    assert not list(tmp_path.glob("seg*"))


def test_integer_and_float64_voxels_and_pet_units_give_the_float32_labels(autopet, tmp_path):
    """CT as int16 with scl_inter -1024, PET in Bq/ml (z-scored: the unit cancels), float64."""
    data, affine = _ct_pet((40, 36, 24), 8), _affine((2.0, 2.0, 3.0))
    ct, pet = _write(tmp_path, "float", data, affine)
    assert _segment(autopet, [ct, pet], tmp_path / "float32.nii.gz").exit_code == 0
    stored = data[0] + 1024  # integers: int16 holds them exactly
    int_ct = _save(tmp_path / "int_ct.nii.gz", stored, affine, dtype=np.int16, scaling=(1, -1024))
    bq_pet = _save(tmp_path / "bq_pet.nii.gz", data[1] * 4096, affine)
    f64 = [
        _save(tmp_path / f"f64_{c}.nii.gz", v, affine, dtype=np.float64) for c, v in enumerate(data)
    ]
    expected = _labels(tmp_path / "float32.nii.gz")
    assert len(np.unique(expected)) == 2
    for name, inputs in (("int16", [int_ct, pet]), ("bq", [ct, bq_pet]), ("float64", f64)):
        result = _segment(autopet, inputs, tmp_path / f"{name}.nii.gz")
        assert result.exit_code == 0, (name, result.output)
        assert np.array_equal(_labels(tmp_path / f"{name}.nii.gz"), expected), name
