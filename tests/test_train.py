"""Training: loss, learning-rate schedule, data pipeline, and a CPU train/checkpoint/resume run."""

from __future__ import annotations

import json
import math
import signal
import subprocess
import sys
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
    train_main,
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


TINY = dict(batch_size=1, pool_size=1, pool_shape=SMALL, warmup_steps=1, workers=1, log_every=1)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 3-step run whose checkpoint_last.pth is at step 2."""
    out = tmp_path_factory.mktemp("run")
    train(TrainConfig(out_dir=out, steps=3, checkpoint_every=2, **TINY), progress=False)
    return out


def test_resume_keeps_the_checkpoints_schedule_and_refuses_to_change_it(finished_run, tmp_path):
    options = {k: v for k, v in TINY.items() if k not in ("pool_size", "batch_size")}
    with pytest.raises(ValueError, match=r"was trained with steps=3 \(here 9\)"):
        train_main(tmp_path, steps=9, resume=finished_run / LAST_CHECKPOINT, progress=False,
                   **options)  # fmt: skip
    final = train_main(tmp_path, resume=finished_run / LAST_CHECKPOINT, progress=False, **options)
    ckpt = torch.load(final, map_location="cpu", weights_only=True)
    assert ckpt["step"] == 3 and ckpt["config"]["steps"] == 3  # the stored run's length


def test_resume_refuses_a_finished_run_and_a_weights_only_file(finished_run, tmp_path):
    config = TrainConfig(out_dir=tmp_path, steps=3, **TINY)
    with pytest.raises(ValueError, match="has finished its 3 steps"):
        train(config, progress=False, resume=finished_run / FINAL_CHECKPOINT)
    with pytest.raises(ValueError, match="holds no training state"):
        train(config, progress=False, resume=finished_run / MODEL_FILE)
    assert not tmp_path.joinpath(NORMALIZATION_FILE).exists()  # refused before any work


def test_resume_keeps_the_runs_normalization_file(finished_run):
    norm = finished_run / NORMALIZATION_FILE
    norm.write_text(norm.read_text().replace('"train_seeds"', '"kept": true, "train_seeds"'))
    stored = norm.read_text()
    train(TrainConfig(out_dir=finished_run, steps=3, **TINY), progress=False,
          resume=finished_run / LAST_CHECKPOINT)  # fmt: skip
    assert norm.read_text() == stored


def test_a_new_run_into_a_run_folder_needs_overwrite(finished_run, tmp_path):
    config = TrainConfig(out_dir=finished_run, steps=2, **TINY)
    with pytest.raises(ValueError, match="holds a training run; continue it with --resume"):
        train(config, progress=False)
    train(config, progress=False, overwrite=True)  # the old run's log and checkpoints go
    rows = [json.loads(line) for line in (finished_run / LOG_FILE).read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2] and not (finished_run / LAST_CHECKPOINT).exists()
    file = tmp_path / "a file"
    file.write_text("")
    with pytest.raises(ValueError, match="is a file; pass a folder"):
        train(TrainConfig(out_dir=file, steps=2, **TINY), progress=False)


@pytest.mark.parametrize(
    ("field", "value", "wanted"),
    [
        ("time_limit_minutes", 0.0, "time limit must be a positive"),
        ("time_limit_minutes", float("nan"), "time limit must be a positive"),
        ("device", "gpu", "device must be auto, cpu, cuda or cuda:N"),
        ("steps", 0, "steps must be at least 1"),
    ],
)
def test_bad_run_settings_are_refused_in_one_line(tmp_path, field, value, wanted):
    with pytest.raises(ValueError, match=wanted):
        TrainConfig(out_dir=tmp_path, **{field: value})


@pytest.mark.slow
def test_ctrl_c_saves_a_checkpoint_to_resume_from(tmp_path):
    code = (
        "import sys\n"
        "from veloxseg.train.trainer import train_main\n"
        "train_main(sys.argv[1], steps=10_000, batch_size=1, pool_size=1, pool_shape=(48, 48, 48),"
        " workers=1, log_every=1, checkpoint_every=0)\n"
    )
    run = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stderr=subprocess.PIPE,
                           text=True)  # fmt: skip
    log = tmp_path / LOG_FILE
    while not (log.exists() and log.read_text().count("\n") >= 2):
        assert run.poll() is None, run.communicate()[1]
    run.send_signal(signal.SIGINT)
    _, err = run.communicate(timeout=120)
    saved = tmp_path / LAST_CHECKPOINT
    assert "interrupted at step" in err and f"--resume {saved}" in err, err
    assert torch.load(saved, map_location="cpu", weights_only=True)["step"] >= 2
