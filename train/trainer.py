"""Train VeloxSeg on phantom PET/CT with the upstream recipe, and save upstream-format checkpoints.

Why: the runtime needs trained weights whose provenance is reproducible here. The recipe follows
upstream (AdamW 2.5e-4, weight decay 0.01, linear warm-up then cosine to 6e-6, deep-supervised
Dice + CE + 0.5 reconstruction + 2.0 SDKT), counted in optimizer steps instead of epochs. The
checkpoint has upstream's keys (``model`` with the DDP ``module.`` prefix, ``optimizer``,
``warmup_scheduler``, ``training_scheduler``, ``epoch``, ``best_train_dice``, ``best_val_dice``)
plus ``step``, ``config`` and RNG state so that a run resumes exactly where it stopped.

Files written to ``out_dir``: ``checkpoint_last.pth`` (periodic), ``checkpoint_final.pth``,
``model_final.pth`` (``{"model": state_dict}``, fp32 weights only, for shipping),
``normalization.json`` (modality order and intensity schemes for the model card) and
``train_log.jsonl`` (one row per ``log_every`` steps).
"""

from __future__ import annotations

import json
import math
import os
import re
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.optim import AdamW
from torch.optim.lr_scheduler import CosineAnnealingLR, LambdaLR

from veloxseg.model import VeloxSeg, get_config
from veloxseg.runtime.card import NORMALIZATION_FILE
from veloxseg.train.data import HELD_OUT_FIRST_SEED, PatchPool, build_pool, normalization_record
from veloxseg.train.losses import LossTerms, VeloxSegLoss
from veloxseg.train.phantom import DEFAULT_SPACING

__all__ = [
    "FINAL_CHECKPOINT",
    "LAST_CHECKPOINT",
    "LOG_FILE",
    "MODEL_FILE",
    "RUN_FIELDS",
    "TrainConfig",
    "build_schedulers",
    "read_resume",
    "step_schedulers",
    "train",
    "train_main",
]

TRAINED_CONFIG = "autopetii"  # the phantoms are PET/CT, the data this config takes
# What a run's schedule and pool are built from: a resumed run keeps the checkpoint's.
RUN_FIELDS = ("steps", "warmup_steps", "lr", "min_lr", "weight_decay", "pool_size", "pool_shape",
              "seed")  # fmt: skip

FINAL_CHECKPOINT = "checkpoint_final.pth"
LAST_CHECKPOINT = "checkpoint_last.pth"
MODEL_FILE = "model_final.pth"
LOG_FILE = "train_log.jsonl"
_UPSTREAM_WARMUP_FRACTION = 10 / 300  # upstream: 10 warm-up epochs of 300
_FINISH_RESERVE_S = 10.0  # time kept back for the final checkpoint and weights file


@dataclass
class TrainConfig:
    """One training run. ``warmup_steps=None`` keeps upstream's warm-up share of the run;
    ``time_limit_minutes`` (from the call to :func:`train`) stops early and still saves, and with
    ``fit_to_time_limit`` the step count is first cut to what fits, so the schedule completes;
    ``pool_shape=None`` uses the phantom's own whole-body sizes; ``amp`` is bf16 autocast and
    applies on CUDA only; ``device="auto"`` picks CUDA when available."""

    out_dir: Path = Path("runs/train")
    steps: int = 3000
    batch_size: int = 8
    lr: float = 2.5e-4
    weight_decay: float = 0.01
    warmup_steps: int | None = None
    min_lr: float = 6e-6
    pool_size: int = 64
    pool_shape: tuple[int, int, int] | None = None
    seed: int = 0
    device: str = "auto"
    amp: bool = True
    compile: bool = False
    checkpoint_every: int = 500
    log_every: int = 10
    time_limit_minutes: float | None = None
    fit_to_time_limit: bool = False
    workers: int | None = None

    def __post_init__(self) -> None:
        self.out_dir = Path(self.out_dir)
        if self.warmup_steps is None:
            share = max(1, round(self.steps * _UPSTREAM_WARMUP_FRACTION))
            self.warmup_steps = min(self.steps - 1, share)
        for name in ("steps", "batch_size", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.time_limit_minutes is not None and not self.time_limit_minutes > 0:
            raise ValueError(f"time limit must be a positive number of minutes, got "
                             f"{self.time_limit_minutes}")  # fmt: skip
        if self.device not in ("auto", "cpu") and not re.fullmatch(r"cuda(:\d+)?", self.device):
            raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {self.device!r}")
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise ValueError(
                f"device {self.device!r} asked for, but this torch ({torch.__version__}) sees no "
                "CUDA GPU; use --device cpu or auto"
            )
        if not 0 <= self.warmup_steps < self.steps:
            raise ValueError(
                f"warmup_steps must lie in [0, steps={self.steps}), got {self.warmup_steps}"
            )
        if not 0 < self.pool_size <= HELD_OUT_FIRST_SEED:
            raise ValueError(
                f"pool_size must lie in [1, {HELD_OUT_FIRST_SEED}], got "
                f"{self.pool_size}; seeds from {HELD_OUT_FIRST_SEED} are held out"
            )
        if not 0 < self.min_lr <= self.lr:
            raise ValueError(f"need 0 < min_lr <= lr, got min_lr={self.min_lr}, lr={self.lr}")

    def record(self) -> dict[str, Any]:
        """Plain-typed copy for checkpoints and logs (loadable with ``weights_only=True``)."""
        return {**asdict(self), "out_dir": str(self.out_dir)}


def build_schedulers(
    optimizer: torch.optim.Optimizer, config: TrainConfig
) -> tuple[LambdaLR, CosineAnnealingLR]:
    """Upstream's pair, per step: a linear warm-up ``LambdaLR`` reaching ``lr`` on the last
    warm-up step, then ``CosineAnnealingLR`` reaching ``min_lr`` on the last training step."""
    warmup = max(1, int(config.warmup_steps or 0))
    warm = LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / warmup))
    cosine = CosineAnnealingLR(
        optimizer, T_max=max(1, config.steps - warmup), eta_min=config.min_lr
    )
    return warm, cosine


