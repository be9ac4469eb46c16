"""Dice, component-wise lesion detection and the SUV-threshold baseline on hand-made arrays."""

from __future__ import annotations

import numpy as np
import pytest

from veloxseg.train.metrics import dice, lesion_detection, suv_threshold_baseline

SPACING = (2.0, 2.0, 2.5)  # 10 microlitres per voxel
VOXEL_ML = 0.01


def _volume(*boxes: tuple[slice, slice, slice]) -> np.ndarray:
    volume = np.zeros((20, 20, 20), dtype=np.uint8)
    for box in boxes:
        volume[box] = 1
    return volume


def test_dice_known_values() -> None:
    a = _volume(np.s_[0:4, 0:5, 0:5])  # 100 voxels
    b = _volume(np.s_[2:6, 0:5, 0:5])  # 100 voxels, 50 shared
    assert dice(a, a) == 1.0
    assert dice(a, _volume(np.s_[10:14, 0:5, 0:5])) == 0.0
    assert dice(a, b) == pytest.approx(0.5)
    assert dice(a.astype(bool), b * 7) == pytest.approx(0.5)  # any non-zero is foreground


def test_dice_of_empty_masks() -> None:
    empty = np.zeros((4, 4, 4), dtype=np.uint8)
    assert dice(empty, empty) == 1.0
    assert dice(empty, _volume(np.s_[0:2, 0:2, 0:2])[:4, :4, :4]) == 0.0


def test_dice_rejects_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match="shape"):
        dice(np.zeros((2, 2, 2)), np.zeros((2, 2, 3)))


def test_lesion_detection_counts_and_volumes() -> None:
    ref = _volume(
        np.s_[0:3, 0:3, 0:3],  # 27 voxels
        np.s_[8:14, 10:11, 10:11],  # a rod of 6 voxels
        np.s_[16:20, 0:5, 0:5],  # 100 voxels, missed
    )
    pred = _volume(
        np.s_[2:5, 2:5, 2:5],  # touches the first lesion at one voxel: TP
        np.s_[8:9, 10:11, 10:11],  # one end of the rod: TP
        np.s_[13:14, 10:11, 10:11],  # the other end, a separate component: TP
        np.s_[12:13, 11:12, 11:12],  # diagonal neighbour of the previous voxel: same component
        np.s_[0:2, 15:20, 15:20],  # 50 voxels: FP
        np.s_[11:12, 11:12, 14:15],  # isolated voxel: FP
    )
    result = lesion_detection(pred, ref, SPACING)
    assert (result["tp"], result["fp"], result["fn"]) == (3, 2, 1)
    assert result["fp_volume_ml"] == pytest.approx(51 * VOXEL_ML)
    assert result["fn_volume_ml"] == pytest.approx(100 * VOXEL_ML)


def test_lesion_detection_of_empty_inputs() -> None:
    empty = np.zeros((5, 5, 5), dtype=np.uint8)
    assert lesion_detection(empty, empty, SPACING) == {
        "tp": 0,
        "fp": 0,
        "fn": 0,
        "fp_volume_ml": 0.0,
        "fn_volume_ml": 0.0,
    }


def test_suv_threshold_baseline_keeps_hot_components_above_min_volume() -> None:
    pet = np.full((20, 20, 20), 1.0, dtype=np.float32)
    pet[0:5, 0:5, 0:4] = 4.0  # 100 voxels = 1 ml
    pet[10:12, 10:12, 10:12] = 9.0  # 8 voxels = 0.08 ml: too small
    pet[15:20, 15:20, 15:17] = 2.5  # 50 voxels exactly at the threshold = 0.5 ml
    pet[15, 0, 0] = 2.49
    mask = suv_threshold_baseline(pet, 2.5, 0.5, spacing=SPACING)
    assert mask.dtype == np.uint8
    expected = _volume(np.s_[0:5, 0:5, 0:4], np.s_[15:20, 15:20, 15:17])
    np.testing.assert_array_equal(mask, expected)
    assert suv_threshold_baseline(pet, 2.5, 0.0, spacing=SPACING).sum() == 158
    assert not suv_threshold_baseline(pet, 10.0, spacing=SPACING).any()
