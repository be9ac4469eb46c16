"""NIfTI input is bounded, through ``veloxseg segment``: sizes are checked from the header
before anything is allocated, and odd scaling, affines and voxel types are either processed
correctly or refused in one line with exit code 2."""

from __future__ import annotations

import gzip
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
from typer.testing import CliRunner

from veloxseg.assets import bundled_model
from veloxseg.cli import app as cli
from veloxseg.runtime import Engine

AFFINE = np.diag([2.03642, 2.03642, 3.0, 1.0])  # the model's spacing: nothing is resampled
SHAPE = (20, 18, 12)
runner = CliRunner()


@pytest.fixture(scope="module")
def one_engine() -> Iterator[None]:
    """Compile the model once: every call still runs the whole command from argument parsing
    to writing outputs, only without recompiling an unchanged model."""
    engine = Engine.open(bundled_model(), threads=1)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(cli, "_open_engine", lambda *args: engine)
        yield


def _values(seed: int) -> np.ndarray:
    """Integers 0..200: exact in every voxel type tested here."""
    return np.random.default_rng(seed).integers(0, 201, SHAPE).astype(np.float64)


def _raw(
    path: Path,
    shape: tuple[int, ...],
    dtype: type | np.dtype,
    data: bytes,
    *,
    slope: float = 1.0,
    inter: float = 0.0,
    affine: np.ndarray = AFFINE,
    header: nib.Nifti1Header | None = None,
) -> Path:
    """A single-file NIfTI from a hand-made header (fields nibabel would never write)."""
    header = header or nib.Nifti1Header()
    header.set_data_shape(shape)
    header.set_data_dtype(dtype)
    header["sform_code"] = 1
    header["srow_x"], header["srow_y"], header["srow_z"] = affine[:3]
    header["scl_slope"], header["scl_inter"] = slope, inter
    header["magic"] = b"n+2" if isinstance(header, nib.Nifti2Header) else b"n+1"
    header["vox_offset"] = header.single_vox_offset
    raw = header.binaryblock + bytes(int(header["vox_offset"]) - header.sizeof_hdr) + data
    path.write_bytes(gzip.compress(raw, compresslevel=1) if path.suffix == ".gz" else raw)
    return path


def _bytes(seed: int, dtype: type) -> bytes:
    return _values(seed).astype(dtype).tobytes(order="F")


def _case(folder: Path, dtype: type = np.float32, **kwargs: Any) -> list[Path]:
    folder.mkdir(exist_ok=True)
    return [
        _raw(folder / f"case_{c:04d}.nii.gz", SHAPE, dtype, _bytes(c, dtype), **kwargs)
        for c in range(2)
    ]


def _segment(inputs: list[Path], out: Path, *extra: str):  # type: ignore[no-untyped-def]
    args = ["segment", "-o", str(out), "-q", *(a for p in inputs for a in ("-i", str(p)))]
    return runner.invoke(cli.app, [*args, *extra])


def _refused(result, out: Path, phrase: str) -> str:  # type: ignore[no-untyped-def]
    lines = result.output.strip().splitlines()
    assert result.exit_code == 2, result.output
    assert len(lines) == 1 and lines[0].startswith("error:"), result.output
    assert phrase in lines[0] and "Traceback" not in result.output, lines[0]
    assert not out.exists() and not out.with_name("seg.json").exists()
    return lines[0]


def _labels(result, out: Path) -> np.ndarray:  # type: ignore[no-untyped-def]
    assert result.exit_code == 0, result.output
    seg = nib.load(out)
    assert seg.shape == SHAPE and np.allclose(seg.affine, AFFINE)
    return np.asarray(seg.dataobj)


def _fast_and_small(run) -> tuple[object, float, int]:  # type: ignore[no-untyped-def]
    """``run()``'s result, its seconds, and the peak Python-heap bytes (numpy's arrays
    included) of a second, traced run. A first run loads the command's modules, which is
    start-up, not reading the input."""
    run()
    start = time.perf_counter()
    result = run()
    seconds = time.perf_counter() - start
    tracemalloc.start()
    try:
        run()
        return result, seconds, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize(
    ("header", "shape", "dtype"),
    [
        (nib.Nifti1Header, (2048, 2048, 1024), np.uint8),  # 4.3e9 voxels
        (nib.Nifti1Header, (32767, 32767, 32767), np.float64),  # 3.5e13 voxels, 280 TB
        (nib.Nifti2Header, (2**20, 2**20, 2**20), np.float32),  # 1.2e18 voxels
    ],
)
def test_header_claiming_billions_of_voxels_fails_in_under_a_second_without_allocating(
    tmp_path: Path, header: type, shape: tuple[int, ...], dtype: type
) -> None:
    inputs = [
        _raw(tmp_path / f"huge_{c}.nii", shape, dtype, b"", header=header()) for c in range(2)
    ]
    out = tmp_path / "seg.nii.gz"
    result, seconds, peak = _fast_and_small(lambda: _segment(inputs, out))
    _refused(result, out, "more than the limit of 2,147,483,648")
    assert seconds < 1.0 and peak < 64 * 2**20, (seconds, peak)


def test_max_voxels_option_bounds_the_input(one_engine: None, tmp_path: Path) -> None:
    inputs = _case(tmp_path / "in")
    out = tmp_path / "seg.nii.gz"
    _refused(_segment(inputs, out, "--max-voxels", "4000"), out, "more than the limit of 4,000")
    _labels(_segment(inputs, out, "--max-voxels", str(np.prod(SHAPE))), out)


