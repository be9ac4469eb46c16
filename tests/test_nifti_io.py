"""NIfTI reading, validation and atomic writing, on real files written to tmp_path."""

from __future__ import annotations

import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from veloxseg.runtime import nifti_io
from veloxseg.runtime.errors import InputError
from veloxseg.runtime.nifti_io import load_case, save_labels, save_probabilities
from veloxseg.runtime.output_files import atomic_write_bytes, atomic_writer

AFFINE = np.array(
    [[-0.8, 0.0, 0.0, 90.0], [0.0, -0.9, 0.0, 110.0], [0.0, 0.0, 2.5, -70.0], [0, 0, 0, 1]]
)
SHAPE = (6, 7, 8)


def _oblique() -> np.ndarray:
    a, b = np.deg2rad(20), np.deg2rad(-12)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    affine = np.eye(4)
    affine[:3, :3] = rz @ rx @ np.diag([1.2, 0.7, 3.0])
    affine[:3, 3] = [-12.5, 40.25, 7.0]
    return affine


def write(
    path: Path,
    data: np.ndarray,
    affine: np.ndarray = AFFINE,
    codes: tuple[int, int] = (1, 1),
    dtype: type | None = None,
) -> Path:
    """Save ``data`` with qform/sform codes ``codes`` and return the path."""
    img = nib.Nifti1Image(data, affine)
    img.header.set_qform(affine, code=codes[0])
    img.header.set_sform(affine, code=codes[1])
    if dtype is not None:
        img.header.set_data_dtype(dtype)
    nib.save(img, path)
    return path


def raw_header(path: Path, header: nib.Nifti1Header, data: bytes = b"") -> Path:
    """Write a single-file NIfTI from a hand-made header (for corrupt headers nibabel won't
    produce) followed by ``data``."""
    header["magic"] = b"n+1"
    header["vox_offset"] = 352
    path.write_bytes(header.binaryblock + b"\0" * 4 + data)
    return path


def volume(seed: int = 0, shape: tuple[int, ...] = SHAPE) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


# --- loading -------------------------------------------------------------------------------


def test_load_single_modality(tmp_path: Path) -> None:
    vol = volume()
    data, geo = load_case([write(tmp_path / "ct.nii.gz", vol)], 1)
    assert data.dtype == np.float32 and data.shape == (1, *SHAPE)
    np.testing.assert_array_equal(data[0], vol)
    assert geo.shape == SHAPE
    np.testing.assert_allclose(geo.affine, AFFINE, atol=1e-5)
    np.testing.assert_allclose(geo.spacing, (0.8, 0.9, 2.5), rtol=1e-6)
    assert not geo.affine.flags.writeable
    assert geo.sources == ((tmp_path / "ct.nii.gz").resolve(),)


def test_load_one_file_per_modality_keeps_order(tmp_path: Path) -> None:
    a, b = volume(1), volume(2)
    paths = [write(tmp_path / "a.nii.gz", a), write(tmp_path / "b.nii", b)]
    data, _ = load_case(paths, 2)
    np.testing.assert_array_equal(data, np.stack([a, b]))


def test_load_4d_file_modalities_last(tmp_path: Path) -> None:
    stack = volume(shape=(*SHAPE, 3))
    data, geo = load_case([write(tmp_path / "x.nii.gz", stack)], 3)
    np.testing.assert_array_equal(data, np.moveaxis(stack, -1, 0))
    assert geo.shape == SHAPE


def test_trailing_singleton_axis_is_squeezed(tmp_path: Path) -> None:
    vol = volume(shape=(*SHAPE, 1))
    data, geo = load_case([write(tmp_path / "x.nii.gz", vol)], 1)
    assert data.shape == (1, *SHAPE) and geo.shape == SHAPE


@pytest.mark.parametrize("dtype", [np.int16, np.uint8, np.float64, np.int32])
def test_numeric_types_become_float32(tmp_path: Path, dtype: type) -> None:
    values = np.arange(np.prod(SHAPE)).reshape(SHAPE) % 200
    data, _ = load_case([write(tmp_path / "x.nii.gz", values.astype(dtype))], 1)
    assert data.dtype == np.float32
    np.testing.assert_array_equal(data[0], values)


