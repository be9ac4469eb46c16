"""Intensity normalisation against upstream VeloxSeg's formulas."""

from __future__ import annotations

import numpy as np
import pytest

from veloxseg.runtime.card import Normalization
from veloxseg.runtime.normalization import normalize

CT = Normalization("ct", clip_low=-1000.0, clip_high=1500.0, mean=40.0, std=350.0)
ZSCORE = Normalization("zscore")


def upstream_zscore(image: np.ndarray) -> np.ndarray:
    """preprocess/normalization_CT_PET.py: zscore with a mask that selects every voxel."""
    return (image - image.mean()) / max(image.std(), 1e-8)


def upstream_ct(image: np.ndarray, n: Normalization) -> np.ndarray:
    """preprocess/normalization_CT_PET.py: CTnorm."""
    return (np.clip(image, n.clip_low, n.clip_high) - n.mean) / max(n.std, 1e-8)


def case(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    ct = rng.normal(0.0, 800.0, size=(9, 10, 11))
    pet = rng.gamma(2.0, 3.0, size=(9, 10, 11)) + 5000.0  # large offset: tests stats precision
    return np.stack([ct, pet]).astype(np.float32)


def test_ct_and_zscore_match_upstream() -> None:
    data = case()
    expected = np.stack(
        [upstream_ct(data[0].astype(np.float64), CT), upstream_zscore(data[1].astype(np.float64))]
    )
    out = normalize(data.copy(), [CT, ZSCORE])
    assert out.dtype == np.float32
    # float32 arithmetic (as upstream) on values near 5000: absolute error ~ 5000 * 2**-24 / std
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-4)


def test_works_in_place_on_float32() -> None:
    data = case()
    assert normalize(data, [ZSCORE, ZSCORE]) is data
    np.testing.assert_allclose(data.reshape(2, -1).mean(axis=1), 0.0, atol=1e-4)
    np.testing.assert_allclose(data.reshape(2, -1).std(axis=1), 1.0, rtol=1e-5)


def test_other_dtypes_and_read_only_inputs_are_copied() -> None:
    data = case().astype(np.float64)
    out = normalize(data, [CT, ZSCORE])
    assert out is not data and out.dtype == np.float32
    frozen = case()
    frozen.setflags(write=False)
    kept = frozen.copy()
    normalize(frozen, [CT, ZSCORE])
    np.testing.assert_array_equal(frozen, kept)


def test_works_on_reoriented_views() -> None:
    data = case()
    view = data[:, ::-1].transpose(0, 3, 2, 1)
    expected = normalize(np.ascontiguousarray(view), [CT, ZSCORE])
    np.testing.assert_allclose(normalize(view, [CT, ZSCORE]), expected, rtol=1e-6)


def test_constant_volume_becomes_zeros() -> None:
    data = np.full((1, 4, 4, 4), 7.0, np.float32)
    out = normalize(data, [ZSCORE])
    assert np.isfinite(out).all() and not out.any()


def test_channel_count_must_match() -> None:
    with pytest.raises(ValueError, match="C = 1 modalities"):
        normalize(case(), [ZSCORE])
