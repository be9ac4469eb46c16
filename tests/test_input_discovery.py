"""What `veloxseg segment` makes of the files a user hands it: other formats and misnamed files
are named with the fix, in one line and exit code 2; folder runs skip hidden files and say what
they found when no case matches the nnU-Net naming. Real files, real CLI, the bundled model."""

from __future__ import annotations

import gzip
import os
import shutil
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from typer.testing import CliRunner

from veloxseg.cli.app import app
from veloxseg.runtime.cases import find_cases, ignored_note

SHAPE = (40, 40, 30)
runner = CliRunner()


def _volume(seed: int) -> np.ndarray:
    """CT-like values with air below zero, so that no HU warning adds a line."""
    return np.random.default_rng(seed).normal(0, 300, SHAPE).astype(np.float32)


def _nifti(path: Path, data: np.ndarray | None = None, seed: int = 0) -> Path:
    affine = np.diag([2.0, 2.0, 3.0, 1.0])
    nib.save(nib.Nifti1Image(_volume(seed) if data is None else data, affine), path)
    return path


def _case(folder: Path, name: str) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    return [_nifti(folder / f"{name}_{c:04d}.nii.gz", seed=c) for c in range(2)]


def _dicom(path: Path) -> Path:
    """A file that DICOM readers recognise: 128-byte preamble, then ``DICM``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\0" * 128 + b"DICM" + b"\2\0\1\0" * 16)
    return path


def _segment(inputs: list[Path], output: Path, *extra: str):
    args = ["segment", "-o", str(output), "--threads", "1", "-q", *extra]
    for path in inputs:
        args += ["-i", str(path)]
    return runner.invoke(app, args)


def _one_error_line(result, says: str) -> str:
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), result.output
    assert says in lines[0], lines[0]
    return lines[0]


def test_dicom_series_folder_says_to_convert_with_dcm2niix(tmp_path):
    series = tmp_path / "series"
    for i in range(3):
        _dicom(series / f"IM{i:04d}")  # no suffix, as scanners export them
    study = tmp_path / "study"
    _dicom(study / "CT" / "1.dcm")
    pet = _nifti(tmp_path / "pet.nii.gz")
    for inputs in ([series], [study], [series, pet]):
        _one_error_line(_segment(inputs, tmp_path / "seg.nii.gz"), "dcm2niix")
    assert not (tmp_path / "seg.nii.gz").exists()


def _misnamed_and_other_formats(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    plain = _nifti(tmp_path / "plain.nii")
    fake_gz = tmp_path / "ct.nii.gz"
    shutil.copy(plain, fake_gz)
    gz_nii = tmp_path / "gz.nii"
    gz_nii.write_bytes(gzip.compress(plain.read_bytes()))
    archive = tmp_path / "case.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.write(plain, "ct.nii")
    nrrd = tmp_path / "ct.nrrd"
    nrrd.write_bytes(b"NRRD0004\ntype: short\ndimension: 3\nsizes: 40 40 30\n\n")
    mha = tmp_path / "ct.mha"
    mha.write_bytes(b"ObjectType = Image\nNDims = 3\nElementDataFile = LOCAL\n")
    empty = tmp_path / "empty.nii.gz"
    empty.touch()
    return {
        "uncompressed .nii.gz": (fake_gz, "rename it to ct.nii"),
        "gzipped .nii": (gz_nii, "rename it to gz.nii.gz"),
        "zip": (archive, "zip archive"),
        "nrrd": (nrrd, "NRRD"),
        "mha": (mha, "MetaImage"),
        "empty": (empty, "empty"),
        "dicom file": (_dicom(tmp_path / "IM0001.dcm"), "dcm2niix"),
    }


def test_other_formats_and_misnamed_files_are_named_with_the_fix(tmp_path):
    pet = _nifti(tmp_path / "pet.nii.gz", seed=1)
    for case, (path, says) in _misnamed_and_other_formats(tmp_path).items():
        out = tmp_path / f"{case.replace(' ', '_')}_seg.nii.gz"
        line = _one_error_line(_segment([path, pet], out), says)
        assert "not a readable NIfTI" in line, (case, line)
        assert not out.exists(), case


def test_broken_link_input_names_the_missing_target(tmp_path):
    link = tmp_path / "ct.nii.gz"
    link.symlink_to(tmp_path / "gone.nii.gz")
    pet = _nifti(tmp_path / "pet.nii.gz")
    _one_error_line(_segment([link, pet], tmp_path / "seg.nii.gz"), "gone.nii.gz")


def test_folder_among_several_inputs_says_a_folder_goes_alone(tmp_path):
    (tmp_path / "cases").mkdir()
    pet = _nifti(tmp_path / "pet.nii.gz")
    result = _segment([tmp_path / "cases", pet], tmp_path / "seg.nii.gz")
    _one_error_line(result, "pass a folder of cases as the only -i")


def test_nifti_pair_without_its_img_names_the_img(tmp_path):
    pair = tmp_path / "ct.hdr"
    nib.save(nib.Nifti1Pair(_volume(0), np.diag([2.0, 2.0, 3.0, 1.0])), pair)
    (tmp_path / "ct.img").unlink()
    pet = _nifti(tmp_path / "pet.nii.gz")
    _one_error_line(_segment([pair, pet], tmp_path / "seg.nii.gz"), "ct.img")


def test_5d_vector_image_says_which_4d_shape_to_save(tmp_path):
    five = _nifti(tmp_path / "five.nii.gz", np.stack([_volume(0), _volume(1)], -1)[..., None, :])
    _one_error_line(_segment([five], tmp_path / "seg.nii.gz"), "save it as (40, 40, 30, 2)")


def test_folder_run_skips_hidden_and_macos_resource_fork_files(tmp_path):
    cases = tmp_path / "cases"
    _case(cases, "a")
    for junk in ("._a_0000.nii.gz", "._a_0001.nii.gz", ".DS_Store", ".b_0000.nii.gz"):
        (cases / junk).write_bytes(b"\0\5\26\7 Mac OS X resource fork")
    result = _segment([cases], tmp_path / "out")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.json", "a.nii.gz"]


def test_folder_case_with_a_broken_link_or_a_folder_fails_saying_so(tmp_path):
    cases = tmp_path / "cases"
    _case(cases, "a")[1].unlink()
    (cases / "a_0001.nii.gz").symlink_to(tmp_path / "gone.nii.gz")
    _case(cases, "b")[0].unlink()
    (cases / "b_0000.nii.gz").mkdir()
    problems = {case.case_id: case.problem for case in find_cases(cases, 2)}
    assert problems == {
        "a": "a_0001.nii.gz is a link to nothing; replace it with the image",
        "b": "b_0000.nii.gz is not a file; replace it with the image",
    }


def test_missing_channel_names_its_file_and_the_look_alike_beside_it(tmp_path):
    cases = tmp_path / "cases"
    _case(cases, "a")[1].rename(cases / "a_0001.nrrd")
    _case(cases, "b")
    _nifti(cases / "b_0002.nii.gz")
    problems = {case.case_id: case.problem for case in find_cases(cases, 2)}
    assert problems["a"] == (
        "expected channels 0000..0001; missing a_0001.nii.gz "
        "(a_0001.nrrd is there, but only .nii/.nii.gz are read)"
    )
    assert problems["b"] == (
        "expected channels 0000..0001; unexpected b_0002.nii.gz (the model takes 2)"
    )


@pytest.mark.parametrize(
    "layout, says",
    [
        ({}, "is empty"),
        ({".DS_Store": b"x"}, "holds only hidden files"),
        ({"ct.nii.gz": None, "pet.nii.gz": None}, "found ct.nii.gz, pet.nii.gz"),
        ({"imagesTs/a_0000.nii.gz": None, "labelsTs/a.nii.gz": None}, "pass -i CASES/imagesTs"),
        ({f"s{i}.nii.gz": None for i in range(7)}, "found s0.nii.gz, s1.nii.gz, s2.nii.gz, "
         "s3.nii.gz, s4.nii.gz and 2 more"),
    ],
)  # fmt: skip
def test_folder_without_cases_says_what_it_holds(tmp_path, layout, says):
    cases = tmp_path / "cases"
    cases.mkdir()
    for name, content in layout.items():
        (cases / name).parent.mkdir(exist_ok=True)
        if content is None:
            _nifti(cases / name)
        else:
            (cases / name).write_bytes(content)
    _one_error_line(_segment([cases], tmp_path / "out"), says.replace("CASES", str(cases)))
    assert not (tmp_path / "out").exists()


def test_ignored_note_names_what_a_folder_run_leaves_out(tmp_path):
    cases = tmp_path / "cases"
    _case(cases, "a")
    assert ignored_note(cases) is None
    _nifti(cases / "ct.nii.gz")
    (cases / "labelsTs").mkdir()
    (cases / ".DS_Store").write_bytes(b"x")
    (cases / "._a_0000.nii.gz").write_bytes(b"x")
    assert ignored_note(cases) == (
        f"ignored ct.nii.gz, labelsTs/ in {cases}: not named like a case (CASE_0000.nii.gz, ...)"
    )


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write into a read-only folder")
def test_read_only_output_folder_is_refused_before_any_case_runs(tmp_path):
    cases = tmp_path / "cases"
    _case(cases, "a")
    out = tmp_path / "out"
    out.mkdir(mode=0o555)
    _one_error_line(_segment([cases], out), "cannot write into the output folder")


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write into a read-only folder")
def test_read_only_output_folder_of_one_case_is_refused_before_the_model_loads(tmp_path):
    inputs = _case(tmp_path / "in", "a")
    out = tmp_path / "out"
    out.mkdir(mode=0o555)
    _one_error_line(_segment(inputs, out / "seg.nii.gz"), "is not writable")


def test_folder_run_refusing_its_output_prints_only_the_error_line(tmp_path):
    cases = tmp_path / "cases"
    _case(cases, "a")
    result = runner.invoke(app, ["segment", "-i", str(cases), "-o", str(tmp_path / "x.nii.gz")])
    _one_error_line(result, "pass an output folder")


def test_folder_run_notes_the_files_it_ignores(tmp_path):
    cases = tmp_path / "cases"
    _case(cases, "a")
    _nifti(cases / "ct.nii.gz")
    args = ["segment", "-i", str(cases), "-o", str(tmp_path / "out"), "--threads", "1"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert f"note: ignored ct.nii.gz in {cases}" in " ".join(result.output.split())
    assert (tmp_path / "out" / "a.nii.gz").exists()


def test_upper_case_output_suffix_is_written_compressed_with_its_sidecar(tmp_path):
    inputs = _case(tmp_path / "in", "a")
    result = _segment(inputs, tmp_path / "SEG.NII.GZ")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "SEG.NII.GZ").read_bytes()[:2] == b"\x1f\x8b"
    assert (tmp_path / "SEG.json").exists()


def test_folder_case_stored_as_one_4d_file_says_to_split_it_or_pass_it_alone(tmp_path):
    cases = tmp_path / "cases"
    cases.mkdir()
    _nifti(cases / "a_0000.nii.gz", np.stack([_volume(0), _volume(1)], axis=-1))
    result = _segment([cases], tmp_path / "out")
    assert result.exit_code == 1
    assert "holds all 2 modalities as one 4D file" in " ".join(result.output.split())