def step_schedulers(
    done: int, warm: LambdaLR, cosine: CosineAnnealingLR, config: TrainConfig
) -> None:
    """Advance the learning rate after ``done`` optimizer steps have completed."""
    (warm if done < max(1, int(config.warmup_steps or 0)) else cosine).step()


@dataclass
class _State:
    """Everything a checkpoint holds, so saving and resuming stay in one place."""

    model: VeloxSeg
    optimizer: AdamW
    warm: LambdaLR
    cosine: CosineAnnealingLR
    pool: PatchPool
    step: int = 0
    best_dice: float = 0.0
    config: dict[str, Any] = field(default_factory=dict)

    def save(self, path: Path) -> Path:
        """Write atomically, so a run killed mid-save leaves the previous checkpoint intact."""
        rng: dict[str, Any] = {"torch": torch.get_rng_state(), "pool": self.pool.state_dict()}
        if torch.cuda.is_available() and self.pool.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.pool.device)
        state = {
            "model": {"module." + k: v for k, v in self.model.state_dict().items()},
            "optimizer": self.optimizer.state_dict(),
            "warmup_scheduler": self.warm.state_dict(),
            "training_scheduler": self.cosine.state_dict(),
            "epoch": self.step,  # upstream stores the next epoch to run; here, steps done
            "best_train_dice": self.best_dice,
            "best_val_dice": 0.0,  # no validation split: phantoms >= 10000 are evaluated apart
            "step": self.step,
            "config": self.config,
            "rng": rng,
        }
        tmp = path.with_suffix(".tmp")
        torch.save(state, tmp)
        os.replace(tmp, path)
        return path

    def restore(self, ckpt: dict[str, Any]) -> None:
        """Continue from a checkpoint :func:`read_resume` has read and checked."""
        self.model.load_state_dict({k.removeprefix("module."): v for k, v in ckpt["model"].items()})
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.warm.load_state_dict(ckpt["warmup_scheduler"])
        self.cosine.load_state_dict(ckpt["training_scheduler"])
        self.step, self.best_dice = int(ckpt["step"]), float(ckpt["best_train_dice"])
        torch.set_rng_state(ckpt["rng"]["torch"])
        self.pool.load_state_dict(ckpt["rng"]["pool"])
        if "cuda" in ckpt["rng"] and self.pool.device.type == "cuda":
            torch.cuda.set_rng_state(ckpt["rng"]["cuda"], self.pool.device)


def _train_step(
    model: nn.Module,
    loss_fn: VeloxSegLoss,
    optimizer: torch.optim.Optimizer,
    batch: tuple[torch.Tensor, torch.Tensor],
    amp: bool,
) -> torch.Tensor:
    """One optimizer step. Returns, without a device sync, ``[total, seg, rc, sdkt,
    2 |P & R|, |P| + |R|]`` where P, R are the full-resolution foreground prediction and label."""
    images, labels = batch
    with torch.autocast(images.device.type, dtype=torch.bfloat16, enabled=amp):
        output = model(images)
    terms: LossTerms = loss_fn(output, labels, images)
    optimizer.zero_grad(set_to_none=True)
    terms.total.backward()
    optimizer.step()
    with torch.no_grad():
        pred, ref = output.logits[0].argmax(1) > 0, labels > 0
        overlap = torch.stack([2 * (pred & ref).sum(), pred.sum() + ref.sum()]).float()
        return torch.cat([torch.stack([t.detach() for t in terms]), overlap])


