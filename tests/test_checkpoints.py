"""Checkpoints as training loops save them load: wrapped in a dict entry (upstream, Lightning,
plain PyTorch, MONAI), with DDP and torch.compile prefixes, and without the training-only
modules; what is not a checkpoint is refused in one line that says what the file holds."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from veloxseg.model import VeloxSeg, get_config, load_checkpoint, seeded_state_dict
from veloxseg.model.checkpoint import TRAINING_ONLY_PREFIXES, CheckpointError


@pytest.fixture(scope="module")
def state() -> dict[str, torch.Tensor]:
    return seeded_state_dict(VeloxSeg(**get_config("autopetii")), 11)


def _prefixed(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {prefix + k: v for k, v in state.items()}


def _assert_loaded(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    loaded = model.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in state.items())


@pytest.mark.parametrize("entry", ["state_dict", "model_state_dict", "net"])
def test_checkpoint_with_its_state_dict_under_a_training_loops_entry_loads(
    tmp_path: Path, state: dict[str, torch.Tensor], entry: str
) -> None:
    path = tmp_path / "c.pth"
    torch.save({entry: _prefixed(state, "module."), "epoch": 10}, path)
    _assert_loaded(load_checkpoint(path, "autopetii"), state)


def test_lightning_checkpoint_loads_without_its_attribute_prefix(
    tmp_path: Path, state: dict[str, torch.Tensor]
) -> None:
    path = tmp_path / "c.pth"
    torch.save({"state_dict": _prefixed(state, "model._orig_mod."), "global_step": 5}, path)
    _assert_loaded(load_checkpoint(path, "autopetii"), state)


@pytest.mark.parametrize("prefix", ["_orig_mod.", "module._orig_mod.", "_orig_mod.module."])
def test_torch_compile_checkpoint_loads_in_either_prefix_order(
    tmp_path: Path, state: dict[str, torch.Tensor], prefix: str
) -> None:
    path = tmp_path / "c.pth"
    torch.save({"model": _prefixed(state, prefix)}, path)
    _assert_loaded(load_checkpoint(path, "autopetii"), state)


def test_checkpoint_without_a_state_dict_lists_the_keys_it_holds(tmp_path: Path) -> None:
    path = tmp_path / "c.pth"
    torch.save({"weights": {"a": 1}, "epoch": 3}, path)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path, "autopetii")
    message = str(info.value)
    assert "its top-level keys are ['weights', 'epoch']" in message
    assert "'state_dict'" in message and "\n" not in message


def test_inference_only_checkpoint_gives_the_logits_of_the_full_one(
    tmp_path: Path, state: dict[str, torch.Tensor]
) -> None:
    torch.save(state, tmp_path / "full.pth")
    inference = {k: v for k, v in state.items() if not k.startswith(TRAINING_ONLY_PREFIXES)}
    assert len(inference) < len(state)
    torch.save(inference, tmp_path / "inference.pth")
    x = torch.randn(1, 2, 96, 96, 96, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        full = load_checkpoint(tmp_path / "full.pth", "autopetii")(x)
        stripped = load_checkpoint(tmp_path / "inference.pth", "autopetii")(x)
    assert torch.equal(stripped, full)


def test_inference_only_checkpoint_of_another_config_names_that_config(
    tmp_path: Path, state: dict[str, torch.Tensor]
) -> None:
    inference = {k: v for k, v in state.items() if not k.startswith(TRAINING_ONLY_PREFIXES)}
    torch.save(inference, tmp_path / "c.pth")
    with pytest.raises(CheckpointError, match="it fits config 'autopetii'"):
        load_checkpoint(tmp_path / "c.pth", "brats2021")


def test_checkpoint_missing_an_inference_weight_is_still_refused(
    tmp_path: Path, state: dict[str, torch.Tensor]
) -> None:
    torch.save(
        {k: v for k, v in state.items() if k != "decoder.out_conv1.0.bias"}, tmp_path / "c.pth"
    )
    with pytest.raises(CheckpointError, match=r"missing keys \[decoder.out_conv1.0.bias\]"):
        load_checkpoint(tmp_path / "c.pth", "autopetii")
