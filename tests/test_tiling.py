"""Sliding-window inference: parity with MONAI, streamed labels, TTA, memory bound and errors."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from monai.data.utils import compute_importance_map
from monai.inferers import sliding_window_inference

from veloxseg.runtime.errors import InputError
from veloxseg.runtime.sliding_window import sliding_window_predict
from veloxseg.runtime.tiling import (
    DenseAccumulator,
    StreamingLabelAccumulator,
    importance_map,
    plan_tiles,
)

N_CLASSES = 3

# Both sides do the same float32 products and sums; only the order of additions may differ (and
# numpy's float32 exp may differ from torch's by an ulp in the gaussian map), so blended logits of
# order-1 values agree to a few ulps; 1e-5 leaves margin without hiding a misplaced window.
TOL = 1e-5


def times_two(batch: np.ndarray) -> np.ndarray:
    """Pointwise and flip-equivariant: class k is 2 * (k + 1) * channel (k mod C)."""
    channels = batch.shape[1]
    return np.stack([2.0 * (k + 1) * batch[:, k % channels] for k in range(N_CLASSES)], axis=1)


def ramp(batch: np.ndarray) -> np.ndarray:
    """Depends on the voxel's place in the patch, so overlapping windows disagree."""
    x, y, z = np.meshgrid(*(np.linspace(0, 1, n) for n in batch.shape[2:]), indexing="ij")
    out = times_two(batch)
    for k in range(N_CLASSES):
        out[:, k] += (k + 1) * x - 0.5 * y + (0.3 * k) * z * z
    return out.astype(np.float32)


def symmetric_bump(batch: np.ndarray) -> np.ndarray:
    """Position-dependent but symmetric under every flip, hence flip-equivariant."""
    axes = (np.abs(np.linspace(-1, 1, n)) for n in batch.shape[2:])
    x, y, z = np.meshgrid(*axes, indexing="ij")
    return (times_two(batch) + (x + 2 * y * y - z)).astype(np.float32)


def monai_reference(volume, predictor, patch, overlap, blend, batch_size) -> np.ndarray:
    """MONAI's blended logits (K, X, Y, Z) for the same numpy predictor."""
    result = sliding_window_inference(
        torch.from_numpy(volume[None]),
        roi_size=patch,
        sw_batch_size=batch_size,
        predictor=lambda t: torch.from_numpy(predictor(t.numpy())),
        overlap=overlap,
        mode=blend,
        sigma_scale=0.125,
        padding_mode="constant",
        cval=0.0,
    )
    return np.asarray(result[0])