_COLUMNS = ("loss", "seg", "rc", "sdkt")


class _Log:
    """Sums step statistics on the device and writes a JSONL row every ``log_every`` steps;
    syncing only then keeps the GPU queue full."""

    def __init__(self, path: Path, session_start: int, device: torch.device) -> None:
        self.file = path.open("a")
        self.sums = torch.zeros(6, device=device)
        self.count = 0
        self.start_step, self.t0 = session_start, time.monotonic()

    def add(self, stats: torch.Tensor) -> None:
        self.sums += stats
        self.count += 1

    def flush(self, step: int, lr: float) -> dict[str, Any]:
        values = self.sums.tolist()
        if not all(math.isfinite(v) for v in values[:4]):
            raise FloatingPointError(
                f"training loss became non-finite by step {step} ({values[:4]}); "
                "lower the learning rate or turn off amp"
            )
        elapsed = time.monotonic() - self.t0
        row = {"step": step, "lr": lr}
        row.update({k: v / max(self.count, 1) for k, v in zip(_COLUMNS, values, strict=False)})
        row["dice"] = values[4] / values[5] if values[5] > 0 else 1.0
        row["elapsed_s"] = round(elapsed, 2)
        row["steps_per_s"] = round((step - self.start_step) / max(elapsed, 1e-9), 3)
        self.file.write(json.dumps(row) + "\n")
        self.file.flush()
        self.sums.zero_()
        self.count = 0
        return row

    def close(self) -> None:
        self.file.close()


