"""The PET/CT phantom: determinism, plausible values, lesion labels and NIfTI output."""

from __future__ import annotations

import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from veloxseg.train.phantom import (
    DEFAULT_SPACING,
    Phantom,
    make_phantom,
    phantom_affine,
    save_phantom_case,
)

SHAPE = (64, 64, 80)


@pytest.fixture(scope="module")
def phantoms() -> dict[int, Phantom]:
    return {seed: make_phantom(seed, SHAPE) for seed in range(6)}


def test_same_seed_is_bit_identical(phantoms: dict[int, Phantom]) -> None:
    again = make_phantom(3, SHAPE)
    for name in ("ct", "pet", "label"):
        assert getattr(again, name).tobytes() == getattr(phantoms[3], name).tobytes()


def test_different_seeds_differ(phantoms: dict[int, Phantom]) -> None:
    assert not np.array_equal(phantoms[0].ct, phantoms[1].ct)
    assert not np.array_equal(phantoms[0].pet, phantoms[1].pet)
    assert not np.array_equal(phantoms[0].label, phantoms[1].label)


@pytest.mark.parametrize("shape", [(64, 64, 80), (96, 96, 96), (40, 52, 33)])
def test_shape_dtypes_and_spacing(shape: tuple[int, int, int]) -> None:
    phantom = make_phantom(11, shape)
    assert phantom.ct.shape == phantom.pet.shape == phantom.label.shape == shape
    assert (phantom.ct.dtype, phantom.pet.dtype, phantom.label.dtype) == (
        np.float32,
        np.float32,
        np.uint8,
    )
    assert phantom.spacing == DEFAULT_SPACING


def test_default_shape_is_a_modest_whole_body() -> None:
    phantom = make_phantom(1000)
    nx, ny, nz = phantom.label.shape
    assert 160 <= nx <= 200 and 160 <= ny <= 200 and 200 <= nz <= 320


def test_invalid_shape_is_rejected() -> None:
    with pytest.raises(ValueError, match="shape"):
        make_phantom(0, (64, 64))
    with pytest.raises(ValueError, match="spacing"):
        make_phantom(0, SHAPE, spacing=(2.0, 0.0, 3.0))


def test_ct_values_are_plausible(phantoms: dict[int, Phantom]) -> None:
    for phantom in phantoms.values():
        ct = phantom.ct
        assert np.isfinite(ct).all() and ct.min() >= -1024 and ct.max() <= 3071
        assert abs(float(ct[:3, :3, :].mean()) + 1000) < 30  # air in the corners
        in_plane = np.zeros((3, 3, 3), dtype=bool)
        in_plane[:, :, 1] = ndimage.generate_binary_structure(2, 1)
        body = ndimage.binary_fill_holes(ct > -400, structure=in_plane)  # slice by slice
        assert ct[body].max() > 500  # bone
        enclosed_air = body & (ct < -600)  # lungs (and some bowel gas and trachea)
        assert enclosed_air.sum() > 0.03 * body.sum()
        assert -920 < float(np.median(ct[enclosed_air])) < -700


def test_pet_is_non_negative_with_physiological_uptake(phantoms: dict[int, Phantom]) -> None:
    for phantom in phantoms.values():
        pet = phantom.pet
        assert np.isfinite(pet).all() and pet.min() >= 0.0
        body = phantom.ct > -400
        assert 0.3 < float(pet[body].mean()) < 2.0
        assert pet.max() > 5.0  # bladder, kidneys, heart, brain or a lesion


def test_labels_mark_avid_lesions(phantoms: dict[int, Phantom]) -> None:
    for phantom in phantoms.values():
        lesion = phantom.label > 0
        assert set(np.unique(phantom.label)) == {0, 1}
        assert float(phantom.ct[lesion].mean()) > -300  # lesions are tissue, also in the lung
        around = ndimage.binary_dilation(lesion, iterations=3) & ~lesion
        assert float(phantom.pet[lesion].mean()) > 1.3 * float(phantom.pet[around].mean())


def test_labels_are_non_empty_for_a_sample_of_seeds() -> None:
    for seed in range(10, 20):
        assert make_phantom(seed, (48, 48, 48)).label.any()


def test_affine_is_centred_ras() -> None:
    affine = phantom_affine((5, 7, 9), (2.0, 3.0, 4.0))
    np.testing.assert_allclose(np.diag(affine), [2.0, 3.0, 4.0, 1.0])
    np.testing.assert_allclose(affine @ [2, 3, 4, 1], [0, 0, 0, 1])


def test_saved_case_round_trips(tmp_path, phantoms: dict[int, Phantom]) -> None:
    phantom = phantoms[2]
    paths = save_phantom_case(phantom, tmp_path, "case_002")
    assert paths["ct"] == tmp_path / "images" / "case_002_0000.nii.gz"
    assert paths["pet"] == tmp_path / "images" / "case_002_0001.nii.gz"
    assert paths["label"] == tmp_path / "labels" / "case_002.nii.gz"
    for key, dtype in (("pet", np.float32), ("ct", np.float32), ("label", np.uint8)):
        image = nib.load(paths[key])
        assert image.get_data_dtype() == dtype
        assert nib.aff2axcodes(image.affine) == ("R", "A", "S")
        np.testing.assert_allclose(image.affine, phantom.affine, atol=1e-5)
        np.testing.assert_allclose(image.header.get_zooms(), phantom.spacing, rtol=1e-6)
        assert int(image.header["qform_code"]) == int(image.header["sform_code"]) == 1
        np.testing.assert_array_equal(np.asanyarray(image.dataobj), getattr(phantom, key))


def test_imports_without_torch() -> None:
    code = (
        "import sys; import veloxseg.train.phantom, veloxseg.train.metrics; "
        "assert 'torch' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
