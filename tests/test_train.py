"""Training: loss, learning-rate schedule, data pipeline, and a CPU train/checkpoint/resume run."""

from __future__ import annotations

import json
import math
from itertools import pairwise
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from veloxseg.model import TrainOutput, load_checkpoint
from veloxseg.runtime.card import NORMALIZATION_FILE
from veloxseg.train.data import (
    PatchPool,
    build_pool,
    ct_statistics,
    generate_phantoms,
    normalize_case,
)
from veloxseg.train.losses import VeloxSegLoss, deep_supervision_weights, soft_dice_loss
from veloxseg.train.trainer import (
    FINAL_CHECKPOINT,
    LAST_CHECKPOINT,
    LOG_FILE,
    MODEL_FILE,
    TrainConfig,
    _DeadlineFit,
    build_schedulers,
    step_schedulers,
    train,
)

SMALL = (48, 48, 48)  # phantom size for tests; padded to the 96^3 patch


def _output(logits: torch.Tensor, inputs: torch.Tensor) -> TrainOutput:
    gram = torch.eye(4).expand(logits.shape[0], 4, 4)
    return TrainOutput([logits] * 4, inputs.clone(), gram, [gram, gram])


def test_seg_loss_prefers_the_right_answer() -> None:
    labels = torch.zeros(2, 8, 8, 8, dtype=torch.long)
    labels[:, 2:5, 2:5, 2:5] = 1
    onehot = torch.nn.functional.one_hot(labels, 2).permute(0, 4, 1, 2, 3).float()
    inputs = torch.randn(2, 2, 8, 8, 8)
    loss = VeloxSegLoss()
    right = loss(_output(20 * (2 * onehot - 1), inputs), labels, inputs)
    wrong = loss(_output(-20 * (2 * onehot - 1), inputs), labels, inputs)
    assert right.seg < 1e-3 < 1.0 < wrong.seg
    assert right.rc == 0 and right.sdkt == 0 and right.total == right.seg


def test_loss_weights_reconstruction_and_sdkt() -> None:
    labels = torch.randint(0, 2, (1, 8, 8, 8))
    inputs = torch.randn(1, 2, 8, 8, 8)
    out = _output(torch.randn(1, 2, 8, 8, 8), inputs)
    out = out._replace(reconstructions=inputs + 1, teacher_grams=[out.seg_gram + 1, out.seg_gram])
    terms = VeloxSegLoss()(out, labels, inputs)
    assert terms.rc.item() == pytest.approx(1.0) and terms.sdkt.item() == pytest.approx(0.5)
    assert terms.total.item() == pytest.approx(terms.seg.item() + 0.5 * 1.0 + 2.0 * 0.5)


def test_soft_dice_matches_monai() -> None:
    monai = pytest.importorskip("monai")
    logits, labels = torch.randn(2, 3, 6, 7, 8), torch.randint(0, 3, (2, 6, 7, 8))
    labels[1] = 0  # a sample without foreground
    reference = monai.losses.DiceLoss(include_background=False, to_onehot_y=True, softmax=True)
    expected = reference(logits, labels.unsqueeze(1))
    torch.testing.assert_close(soft_dice_loss(logits, labels), expected)


def test_deep_supervision_weights_normalise_as_upstream() -> None:
    assert deep_supervision_weights([1, 1, 1, 1], 4) == [0.25] * 4
    assert deep_supervision_weights([1, 1], 4) == [0.25] * 4
    assert deep_supervision_weights([2, 1, 1], 3) == [0.5, 0.25, 0.25]
    with pytest.raises(ValueError, match="one weight per output"):
        deep_supervision_weights([2, 1], 3)


def _schedule(config: TrainConfig) -> list[float]:
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=config.lr)
    warm, cosine = build_schedulers(optimizer, config)
    lrs = []
    for step in range(config.steps):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        step_schedulers(step + 1, warm, cosine, config)
    return lrs


def test_lr_warms_up_then_anneals_to_min_lr() -> None:
    config = TrainConfig(steps=50, warmup_steps=10, lr=1e-3, min_lr=1e-5)
    lrs = _schedule(config)
    assert lrs[0] == pytest.approx(1e-4) and lrs[9] == pytest.approx(1e-3)
    assert all(a < b for a, b in pairwise(lrs[:10]))
    assert all(a >= b for a, b in pairwise(lrs[9:]))
    assert lrs[-1] == pytest.approx(1e-5)
    assert lrs[30] == pytest.approx(1e-5 + (1e-3 - 1e-5) * (1 + math.cos(math.pi * 21 / 40)) / 2)


def test_default_warmup_keeps_upstream_share() -> None:
    assert TrainConfig(steps=3000).warmup_steps == 100
    with pytest.raises(ValueError, match="pool_size"):
        TrainConfig(pool_size=10_001)


def test_deadline_fit_shortens_the_cosine(monkeypatch: pytest.MonkeyPatch) -> None:
    config = TrainConfig(steps=1000, warmup_steps=40, fit_to_time_limit=True)
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=config.lr)
    _, cosine = build_schedulers(optimizer, config)
    state = SimpleNamespace(step=0, cosine=cosine, pool=SimpleNamespace(device=torch.device("cpu")))
    clock = iter([0.0, 20.0])  # steps 10 -> 30 take 20 s: 1 step/s
    monkeypatch.setattr("veloxseg.train.trainer.time.monotonic", lambda: next(clock))
    fit = _DeadlineFit(config, state, deadline=230.0)  # type: ignore[arg-type]
    for step in (10, 30):
        state.step = step
        fit.after_step(state, config)  # type: ignore[arg-type]
    assert config.steps == 30 + int(0.97 * (230 - 20 - 10))
    assert cosine.T_max == config.steps - 40