@pytest.mark.parametrize(
    ("slope", "inter", "scale", "offset"),
    [(2.0, -10.0, 2.0, -10.0), (0.0, 5.0, 1.0, 0.0), (np.nan, 5.0, 1.0, 0.0)],
)
def test_scaling_is_applied_and_zero_or_nan_slope_means_none(
    tmp_path: Path, slope: float, inter: float, scale: float, offset: float
) -> None:
    raw = (np.arange(np.prod(SHAPE)).reshape(SHAPE) % 100).astype(np.int16)
    header = nib.Nifti1Header()
    header.set_data_shape(SHAPE)
    header.set_data_dtype(np.int16)
    header.set_sform(AFFINE, code=1)
    header["scl_slope"], header["scl_inter"] = slope, inter
    path = raw_header(tmp_path / "a.nii", header, raw.tobytes(order="F"))
    data, _ = load_case([path], 1)
    np.testing.assert_array_equal(data[0], raw * scale + offset)


@pytest.mark.parametrize("stacked", [False, True], ids=["3D", "4D"])
def test_volume_read_in_z_slabs_equals_nibabels_scaled_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, stacked: bool
) -> None:
    monkeypatch.setattr(nifti_io, "_SLAB_VOXELS", 3 * SHAPE[0] * SHAPE[1])  # 3 slabs
    monkeypatch.setattr(nifti_io, "_COPY_ROWS", 3)  # each copied in 3 row blocks, one short
    shape = (*SHAPE, 2) if stacked else SHAPE
    raw = (np.arange(np.prod(shape)).reshape(shape) % 1000 - 500).astype(np.int16)
    img = nib.Nifti1Image(raw, AFFINE)
    img.header.set_slope_inter(0.25, -1024.0)
    nib.save(img, tmp_path / "x.nii.gz")
    data, _ = load_case([tmp_path / "x.nii.gz"], 2 if stacked else 1)
    expected = np.asarray(nib.load(tmp_path / "x.nii.gz").dataobj, dtype=np.float32)
    np.testing.assert_array_equal(data, np.moveaxis(expected, -1, 0) if stacked else expected[None])


def test_affines_equal_within_tolerance_are_accepted(tmp_path: Path) -> None:
    nudged = AFFINE.copy()
    nudged[:3, 3] += 5e-4
    nudged[0, 0] *= 1 + 5e-5
    paths = [write(tmp_path / "a.nii.gz", volume()), write(tmp_path / "b.nii.gz", volume(), nudged)]
    data, _ = load_case(paths, 2)
    assert data.shape == (2, *SHAPE)


# --- validation ----------------------------------------------------------------------------


def expect_input_error(match: str, paths: list[Path], n: int, **kwargs: object) -> str:
    with pytest.raises(InputError, match=match) as info:
        load_case(paths, n, **kwargs)  # type: ignore[arg-type]
    message = str(info.value)
    assert "\n" not in message
    return message


def test_missing_file(tmp_path: Path) -> None:
    expect_input_error("does not exist", [tmp_path / "nope.nii.gz"], 1)


def test_directory_is_not_a_file(tmp_path: Path) -> None:
    expect_input_error("not a file", [tmp_path], 1)


def test_truncated_gzip(tmp_path: Path) -> None:
    path = write(tmp_path / "x.nii.gz", volume(shape=(40, 40, 40)))
    path.write_bytes(path.read_bytes()[:-2000])
    with pytest.raises(InputError, match="truncated or corrupt") as info:
        load_case([path], 1)
    assert isinstance(info.value.__cause__, EOFError | OSError)


def test_truncated_uncompressed(tmp_path: Path) -> None:
    path = write(tmp_path / "x.nii", volume())
    path.write_bytes(path.read_bytes()[:-100])
    expect_input_error("truncated or corrupt", [path], 1)


def test_not_a_nifti(tmp_path: Path) -> None:
    path = tmp_path / "notes.nii.gz"
    path.write_text("not an image at all\n" * 20)
    expect_input_error("not a readable NIfTI", [path], 1)


