"""Resampling between the input grid and model spacing, and the streaming label resample."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from veloxseg.runtime import resampling
from veloxseg.runtime.resampling import (
    labels_from_resampled_scores,
    new_shape,
    resample_to_shape,
    resample_to_spacing,
)


def image(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def test_new_shape_rounds_like_nnunet() -> None:
    assert new_shape((100, 100, 50), (1.0, 1.0, 3.0), (1.0, 1.0, 1.0)) == (100, 100, 150)
    assert new_shape((10, 11, 3), (0.75, 1.0, 2.0), (1.0, 1.5, 5.0)) == (8, 7, 1)
    assert new_shape((1, 1, 1), (1.0, 1.0, 1.0), (10.0, 10.0, 10.0)) == (1, 1, 1)


def test_forward_then_backward_restores_the_shape() -> None:
    data = image((2, 17, 12, 9))
    spacing_in, spacing_out = (0.8, 1.3, 3.0), (1.0, 1.0, 1.5)
    model_space = resample_to_spacing(data, spacing_in, spacing_out)
    assert model_space.shape == (2, *new_shape((17, 12, 9), spacing_in, spacing_out))
    assert model_space.dtype == np.float32
    back = resample_to_shape(model_space, (17, 12, 9))
    assert back.shape == data.shape and back.dtype == np.float32


def test_constant_image_stays_constant() -> None:
    data = np.full((2, 9, 10, 11), 3.25, np.float32)
    data[1] = -1000.0
    out = resample_to_spacing(data, (1.0, 1.0, 1.0), (0.7, 1.6, 2.3))
    np.testing.assert_allclose(out[0], 3.25, rtol=1e-6)
    np.testing.assert_allclose(out[1], -1000.0, rtol=1e-6)


def test_matching_spacing_skips_resampling() -> None:
    data = image((1, 5, 6, 7))
    assert resample_to_spacing(data, (1.0, 2.0, 3.0), (1.0005, 2.001, 2.998)) is data
    assert resample_to_shape(data, (5, 6, 7)) is data


def test_linear_resampling_never_overshoots_an_edge() -> None:
    step = np.zeros((1, 12, 12, 12), np.float32)
    step[:, 6:] = 100.0
    out = resample_to_spacing(step, (1.0, 1.0, 1.0), (0.37, 0.6, 0.6))
    assert out.min() >= 0.0 and out.max() <= 100.0


def test_edge_aligned_upsampling_keeps_the_field_of_view() -> None:
    """A linear ramp along x keeps its mean and stays monotonic (no shift of the grid)."""
    ramp = np.broadcast_to(np.arange(8, dtype=np.float32)[:, None, None], (8, 4, 4))[None]
    out = resample_to_shape(np.ascontiguousarray(ramp), (16, 4, 4))
    profile = out[0, :, 0, 0]
    assert np.all(np.diff(profile) >= 0)
    np.testing.assert_allclose(profile.mean(), ramp.mean(), atol=1e-5)


@pytest.mark.parametrize("target", [(13, 5, 11), (7, 8, 9), (3, 16, 4)])
def test_streaming_labels_equal_naive_argmax(target: tuple[int, int, int]) -> None:
    scores = image((5, 7, 8, 9), seed=1)
    naive = np.argmax(resample_to_shape(scores, target), axis=0)
    labels = labels_from_resampled_scores(scores, target)
    assert labels.dtype == np.uint8 and labels.shape == target
    np.testing.assert_array_equal(labels, naive)


@pytest.mark.parametrize("margins", [False, True])
def test_labels_resampled_slab_by_slab_equal_the_whole_grid_argmax(monkeypatch, margins) -> None:
    scores = image((3, 9, 7, 11), seed=4)
    target = (20, 15, 29)
    whole = labels_from_resampled_scores(scores, target, margins=margins)
    monkeypatch.setattr(resampling, "SLAB_VOXELS", 20 * 15 * 4)  # slabs of 4 slices, then 1
    slabs = labels_from_resampled_scores(scores, target, margins=margins)
    np.testing.assert_array_equal(slabs, whole)
    full = resample_to_shape(scores, target)
    if margins:
        full = np.concatenate([np.zeros_like(full[:1]), full])
    np.testing.assert_array_equal(slabs, np.argmax(full, axis=0))


def test_labels_resampled_to_a_large_grid_need_no_float_volume_of_that_size() -> None:
    scores = image((1, 40, 40, 30), seed=6)
    target = (320, 320, 240)  # 24.6 M voxels: a float32 volume of it is 98 MB
    tracemalloc.start()
    labels = labels_from_resampled_scores(scores, target, margins=True)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < labels.nbytes + 4 * resampling.SLAB_VOXELS * 4  # labels + slab buffers
    assert 0 < labels.mean() < 1


def test_streaming_labels_break_ties_like_argmax() -> None:
    scores = np.random.default_rng(2).integers(0, 3, size=(4, 6, 6, 6)).astype(np.float32)
    for target in [(6, 6, 6), (12, 12, 12)]:
        naive = np.argmax(resample_to_shape(scores, target), axis=0)
        np.testing.assert_array_equal(labels_from_resampled_scores(scores, target), naive)


def test_many_classes_use_uint16() -> None:
    scores = image((300, 2, 3, 2), seed=3)
    labels = labels_from_resampled_scores(scores, (3, 3, 3))
    assert labels.dtype == np.uint16
    np.testing.assert_array_equal(labels, np.argmax(resample_to_shape(scores, (3, 3, 3)), axis=0))


@pytest.mark.parametrize("target", [(13, 5, 11), (3, 16, 4)])
def test_labels_from_resampled_margins_equal_those_from_logits(target) -> None:
    logits = image((4, 7, 8, 9), seed=5)
    from_logits = labels_from_resampled_scores(logits, target)
    from_margins = labels_from_resampled_scores(logits[1:] - logits[:1], target, margins=True)
    np.testing.assert_array_equal(from_margins, from_logits)
    assert len(np.unique(from_logits)) > 1
