"""Reorientation to closest RAS+ and back: exact, world positions preserved."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from veloxseg.runtime.errors import InputError
from veloxseg.runtime.orientation import from_canonical, to_canonical

SHAPE = (4, 5, 6)


def _rotation(z_deg: float, x_deg: float) -> np.ndarray:
    a, b = np.deg2rad(z_deg), np.deg2rad(x_deg)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    return rz @ rx


def _affine(
    linear: np.ndarray, origin: tuple[float, float, float] = (3.0, -7.5, 12.0)
) -> np.ndarray:
    affine = np.eye(4)
    affine[:3, :3] = linear
    affine[:3, 3] = origin
    return affine


AFFINES = {
    "RAS": _affine(np.diag([1.0, 2.0, 3.0])),
    "LPS": _affine(np.diag([-0.7, -0.8, 2.5])),
    "permuted-SRA": _affine(np.array([[0, 1.5, 0], [0, 0, 2.0], [3.0, 0, 0]])),
    "permuted-flipped-PIL": _affine(np.array([[0, 0, -1.0], [-2.0, 0, 0], [0, -0.5, 0]])),
    "oblique": _affine(_rotation(25, -15) @ np.diag([1.2, 0.9, 2.0])),
    "oblique-LPS": _affine(_rotation(-30, 10) @ np.diag([-1.0, -1.0, 1.5])),
}


def data(channels: int = 2) -> np.ndarray:
    return np.random.default_rng(0).normal(size=(channels, *SHAPE)).astype(np.float32)


@pytest.mark.parametrize("name", AFFINES)
def test_round_trip_is_exact(name: str) -> None:
    original = data()
    canonical, _, reo = to_canonical(original, AFFINES[name])
    assert canonical.shape[0] == 2
    np.testing.assert_array_equal(from_canonical(canonical, reo), original)
    labels = (original[0] > 0).astype(np.uint8)
    probs = np.stack([original[0], original[1], -original[0]])
    np.testing.assert_array_equal(
        from_canonical(to_canonical(labels[None], AFFINES[name])[0][0], reo), labels
    )
    np.testing.assert_array_equal(from_canonical(to_canonical(probs, AFFINES[name])[0], reo), probs)


@pytest.mark.parametrize("name", AFFINES)
def test_canonical_is_ras_and_keeps_world_positions(name: str) -> None:
    affine = AFFINES[name]
    original = data(1)
    canonical, canonical_affine, _ = to_canonical(original, affine)
    assert nib.aff2axcodes(canonical_affine) == ("R", "A", "S")
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in SHAPE], indexing="ij"), -1).reshape(-1, 3)
    world = nib.affines.apply_affine(affine, grid)
    target = nib.affines.apply_affine(np.linalg.inv(canonical_affine), world)
    index = np.round(target).astype(int)
    np.testing.assert_allclose(target, index, atol=1e-9)
    np.testing.assert_array_equal(canonical[0][tuple(index.T)], original[0][tuple(grid.T)])


@pytest.mark.parametrize("name", AFFINES)
def test_matches_nibabel_closest_canonical(name: str) -> None:
    original = data(1)
    canonical, canonical_affine, _ = to_canonical(original, AFFINES[name])
    reference = nib.as_closest_canonical(nib.Nifti1Image(original[0], AFFINES[name]))
    np.testing.assert_array_equal(canonical[0], reference.get_fdata(dtype=np.float32))
    np.testing.assert_allclose(canonical_affine, reference.affine, atol=1e-6)


def test_reorientation_reports_axcodes() -> None:
    _, _, ras = to_canonical(data(), AFFINES["RAS"])
    _, _, lps = to_canonical(data(), AFFINES["LPS"])
    assert ras.axcodes == "RAS" and lps.axcodes == "LPS"


def test_identity_returns_the_same_values_without_copying() -> None:
    original = data()
    canonical, affine, _ = to_canonical(original, AFFINES["RAS"])
    assert np.shares_memory(canonical, original)
    np.testing.assert_array_equal(affine, AFFINES["RAS"])


def test_degenerate_affine_is_an_input_error() -> None:
    affine = AFFINES["RAS"].copy()
    affine[:, 1] = 0.0
    with pytest.raises(InputError, match="degenerate axis"):
        to_canonical(data(), affine)


def test_from_canonical_checks_the_shape() -> None:
    _, _, reo = to_canonical(data(), AFFINES["permuted-SRA"])
    with pytest.raises(ValueError, match="does not match"):
        from_canonical(np.zeros((2, *SHAPE)), reo)


@pytest.mark.parametrize("axcodes", ["LPS", "PIR", "LAS", "RAS"])
def test_loaded_scan_is_laid_out_canonically_so_reorienting_copies_nothing(tmp_path, axcodes):
    from nibabel.orientations import axcodes2ornt, inv_ornt_aff

    from veloxseg.runtime.nifti_io import load_case

    affine = inv_ornt_aff(axcodes2ornt(axcodes), SHAPE) @ np.diag([1.5, 2.0, 3.0, 1.0])
    values = np.random.default_rng(3).normal(size=(2, *SHAPE)).astype(np.float32)
    paths = [tmp_path / f"m{c}.nii.gz" for c in range(2)]
    for path, volume in zip(paths, values, strict=True):
        nib.save(nib.Nifti1Image(volume, affine), path)
    data, geometry = load_case(paths, 2)
    np.testing.assert_array_equal(data, values)  # still indexed in file voxel order
    canonical, _, _ = to_canonical(data, geometry.affine)
    assert canonical.flags.c_contiguous and np.shares_memory(canonical, data)