def make_volume(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


@pytest.mark.parametrize(
    ("shape", "patch"),
    [
        ((2, 37, 50, 29), (16, 16, 16)),
        ((2, 37, 11, 29), (16, 16, 16)),  # axis 1 smaller than the patch: odd padding 2 + 3
        ((1, 9, 30, 17), (12, 16, 20)),  # two axes padded, anisotropic patch
    ],
)
@pytest.mark.parametrize("blend", ["constant", "gaussian"])
@pytest.mark.parametrize(("overlap", "batch_size"), [(0.25, 1), (0.5, 3), (0.3, 3)])
def test_matches_monai(shape, patch, blend, overlap, batch_size) -> None:
    volume = make_volume(shape)
    for predictor in (times_two, ramp):
        expected = monai_reference(volume, predictor, patch, overlap, blend, batch_size)
        got = sliding_window_predict(
            volume, predictor, patch, N_CLASSES, overlap, blend, batch_size, output="logits"
        )
        assert got.shape == expected.shape and got.dtype == np.float32
        assert np.max(np.abs(got - expected)) <= TOL


@pytest.mark.parametrize("patch", [(16, 16, 16), (7, 12, 5), (40, 40, 40)])
def test_importance_map_matches_monai(patch) -> None:
    for blend in ("constant", "gaussian"):
        expected = compute_importance_map(patch, mode=blend, sigma_scale=0.125).numpy()
        got = importance_map(patch, blend)
        assert got.dtype == np.float32
        np.testing.assert_allclose(got, expected, rtol=1e-6, atol=0)


def test_plan_order_and_padding() -> None:
    plan = plan_tiles((37, 11, 29), (16, 16, 16), 0.25)
    assert plan.padded_shape == (37, 16, 29)
    assert plan.pad == ((0, 0), (2, 3), (0, 0))
    assert plan.starts[:3] == ((0, 0, 0), (0, 0, 12), (0, 0, 13))
    assert [s[0] for s in plan.starts] == sorted(s[0] for s in plan.starts)
    assert {s[0] for s in plan.starts} == {0, 12, 21}


@pytest.mark.parametrize("blend", ["constant", "gaussian"])
@pytest.mark.parametrize(
    ("shape", "patch"), [((2, 37, 50, 29), (16, 16, 16)), ((1, 9, 30, 17), (12, 16, 20))]
)
def test_streamed_labels_equal_dense_argmax(shape, patch, blend) -> None:
    volume = make_volume(shape, seed=1)
    kwargs = {"overlap": 0.5, "blend": blend, "batch_size": 3}
    logits = sliding_window_predict(volume, ramp, patch, N_CLASSES, output="logits", **kwargs)
    labels = sliding_window_predict(volume, ramp, patch, N_CLASSES, output="labels", **kwargs)
    assert labels.dtype == np.uint8 and labels.shape == shape[1:]
    np.testing.assert_array_equal(labels, np.argmax(logits, axis=0))
    assert len(np.unique(labels)) > 1  # the comparison is not trivially all zeros


def test_streaming_ties_and_buffer_size() -> None:
    plan = plan_tiles((160, 24, 20), (16, 16, 16), 0.5)
    weight = importance_map(plan.patch, "gaussian")
    dense = DenseAccumulator(plan, 4, weight)
    stream = StreamingLabelAccumulator(plan, 4, weight)
    rng = np.random.default_rng(2)
    for start in plan.starts:
        window = rng.integers(0, 3, size=(4, *plan.patch)).astype(np.float32)  # many ties
        dense.add(start, window)
        stream.add(start, window)
    np.testing.assert_array_equal(stream.finalize(), np.argmax(dense.finalize(), axis=0))
    dense_bytes = (4 + 1) * 160 * 24 * 20 * 4
    assert stream.buffer_bytes < dense_bytes / 3


def test_streaming_rejects_out_of_order_windows() -> None:
    plan = plan_tiles((40, 16, 16), (16, 16, 16), 0.25)
    stream = StreamingLabelAccumulator(plan, 2, importance_map(plan.patch, "constant"))
    window = np.zeros((2, 16, 16, 16), dtype=np.float32)
    stream.add((0, 0, 0), window)
    stream.add((12, 0, 0), window)
    with pytest.raises(ValueError, match="non-decreasing order"):
        stream.add((0, 0, 0), window)


def test_probabilities_are_softmax_of_logits() -> None:
    volume = make_volume((2, 20, 18, 17))
    logits = sliding_window_predict(volume, ramp, (16, 16, 16), N_CLASSES, output="logits")
    probs = sliding_window_predict(volume, ramp, (16, 16, 16), N_CLASSES, output="probabilities")
    expected = torch.softmax(torch.from_numpy(logits), dim=0).numpy()
    assert np.max(np.abs(probs - expected)) <= 1e-6


def test_tta_with_equivariant_predictor_equals_plain() -> None:
    volume = make_volume((2, 30, 21, 18))
    common = {"overlap": 0.5, "blend": "gaussian", "batch_size": 2, "output": "logits"}
    plain = sliding_window_predict(volume, symmetric_bump, (16, 16, 16), N_CLASSES, **common)
    mirrored = sliding_window_predict(
        volume, symmetric_bump, (16, 16, 16), N_CLASSES, tta=True, **common
    )
    assert np.max(np.abs(mirrored - plain)) <= TOL
    skewed = sliding_window_predict(volume, ramp, (16, 16, 16), N_CLASSES, tta=True, **common)
    assert np.max(np.abs(skewed - plain)) > 0.1  # TTA really flips: the ramp averages out


def test_pipeline_runs_predictor_on_worker_threads_with_bounded_concurrency() -> None:
    lock, active, seen = threading.Lock(), [0], {"max": 0, "threads": set()}

    def predictor(batch: np.ndarray) -> np.ndarray:
        with lock:
            active[0] += 1
            seen["max"] = max(seen["max"], active[0])
            seen["threads"].add(threading.get_ident())
        out = times_two(batch)
        with lock:
            active[0] -= 1
        return out

    volume = make_volume((1, 40, 40, 20))
    got = sliding_window_predict(
        volume,
        predictor,
        (16, 16, 16),
        N_CLASSES,
        0.5,
        batch_size=2,
        output="logits",
        max_in_flight=2,
        progress=True,
    )
    expected = monai_reference(volume, times_two, (16, 16, 16), 0.5, "constant", 2)
    assert np.max(np.abs(got - expected)) <= TOL
    assert threading.get_ident() not in seen["threads"]
    assert seen["max"] <= 2


@pytest.mark.parametrize(("batch_size", "blend"), [(1, "constant"), (2, "gaussian")])
def test_constant_windows_are_computed_once_and_change_no_output(batch_size, blend) -> None:
    volume = make_volume((2, 64, 40, 30))
    volume[:, :40] = np.array([-1.5, 0.0], np.float32)[:, None, None, None]  # "air" in rows < 40
    volume[:, :40, :16, :16] = 0.0  # a second constant value, in the corner windows
    volume[0, 20, 39, 29] = 7.0  # breaks the constancy of the windows around it
    patch = (16, 16, 16)
    computed: list[np.ndarray] = []

    def counting_ramp(batch: np.ndarray) -> np.ndarray:
        computed.extend(batch)
        return ramp(batch)

    expected = monai_reference(volume, ramp, patch, 0.25, blend, batch_size)
    got = sliding_window_predict(
        volume, counting_ramp, patch, N_CLASSES, 0.25, blend, batch_size, output="logits"
    )
    assert np.max(np.abs(got - expected)) <= TOL
    plan = plan_tiles(volume.shape[1:], patch, 0.25)
    windows = [volume[:, x : x + 16, y : y + 16, z : z + 16] for x, y, z in plan.starts]
    constant = [w for w in windows if all(np.ptp(c) == 0 for c in w)]
    distinct = {w[:, 0, 0, 0].tobytes() for w in constant}
    assert len(distinct) == 2 and len(constant) > 10
    if batch_size == 1:  # each distinct constant window is computed exactly once
        assert len(computed) == len(windows) - len(constant) + len(distinct)
    else:  # a batch is skipped only when all of its windows are reused
        assert len(windows) - len(constant) + len(distinct) <= len(computed) < len(windows)
    computed.clear()
    every = sliding_window_predict(
        volume, counting_ramp, patch, N_CLASSES, 0.25, blend, batch_size, output="logits",
        reuse_constant=False,
    )  # fmt: skip
    assert len(computed) == len(windows) and np.array_equal(every, got)


@pytest.mark.parametrize(
    ("volume", "kwargs", "message"),
    [
        (np.zeros((20, 20, 20), np.float32), {}, r"4D \(C, X, Y, Z\), got 3D"),
        (np.zeros((1, 20, 20, 20), np.float64), {}, r"float32, got float64.*astype"),
        (np.zeros((2, 20, 20, 20), np.float32), {"in_channels": 1}, "2 channels.*expected 1"),
        (np.full((1, 20, 20, 20), np.nan, np.float32), {}, "NaN or infinite"),
        (np.full((1, 20, 20, 20), np.inf, np.float32), {}, "NaN or infinite"),
        (
            np.zeros((1, 20, 20, 20), np.float32),
            {"overlap": 1.0},
            r"overlap must be in \[0, 1\), got 1.0",
        ),
        (np.zeros((1, 20, 20, 20), np.float32), {"patch": (16, 0, 16)}, r"patch .*\(16, 0, 16\)"),
        (np.zeros((1, 20, 20, 20), np.float32), {"blend": "tent"}, "blend .*'tent'"),
        (np.zeros((1, 20, 20, 20), np.float32), {"output": "mask"}, "output .*'mask'"),
        (
            np.zeros((1, 20, 20, 20), np.float32),
            {"n_classes": 5},
            r"returned shape \(1, 3, .*expected \(1, 5",
        ),
    ],
)
def test_errors_say_what_was_expected(volume, kwargs, message) -> None:
    args = {"patch": (16, 16, 16), "n_classes": N_CLASSES, **kwargs}
    with pytest.raises(ValueError, match=message):
        sliding_window_predict(volume, times_two, **args)


def test_input_errors_are_input_errors() -> None:
    with pytest.raises(InputError):
        sliding_window_predict(np.zeros((1, 8, 8, 8), np.float16), times_two, (8, 8, 8), 3)


def _margins_of(predict):  # type: ignore[no-untyped-def]
    """A predictor of logit margins over class 0 from one of logits."""
    return lambda batch: (lambda logits: logits[:, 1:] - logits[:, :1])(predict(batch))


@pytest.mark.parametrize("blend", ["constant", "gaussian"])
@pytest.mark.parametrize("n_classes", [2, N_CLASSES])
def test_labels_from_margins_equal_argmax_of_blended_logits(blend, n_classes) -> None:
    volume = make_volume((2, 37, 50, 29), seed=4)
    kwargs = {"overlap": 0.5, "blend": blend, "batch_size": 2}

    def predict(batch):  # type: ignore[no-untyped-def]
        return ramp(batch)[:, :n_classes]

    logits = sliding_window_predict(
        volume, predict, (16, 16, 16), n_classes, output="logits", **kwargs
    )
    labels = sliding_window_predict(
        volume,
        _margins_of(predict),
        (16, 16, 16),
        n_classes,
        output="labels",
        margins=True,
        **kwargs,
    )
    expected = np.argmax(logits, axis=0)
    top2 = np.sort(logits, axis=0)[-2:]
    decided = top2[1] - top2[0] > 1e-4  # float32 sums of differences may flip exact near-ties
    assert len(np.unique(expected)) > 1 and decided.mean() > 0.99
    np.testing.assert_array_equal(labels[decided], expected[decided])


def test_margin_labels_keep_one_channel_of_buffers_for_two_classes() -> None:
    plan = plan_tiles((160, 24, 20), (16, 16, 16), 0.5)
    weight = importance_map(plan.patch, "constant")
    logits = StreamingLabelAccumulator(plan, 2, weight)
    margins = StreamingLabelAccumulator(plan, 2, weight, margins=True)
    assert margins.buffer_bytes * 3 == logits.buffer_bytes


def test_margins_output_is_blended_margins() -> None:
    volume = make_volume((2, 30, 20, 18), seed=6)
    kwargs = {"overlap": 0.25, "blend": "gaussian"}
    logits = sliding_window_predict(
        volume, ramp, (16, 16, 16), N_CLASSES, output="logits", **kwargs
    )
    margins = sliding_window_predict(
        volume, _margins_of(ramp), (16, 16, 16), N_CLASSES, output="margins", margins=True, **kwargs
    )
    np.testing.assert_allclose(margins, logits[1:] - logits[:1], atol=1e-4)
    with pytest.raises(ValueError, match="cannot be computed from margins"):
        sliding_window_predict(volume, ramp, (16, 16, 16), N_CLASSES, output="logits", margins=True)