class _Progress:
    """A rich bar on an interactive stderr; otherwise a plain line at most every 15 s, which
    reads well in captured logs and needs no rich (GPU hosts may lack it)."""

    def __init__(self, enabled: bool, total: int, done: int) -> None:
        self.enabled, self.last = enabled, 0.0
        self.bar: Any = None
        if enabled and sys.stderr.isatty():
            try:
                from rich.console import Console
                from rich.progress import Progress
            except ImportError:
                return
            self.bar = Progress(console=Console(stderr=True))
            self.bar.start()
            self.task = self.bar.add_task("training", total=total, completed=done)

    def update(self, step: int, total: int, row: dict[str, Any] | None) -> None:
        text = (
            ""
            if row is None
            else (
                f"loss {row['loss']:.4f} seg {row['seg']:.4f} dice {row['dice']:.3f} "
                f"{row['steps_per_s']:.2f} steps/s"
            )
        )
        if self.bar is not None:
            described = {"description": text} if text else {}
            self.bar.update(self.task, completed=step, total=total, **described)
        elif self.enabled and text and time.monotonic() - self.last >= 15.0:
            self.last = time.monotonic()
            print(f"step {step}/{total} {text}", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


class _DeadlineFit:
    """Cuts ``config.steps`` to what fits before the deadline, timed during warm-up (before the
    cosine starts), so a time-limited run still anneals to ``min_lr`` instead of stopping at a
    high learning rate. Only for fresh runs with at least 8 warm-up steps."""

    def __init__(self, config: TrainConfig, state: _State, deadline: float) -> None:
        self.warm = max(1, int(config.warmup_steps or 0))
        self.first, self.last = self.warm // 4, 3 * self.warm // 4
        self.deadline, self.t_first = deadline, 0.0
        fresh = state.step == 0 and self.warm >= 8
        self.active = config.fit_to_time_limit and math.isfinite(deadline) and fresh

    def after_step(self, state: _State, config: TrainConfig) -> None:
        if not self.active or state.step not in (self.first, self.last):
            return
        if state.pool.device.type == "cuda":
            torch.cuda.synchronize(state.pool.device)
        now = time.monotonic()
        if state.step == self.first:
            self.t_first = now
            return
        self.active = False
        rate = (self.last - self.first) / max(now - self.t_first, 1e-9)
        fit = state.step + int(0.97 * rate * (self.deadline - now - _FINISH_RESERVE_S))
        if fit < config.steps:
            config.steps = max(fit, self.warm + 1)
            state.cosine.T_max = config.steps - self.warm
            state.config = config.record()
            print(
                f"at {rate:.2f} steps/s the time limit allows {config.steps} steps; "
                "schedule shortened to match",
                file=sys.stderr,
            )


def _resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _setup(config: TrainConfig, device: torch.device, resuming: bool) -> _State:
    """Pool, model, optimizer and schedulers; also writes ``normalization.json``, except where a
    resumed run's folder has it (the same seeds give the same pool, so the same statistics)."""
    torch.manual_seed(config.seed)
    model_config = get_config(TRAINED_CONFIG)
    seeds = range(config.pool_size)
    pool, stats = build_pool(
        seeds, device, model_config["input_size"], config.pool_shape, config.workers, config.seed
    )
    record = {
        **normalization_record(stats),
        "spacing": list(DEFAULT_SPACING),
        "train_seeds": [seeds.start, seeds.stop],
    }
    if not (resuming and (config.out_dir / NORMALIZATION_FILE).is_file()):
        (config.out_dir / NORMALIZATION_FILE).write_text(json.dumps(record, indent=2) + "\n")
    model = VeloxSeg(**model_config).to(device).train()
    optimizer = AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    warm, cosine = build_schedulers(optimizer, config)
    return _State(model, optimizer, warm, cosine, pool, config=config.record())


def _finish(state: _State, out_dir: Path) -> Path:
    """Final checkpoint plus the small weights-only file for shipping."""
    weights = {
        k: (v.float() if v.is_floating_point() else v).detach().cpu()
        for k, v in state.model.state_dict().items()
    }
    torch.save({"model": weights}, out_dir / MODEL_FILE)
    return state.save(out_dir / FINAL_CHECKPOINT)


def _loop(
    state: _State,
    config: TrainConfig,
    forward: nn.Module,
    log: _Log,
    bar: _Progress,
    deadline: float,
) -> None:
    """Step until ``config.steps`` or ``deadline``, logging and checkpointing on schedule."""
    loss_fn = VeloxSegLoss()
    amp = config.amp and state.pool.device.type == "cuda"
    fit = _DeadlineFit(config, state, deadline)
    while state.step < config.steps and time.monotonic() < deadline:
        batch = state.pool.sample(config.batch_size)
        log.add(_train_step(forward, loss_fn, state.optimizer, batch, amp))
        lr = state.optimizer.param_groups[0]["lr"]
        state.step += 1
        step_schedulers(state.step, state.warm, state.cosine, config)
        fit.after_step(state, config)
        row = None
        if state.step % config.log_every == 0 or state.step == config.steps:
            row = log.flush(state.step, lr)
            state.best_dice = max(state.best_dice, row["dice"])
        if config.checkpoint_every and state.step % config.checkpoint_every == 0:
            state.save(config.out_dir / LAST_CHECKPOINT)
        bar.update(state.step, config.steps, row)
    if log.count:
        log.flush(state.step, state.optimizer.param_groups[0]["lr"])


def read_resume(path: str | Path) -> dict[str, Any]:
    """The training checkpoint at ``path``, or one line saying why it cannot be resumed."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"--resume {path} does not exist; pass a run's {LAST_CHECKPOINT}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for a file that is not a checkpoint
        raise ValueError(
            f"--resume {path} is not a training checkpoint ({type(e).__name__}); pass a run's "
            f"{LAST_CHECKPOINT} or {FINAL_CHECKPOINT}"
        ) from e
    if not isinstance(ckpt, dict) or not {"optimizer", "step", "config", "rng"} <= set(ckpt):
        raise ValueError(
            f"--resume {path} holds no training state (weights only?); pass a run's "
            f"{LAST_CHECKPOINT} or {FINAL_CHECKPOINT}"
        )
    return ckpt


def _plain(value: Any) -> Any:
    return json.loads(json.dumps(value))  # tuples as lists, as checkpoints store them


def _check_resumable(config: TrainConfig, ckpt: dict[str, Any], path: Path) -> None:
    """A resumed run must keep the settings its schedule and pool were built from, and have
    steps left to run."""
    stored = ckpt["config"]
    changed = [f for f in RUN_FIELDS if _plain(getattr(config, f)) != _plain(stored.get(f))]
    if changed:
        was = ", ".join(f"{f}={stored.get(f)} (here {getattr(config, f)})" for f in changed)
        raise ValueError(
            f"--resume {path} was trained with {was}; resume with the checkpoint's settings "
            "(leave them out), or start a new run in another folder"
        )
    if int(ckpt["step"]) >= config.steps:
        raise ValueError(
            f"--resume {path} has finished its {config.steps} steps; start a new run in "
            "another folder to train longer"
        )


def _check_run_folder(out_dir: Path, resuming: bool, overwrite: bool) -> None:
    """Refuse a file as the run folder, and a folder holding another run unless resuming it or
    ``overwrite`` (which removes that run's files first)."""
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"-o {out_dir} is a file; pass a folder for the run")
    run_files = [out_dir / n for n in (LOG_FILE, LAST_CHECKPOINT, FINAL_CHECKPOINT, MODEL_FILE)]
    if resuming or not any(p.exists() for p in run_files):
        return
    if not overwrite:
        raise ValueError(
            f"{out_dir} holds a training run; continue it with --resume "
            f"{out_dir / LAST_CHECKPOINT}, replace it with --overwrite, or choose another -o"
        )
    for path in run_files:
        path.unlink(missing_ok=True)


def train(
    config: TrainConfig,
    progress: bool = True,
    resume: str | Path | None = None,
    overwrite: bool = False,
) -> Path:
    """Run (or, from checkpoint ``resume``, continue) training; returns the final checkpoint.

    A resumed run continues from the stored step with the stored optimizer, schedules and RNG
    state, and must keep the settings they were built from (:data:`RUN_FIELDS`); the pool is
    regenerated from ``config``. Ctrl-C or SIGTERM saves ``checkpoint_last.pth`` to resume
    from. On CUDA, enables cuDNN autotuning and TF32 matmuls for this process.
    """
    t0 = time.monotonic()
    config = replace(config)  # the run may shorten ``steps``; leave the caller's copy alone
    ckpt = read_resume(resume) if resume is not None else None
    if ckpt is not None:
        _check_resumable(config, ckpt, Path(resume))  # type: ignore[arg-type]
    _check_run_folder(config.out_dir, ckpt is not None, overwrite)
    deadline = t0 + 60 * config.time_limit_minutes if config.time_limit_minutes else math.inf
    device = _resolve_device(config.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.set_float32_matmul_precision("high")
    config.out_dir.mkdir(parents=True, exist_ok=True)
    state = _setup(config, device, resuming=ckpt is not None)
    if ckpt is not None:
        state.restore(ckpt)
        if progress:
            print(f"resumed from {resume} at step {state.step}", file=sys.stderr)
    forward = torch.compile(state.model) if config.compile else state.model
    log = _Log(config.out_dir / LOG_FILE, state.step, device)
    bar = _Progress(progress, config.steps, state.step)
    interrupted = False
    try:
        _loop(state, config, forward, log, bar, deadline)
    except (KeyboardInterrupt, SystemExit):  # Ctrl-C, or SIGTERM as the CLI raises it
        interrupted = True
        raise
    finally:
        bar.close()
        log.close()
        if interrupted and state.step > log.start_step:
            saved = state.save(config.out_dir / LAST_CHECKPOINT)
            print(f"interrupted at step {state.step}/{config.steps}; saved {saved}; continue "
                  f"with --resume {saved}", file=sys.stderr)  # fmt: skip
    final = _finish(state, config.out_dir)
    if progress:
        rate = (state.step - log.start_step) / max(time.monotonic() - log.t0, 1e-9)
        stopped = "" if state.step >= config.steps else " (time limit reached)"
        print(
            f"trained to step {state.step}/{config.steps}{stopped} at {rate:.2f} steps/s "
            f"on {device}; total {time.monotonic() - t0:.0f} s; saved {final}",
            file=sys.stderr,
        )
    return final


def train_main(
    out_dir: str | Path,
    steps: int | None = None,
    batch_size: int = 8,
    pool_size: int | None = None,
    device: str = "auto",
    resume: str | Path | None = None,
    time_limit_minutes: float | None = None,
    overwrite: bool = False,
    **options: Any,
) -> Path:
    """Entry point for ``veloxseg train``: the common knobs as arguments, the rest of
    :class:`TrainConfig` as keyword ``options`` (e.g. ``amp=False``, ``compile=True``). Settings
    left out take :class:`TrainConfig`'s defaults, or when resuming the checkpoint's."""
    progress = bool(options.pop("progress", True))
    stored = read_resume(resume)["config"] if resume is not None else {}
    settings = {f: stored[f] for f in RUN_FIELDS if f in stored and f not in options}
    if settings.get("pool_shape") is not None:
        settings["pool_shape"] = tuple(settings["pool_shape"])
    for name, value in (("steps", steps), ("pool_size", pool_size)):
        if value is not None:
            settings[name] = value
    config = TrainConfig(
        out_dir=Path(out_dir),
        batch_size=batch_size,
        device=device,
        time_limit_minutes=time_limit_minutes,
        **settings,
        **options,
    )
    return train(config, progress=progress, resume=resume, overwrite=overwrite)