def test_other_image_format_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "brain.mgz"
    nib.save(nib.MGHImage(volume(), np.eye(4)), path)
    expect_input_error("MGHImage, not NIfTI", [path], 1)


def test_wrong_number_of_files_names_modalities(tmp_path: Path) -> None:
    path = write(tmp_path / "a.nii.gz", volume())
    message = expect_input_error(
        "needs 2 modalities", [path, path, path], 2, modality_names=["CT", "PET"]
    )
    assert "(CT, PET)" in message and "got 3" in message


def test_same_file_for_two_modalities_is_refused_naming_both(tmp_path: Path) -> None:
    path = write(tmp_path / "ct.nii.gz", volume())
    with pytest.raises(InputError, match=r"ct.nii.gz is given for both CT and PET"):
        load_case([path, tmp_path / "." / "ct.nii.gz"], 2, modality_names=("CT", "PET"))


def test_3d_file_where_a_4d_stack_is_needed(tmp_path: Path) -> None:
    path = write(tmp_path / "a.nii.gz", volume())
    expect_input_error(r"holds 1 volume\(s\) but the model needs 2", [path], 2)


def test_4d_stack_with_wrong_count(tmp_path: Path) -> None:
    path = write(tmp_path / "a.nii.gz", volume(shape=(*SHAPE, 3)))
    expect_input_error(r"holds 3 volume\(s\) but the model needs 2 modalities", [path], 2)


def test_4d_file_in_per_modality_mode(tmp_path: Path) -> None:
    a = write(tmp_path / "a.nii.gz", volume())
    b = write(tmp_path / "b.nii.gz", volume(shape=(*SHAPE, 2)))
    expect_input_error("is 4D with 2 volumes", [a, b], 2)


def test_shapes_differ(tmp_path: Path) -> None:
    a = write(tmp_path / "a.nii.gz", volume())
    b = write(tmp_path / "b.nii.gz", volume(shape=(6, 7, 9)))
    expect_input_error("share one voxel grid", [a, b], 2)


@pytest.mark.parametrize("what", ["translation", "rotation"])
def test_affines_differ(tmp_path: Path, what: str) -> None:
    other = AFFINE.copy()
    if what == "translation":
        other[1, 3] += 0.01
    else:
        other[0, 1] = 0.01
    a = write(tmp_path / "a.nii.gz", volume())
    b = write(tmp_path / "b.nii.gz", volume(), other)
    expect_input_error("not on the same voxel grid", [a, b], 2)


@pytest.mark.parametrize("shape", [(10, 10), (10, 10, 1), (1, 10, 10), (10, 10, 1, 1)])
def test_2d_images_are_refused(tmp_path: Path, shape: tuple[int, ...]) -> None:
    path = write(tmp_path / "a.nii.gz", np.zeros(shape, np.float32))
    expect_input_error("2D image", [path], 1)


def test_5d_image_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path / "a.nii.gz", np.zeros((*SHAPE, 2, 2), np.float32))
    expect_input_error("5D", [path], 1)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_voxels(tmp_path: Path, bad: float) -> None:
    vol = volume()
    vol[1, 2, 3] = bad
    path = write(tmp_path / "a.nii.gz", vol)
    expect_input_error(r"1 NaN/Inf voxel\(s\)", [path], 1)


def test_non_finite_voxels_in_4d_stack_name_the_volume(tmp_path: Path) -> None:
    stack = volume(shape=(*SHAPE, 2))
    stack[..., 1] = np.nan
    path = write(tmp_path / "a.nii.gz", stack)
    expect_input_error("in volume 1", [path], 2)


@pytest.mark.parametrize("srow_x", [[np.nan, 0, 0, 0], [0, 0, 0, 0], [0, 1, 0, 0]])
def test_degenerate_affine(tmp_path: Path, srow_x: list[float]) -> None:
    header = nib.Nifti1Header()
    header.set_data_shape(SHAPE)
    header.set_data_dtype(np.uint8)
    header.set_sform(np.eye(4), code=1)
    header["srow_x"] = srow_x
    path = raw_header(tmp_path / "a.nii", header, bytes(int(np.prod(SHAPE))))
    expect_input_error("degenerate voxel-to-world affine", [path], 1)