@pytest.mark.parametrize("name", ["short.nii", "short.nii.gz"])
def test_header_declaring_more_data_than_the_file_holds_is_refused_before_allocating(
    tmp_path: Path, name: str
) -> None:
    shape = (512, 512, 512)  # 512 MiB of float32 declared, 4 KiB present
    inputs = [_raw(tmp_path / f"{c}{name}", shape, np.float32, bytes(4096)) for c in range(2)]
    out = tmp_path / "seg.nii.gz"
    result, seconds, peak = _fast_and_small(lambda: _segment(inputs, out))
    message = _refused(result, out, "truncated or corrupt")
    assert "declares 536,871,264 bytes" in message
    assert seconds < 1.0 and peak < 64 * 2**20, (seconds, peak)


def test_file_cut_short_is_refused(one_engine: None, tmp_path: Path) -> None:
    for suffix in (".nii", ".nii.gz"):
        paths = [tmp_path / f"cut_{c:04d}{suffix}" for c in range(2)]
        for c, path in enumerate(paths):
            _raw(path, SHAPE, np.float32, _bytes(c, np.float32))
            path.write_bytes(path.read_bytes()[: path.stat().st_size * 3 // 4])
        out = tmp_path / "seg.nii.gz"
        _refused(_segment(paths, out), out, "truncated or corrupt")


def test_zero_nan_or_infinite_slope_means_unscaled(one_engine: None, tmp_path: Path) -> None:
    reference = _labels(_segment(_case(tmp_path / "ref", np.int16), tmp_path / "ref.nii.gz"),
                        tmp_path / "ref.nii.gz")  # fmt: skip
    for slope in (0.0, np.nan, np.inf):
        inputs = _case(tmp_path / f"slope{slope}", np.int16, slope=slope, inter=55.0)
        out = tmp_path / f"slope{slope}.nii.gz"
        np.testing.assert_array_equal(_labels(_segment(inputs, out), out), reference)


def test_nan_intercept_with_a_valid_slope_is_refused(one_engine: None, tmp_path: Path) -> None:
    inputs = _case(tmp_path / "in", np.int16, slope=2.0, inter=np.nan)
    _refused(_segment(inputs, tmp_path / "seg.nii.gz"), tmp_path / "seg.nii.gz", "intercept")


@pytest.mark.parametrize(
    "srow",
    [
        [[2.0, 0, 0, 0], [0, 2.0, 0, 0], [0, 0, 0, 0]],  # a zero axis
        [[2.0, 0, 0, 0], [0, 2.0, 0, 0], [2.0, 0, 0, 0]],  # two axes collinear
        [[2.0, 0, 0, 0], [0, np.nan, 0, 0], [0, 0, 3.0, 0]],  # NaN
    ],
)
def test_singular_or_nan_affine_is_refused(
    one_engine: None, tmp_path: Path, srow: list[list[float]]
) -> None:
    affine = np.vstack([srow, [0, 0, 0, 1]])
    inputs = _case(tmp_path / "in", affine=affine)
    _refused(_segment(inputs, tmp_path / "seg.nii.gz"), tmp_path / "seg.nii.gz", "degenerate")


def test_integer_and_float64_voxels_give_the_labels_of_float32(
    one_engine: None, tmp_path: Path
) -> None:
    reference = _labels(_segment(_case(tmp_path / "f4"), tmp_path / "f4.nii.gz"),
                        tmp_path / "f4.nii.gz")  # fmt: skip
    for dtype in (np.uint8, np.int16, np.int32, np.uint16, np.float64):
        name = np.dtype(dtype).name
        out = tmp_path / f"{name}.nii.gz"
        labels = _labels(_segment(_case(tmp_path / name, dtype), out), out)
        np.testing.assert_array_equal(labels, reference, err_msg=name)


def test_float16_voxels_have_no_nifti_code_and_are_refused(
    one_engine: None, tmp_path: Path
) -> None:
    """NIfTI-1 and -2 define no float16 type; a writer that stores one invents a code."""
    inputs = _case(tmp_path / "in", np.int16)
    for path in inputs:
        raw = bytearray(gzip.decompress(path.read_bytes()))
        raw[70:72] = np.int16(4096).tobytes()  # datatype: unassigned
        path.write_bytes(gzip.compress(bytes(raw)))
    _refused(_segment(inputs, tmp_path / "seg.nii.gz"), tmp_path / "seg.nii.gz", "not recognized")


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "veloxseg.cli", "segment", "-q", "--threads", "1", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


def test_header_oddities_nibabel_repairs_print_nothing_in_a_real_process(tmp_path: Path) -> None:
    """nibabel logs what it repairs straight to the process' stderr; the command stays silent
    on success and keeps failures to one line."""
    odd = nib.Nifti1Header()
    odd["qform_code"] = 7  # invalid: nibabel logs "not valid; setting to 0"
    inputs = _case(tmp_path / "odd", header=odd)
    done = _cli("-o", str(tmp_path / "seg.nii.gz"), *(a for p in inputs for a in ("-i", str(p))))
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")
    bad = np.diag([2.0, 2.0, 0.0, 1.0])
    inputs = _case(tmp_path / "bad", header=odd, affine=bad)
    failed = _cli("-o", str(tmp_path / "no.nii.gz"), *(a for p in inputs for a in ("-i", str(p))))
    assert failed.returncode == 2 and failed.stdout == "", failed
    assert failed.stderr.count("\n") == 1 and failed.stderr.startswith("error:"), failed.stderr