def test_ct_statistics_and_normalization() -> None:
    phantoms = generate_phantoms([0, 1], SMALL, workers=1)
    stats = ct_statistics(phantoms)
    assert stats["clip_low"] < stats["mean"] < stats["clip_high"] and stats["std"] > 0
    fg = np.concatenate([normalize_case(p.pet, p.ct, stats)[0][p.label > 0] for p in phantoms])
    assert fg.mean() == pytest.approx(0.0, abs=1e-3) and fg.std() == pytest.approx(1.0, rel=1e-3)
    pet = normalize_case(phantoms[0].pet, phantoms[0].ct, stats)[1]
    assert pet.dtype == np.float32
    assert pet.mean() == pytest.approx(0.0, abs=1e-4) and pet.std() == pytest.approx(1.0, rel=1e-4)


def test_patch_pool_pads_oversamples_and_replays() -> None:
    label = np.zeros((40, 100, 30), dtype=np.uint8)
    label[5, 90, 25] = 1
    image = np.random.default_rng(0).standard_normal((2, 40, 100, 30)).astype(np.float32)
    pool = PatchPool([image], [label], fg_fraction=1.0, seed=3)
    state = pool.state_dict()
    images, labels = pool.sample(4)
    assert images.shape == (4, 2, 96, 96, 96) and labels.shape == (4, 96, 96, 96)
    assert labels.dtype == torch.int64 and (labels.sum((1, 2, 3)) == 1).all()
    pool.load_state_dict(state)
    torch.testing.assert_close(pool.sample(4), (images, labels), rtol=0, atol=0)


def test_build_pool_refuses_held_out_seeds() -> None:
    with pytest.raises(ValueError, match="held out"):
        build_pool([0, 10_000], shape=SMALL)


@pytest.mark.slow
def test_train_checkpoint_and_resume_on_cpu(tmp_path: Path) -> None:
    common = dict(batch_size=1, pool_size=2, pool_shape=SMALL, warmup_steps=1, workers=1)
    config = TrainConfig(out_dir=tmp_path / "a", steps=3, checkpoint_every=2, log_every=1, **common)
    final = train(config, progress=False)
    rows = [json.loads(line) for line in (tmp_path / "a" / LOG_FILE).read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert all(math.isfinite(r[k]) for r in rows for k in ("loss", "seg", "rc", "sdkt", "dice"))
    assert rows[-1]["lr"] == pytest.approx(config.min_lr)

    ckpt = torch.load(final, map_location="cpu", weights_only=True)
    assert {"model", "optimizer", "warmup_scheduler", "training_scheduler", "epoch"} <= set(ckpt)
    assert ckpt["step"] == ckpt["epoch"] == 3 and all(
        k.startswith("module.") for k in ckpt["model"]
    )
    load_checkpoint(final, "autopetii")
    shipped = tmp_path / "a" / MODEL_FILE
    assert shipped.stat().st_size < 16 * 2**20
    model = load_checkpoint(shipped, "autopetii")
    norm = json.loads((tmp_path / "a" / NORMALIZATION_FILE).read_text())
    assert norm["modalities"] == ["CT", "PET"] and norm["normalization"][0]["scheme"] == "ct"

    again = TrainConfig(out_dir=tmp_path / "b", steps=3, **common)
    resumed = train(again, progress=False, resume=tmp_path / "a" / LAST_CHECKPOINT)
    assert resumed.name == FINAL_CHECKPOINT
    rows = [json.loads(line) for line in (tmp_path / "b" / LOG_FILE).read_text().splitlines()]
    assert [r["step"] for r in rows] == [3]
    # Same RNG, patches and optimizer state: resuming reproduces the uninterrupted run.
    for name, value in load_checkpoint(resumed, "autopetii").state_dict().items():
        torch.testing.assert_close(value, model.state_dict()[name], rtol=1e-5, atol=1e-6)


def test_time_limit_stops_and_still_saves(tmp_path: Path) -> None:
    config = TrainConfig(
        out_dir=tmp_path, steps=5, pool_size=1, pool_shape=SMALL, workers=1, time_limit_minutes=1e-9
    )
    final = train(config, progress=False)
    assert torch.load(final, map_location="cpu", weights_only=True)["step"] == 0
    assert (tmp_path / MODEL_FILE).is_file() and (tmp_path / NORMALIZATION_FILE).is_file()


@pytest.mark.slow
def test_train_command_writes_a_checkpoint_that_loads(tmp_path) -> None:
    from typer.testing import CliRunner

    from veloxseg.cli.app import app

    args = ["train", "-o", str(tmp_path), "--steps", "1", "--batch-size", "1", "--pool-size", "1",
            "--device", "cpu"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert f"final checkpoint: {tmp_path / 'checkpoint_final.pth'}" in result.output
    assert load_checkpoint(tmp_path / "checkpoint_final.pth", "autopetii").n_classes == 2


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a CUDA GPU")
def test_cuda_device_without_a_gpu_is_refused_before_any_work(tmp_path) -> None:
    with pytest.raises(ValueError, match="sees no CUDA GPU; use --device cpu"):
        TrainConfig(out_dir=tmp_path, device="cuda")