def test_voxel_limit_is_checked_before_reading(tmp_path: Path) -> None:
    header = nib.Nifti1Header()
    header.set_data_shape((2048, 2048, 1024))  # 4.3e9 voxels, and no data follows at all
    header.set_data_dtype(np.uint8)
    path = raw_header(tmp_path / "huge.nii", header)
    expect_input_error("more than the limit", [path], 1)


def test_voxel_limit_is_configurable(tmp_path: Path) -> None:
    path = write(tmp_path / "a.nii.gz", volume())
    expect_input_error("336 voxels", [path], 1, max_voxels=100)


def test_complex_voxels_are_refused(tmp_path: Path) -> None:
    path = write(tmp_path / "a.nii.gz", np.zeros(SHAPE, np.complex64))
    expect_input_error("complex64", [path], 1)


def test_nan_intercept_with_valid_slope_is_refused(tmp_path: Path) -> None:
    header = nib.Nifti1Header()
    header.set_data_shape(SHAPE)
    header.set_data_dtype(np.int16)
    header.set_sform(AFFINE, code=1)
    header["scl_slope"], header["scl_inter"] = 2.0, np.nan
    path = raw_header(tmp_path / "a.nii", header, bytes(2 * int(np.prod(SHAPE))))
    message = expect_input_error("has a corrupt NIfTI header", [path], 1)
    assert "invalid intercept" in message


# --- writing -------------------------------------------------------------------------------


GEOMETRIES = {
    "lps-qform-sform": (AFFINE, (1, 1)),
    "oblique-qform-only": (_oblique(), (1, 0)),
    "oblique-sform-only": (_oblique(), (0, 2)),
    "different-codes": (AFFINE, (2, 4)),
    "no-codes": (np.diag([1.5, 2.0, 2.5, 1.0]), (0, 0)),
}


@pytest.mark.parametrize("name", GEOMETRIES)
def test_saved_labels_sit_on_the_input_grid(tmp_path: Path, name: str) -> None:
    affine, codes = GEOMETRIES[name]
    src = write(tmp_path / "in.nii.gz", volume(), affine, codes)
    _, geo = load_case([src], 1)
    labels = (volume(5) > 0).astype(np.int64) * 3
    out = tmp_path / "seg.nii.gz"
    save_labels(labels, geo, out)

    saved, given = nib.load(out), nib.load(src)
    assert saved.shape == SHAPE and saved.get_data_dtype() == np.uint8
    np.testing.assert_array_equal(np.asanyarray(saved.dataobj), labels)
    np.testing.assert_array_equal(saved.affine, given.affine)
    for field in ("qform_code", "sform_code", "quatern_b", "quatern_c", "quatern_d", "srow_x"):
        np.testing.assert_array_equal(saved.header[field], given.header[field])
    a, b = sitk.ReadImage(str(src)), sitk.ReadImage(str(out))
    assert a.GetSize() == b.GetSize()
    np.testing.assert_allclose(a.GetOrigin(), b.GetOrigin(), atol=1e-9)
    np.testing.assert_allclose(a.GetSpacing(), b.GetSpacing(), atol=1e-9)
    np.testing.assert_allclose(a.GetDirection(), b.GetDirection(), atol=1e-9)


def test_labels_above_255_are_uint16_and_uncompressed_works(tmp_path: Path) -> None:
    _, geo = load_case([write(tmp_path / "in.nii.gz", volume())], 1)
    labels = np.zeros(SHAPE, np.int32)
    labels[0, 0, 0] = 300
    save_labels(labels, geo, tmp_path / "seg.nii")
    saved = nib.load(tmp_path / "seg.nii")
    assert saved.get_data_dtype() == np.uint16
    assert np.asanyarray(saved.dataobj)[0, 0, 0] == 300


def test_labels_from_4d_input_are_3d(tmp_path: Path) -> None:
    _, geo = load_case([write(tmp_path / "in.nii.gz", volume(shape=(*SHAPE, 2)))], 2)
    save_labels(np.ones(SHAPE, np.uint8), geo, tmp_path / "seg.nii.gz")
    assert nib.load(tmp_path / "seg.nii.gz").shape == SHAPE


def test_save_probabilities_classes_last(tmp_path: Path) -> None:
    _, geo = load_case([write(tmp_path / "in.nii.gz", volume())], 1)
    probs = np.random.default_rng(3).random((3, *SHAPE))
    save_probabilities(probs, geo, tmp_path / "probs.nii.gz")
    saved = nib.load(tmp_path / "probs.nii.gz")
    assert saved.shape == (*SHAPE, 3) and saved.get_data_dtype() == np.float32
    np.testing.assert_allclose(saved.get_fdata(), np.moveaxis(probs, 0, -1), rtol=1e-6)
    np.testing.assert_array_equal(saved.affine, nib.load(tmp_path / "in.nii.gz").affine)


@pytest.mark.parametrize("nifti2", [False, True])
def test_outputs_written_in_slabs_are_byte_identical_to_nibabels(
    tmp_path: Path, monkeypatch, nifti2: bool
) -> None:
    image_class = nib.Nifti2Image if nifti2 else nib.Nifti1Image
    source = tmp_path / "in.nii"
    nib.save(image_class(volume(), AFFINE), source)
    _, geo = load_case([source], 1)
    monkeypatch.setattr(nifti_io, "_SLAB_VOXELS", 3 * SHAPE[0] * SHAPE[1])  # 3 slabs a volume
    probs = np.random.default_rng(4).random((3, *SHAPE)).astype(np.float32)[:, ::-1]  # a view
    labels = np.random.default_rng(5).integers(0, 3, SHAPE).astype(np.uint8)
    save_probabilities(probs, geo, tmp_path / "probs.nii")
    save_labels(labels, geo, tmp_path / "seg.nii")
    for name, data in (("probs.nii", np.moveaxis(probs, 0, -1)), ("seg.nii", labels)):
        written = nib.load(tmp_path / name)
        reference = image_class(np.ascontiguousarray(data), None, header=written.header)
        assert (tmp_path / name).read_bytes() == reference.to_bytes()


def test_refuses_to_overwrite_an_input(tmp_path: Path) -> None:
    src = write(tmp_path / "in.nii.gz", volume())
    other = write(tmp_path / "other.nii.gz", volume())
    _, geo = load_case([src], 1)
    labels = np.zeros(SHAPE, np.uint8)
    with pytest.raises(InputError, match="would overwrite input"):
        save_labels(labels, geo, tmp_path / "sub" / ".." / "in.nii.gz")
    linked = tmp_path / "linked.nii.gz"
    linked.hardlink_to(src)  # the same file under another name
    with pytest.raises(InputError, match="would overwrite input"):
        save_labels(labels, geo, linked)
    assert nib.load(other).get_data_dtype() == np.float32
    assert nib.load(src).get_data_dtype() == np.float32


def test_output_extension_is_checked(tmp_path: Path) -> None:
    _, geo = load_case([write(tmp_path / "in.nii.gz", volume())], 1)
    with pytest.raises(InputError, match=r"must end in \.nii\.gz"):
        save_labels(np.zeros(SHAPE, np.uint8), geo, tmp_path / "seg.mha")


# --- atomic writes -------------------------------------------------------------------------


def test_atomic_write_leaves_only_the_file(tmp_path: Path) -> None:
    atomic_write_bytes(tmp_path / "a.json", b"{}")
    atomic_write_bytes(tmp_path / "a.json", b"[1]")
    assert os.listdir(tmp_path) == ["a.json"]
    assert (tmp_path / "a.json").read_bytes() == b"[1]"


def test_failure_midway_leaves_no_file_and_keeps_the_old_one(tmp_path: Path) -> None:
    target = tmp_path / "seg.nii.gz"
    with pytest.raises(RuntimeError), atomic_writer(target) as f:
        f.write(b"half")
        raise RuntimeError("serialiser died")
    assert os.listdir(tmp_path) == []
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_writer(target) as f:
        f.write(b"new")
        raise RuntimeError("serialiser died")
    assert os.listdir(tmp_path) == ["seg.nii.gz"] and target.read_bytes() == b"old"


@pytest.mark.parametrize("letter", ["x", "é"])  # one byte, two bytes in UTF-8
def test_output_names_up_to_the_file_system_limit_are_written(tmp_path: Path, letter: str) -> None:
    name = letter * ((255 - len(".json")) // len(letter.encode())) + ".json"
    atomic_write_bytes(tmp_path / name, b"{}")
    assert os.listdir(tmp_path) == [name] and (tmp_path / name).read_bytes() == b"{}"


def test_failing_serialisation_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, geo = load_case([write(tmp_path / "in.nii.gz", volume())], 1)

    def dies_midway(image: nib.Nifti1Image, stream: object) -> None:
        stream.write(b"half a header")  # type: ignore[attr-defined]
        raise MemoryError("out of memory while writing")

    monkeypatch.setattr(nifti_io, "_write_image", dies_midway)
    with pytest.raises(MemoryError):
        save_labels(np.zeros(SHAPE, np.uint8), geo, tmp_path / "seg.nii.gz")
    assert sorted(os.listdir(tmp_path)) == ["in.nii.gz"]


def test_failing_rename_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _, geo = load_case([write(tmp_path / "in.nii.gz", volume())], 1)

    def refuse(src: object, dst: object) -> None:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(nifti_io.os, "replace", refuse)
    with pytest.raises(InputError, match="cannot write"):
        save_labels(np.zeros(SHAPE, np.uint8), geo, tmp_path / "seg.nii.gz")
    assert sorted(os.listdir(tmp_path)) == ["in.nii.gz"]


def test_missing_output_folder(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="check the folder exists"):
        atomic_write_bytes(tmp_path / "no" / "such" / "dir.json", b"{}")


def test_nifti2_input_gives_nifti2_output(tmp_path: Path) -> None:
    src = tmp_path / "in.nii.gz"
    nib.save(nib.Nifti2Image(volume(), _oblique()), src)
    _, geo = load_case([src], 1)
    save_labels(np.ones(SHAPE, np.uint8), geo, tmp_path / "seg.nii.gz")
    saved = nib.load(tmp_path / "seg.nii.gz")
    assert isinstance(saved, nib.Nifti2Image)
    np.testing.assert_array_equal(saved.affine, nib.load(src).affine)


def test_gzip_stream_damaged_mid_file_is_refused_by_its_crc(tmp_path: Path) -> None:
    from veloxseg.assets import sample_case

    damaged = bytearray(sample_case()[0][1].read_bytes())  # PET; this damage still inflates
    damaged[600000:600100] = bytes(100)
    path = tmp_path / "pet.nii.gz"
    path.write_bytes(bytes(damaged))
    with pytest.raises(InputError, match="truncated or corrupt"):
        load_case([path], 1)


def test_bytes_after_the_gzip_stream_are_ignored_as_gzip_does(tmp_path: Path) -> None:
    path = write(tmp_path / "x.nii.gz", volume())
    path.write_bytes(path.read_bytes() + b"trailing bytes some writers leave")
    data, _ = load_case([path], 1)
    np.testing.assert_array_equal(data[0], volume())


@pytest.mark.parametrize(("sform_code", "zero_axes"), [(0, (2,)), (1, ())])
def test_a_zero_voxel_size_without_an_sform_is_reported(tmp_path, sform_code, zero_axes) -> None:
    from veloxseg.runtime.segment import geometry_warnings

    header = nib.Nifti1Header()
    header.set_data_shape(SHAPE)
    header.set_data_dtype(np.float32)
    header.set_qform(np.diag([2.0, 2.0, 2.0, 1.0]), code=1)
    header.set_sform(np.diag([2.0, 2.0, 2.0, 1.0]), code=sform_code)
    header["pixdim"][3] = 0.0  # nibabel repairs this to 1 when it loads the file
    path = raw_header(tmp_path / "a.nii", header, volume().tobytes(order="F"))
    _, geometry = load_case([path], 1)
    assert geometry.zero_size_axes == zero_axes
    warned = [w for w in geometry_warnings(geometry) if "voxel size 0 along Z" in w]
    assert bool(warned) == bool(zero_axes)
