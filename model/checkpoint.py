"""Load upstream-format (or bare) VeloxSeg checkpoints safely and strictly.

Checkpoints are data, not code: they are read with ``torch.load(weights_only=True)``, which refuses
any pickle that would import or call arbitrary objects.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch
from torch import nn

from veloxseg.model.configs import CONFIG_NAMES, get_config, resolve_config
from veloxseg.model.network import VeloxSeg

__all__ = ["TRAINING_ONLY_PREFIXES", "CheckpointError", "load_checkpoint", "read_state_dict"]

TRAINING_ONLY_PREFIXES = (
    "rc_decoders.",
    "decoder.out_conv2.",
    "decoder.out_conv3.",
    "decoder.out_conv4.",
)
"""State-dict prefixes of modules that training needs and inference never runs."""


class CheckpointError(ValueError):
    """A checkpoint is unreadable, unsafe, or does not fit the requested config."""


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The model state dict in ``path``, with any DDP ``module.`` prefix removed.

    Accepts upstream training checkpoints (``{"model": state_dict, ...}``) and bare state dicts.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        raw: Any = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"refused to load {path}: it is not a plain-weights checkpoint and loading it could "
            f"run code ({str(e).splitlines()[0]}). Re-save it as a state dict from trusted code."
        ) from e
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        raise CheckpointError(f"cannot read checkpoint {path}: {e}") from e
    state = raw.get("model", raw) if isinstance(raw, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path} holds no state dict (expected tensors, or a 'model' entry)")
    return {k.removeprefix("module."): v for k, v in state.items()}


def _suggest_config(state: dict[str, torch.Tensor]) -> str | None:
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    for name in CONFIG_NAMES:
        expected = {k: tuple(v.shape) for k, v in VeloxSeg(**get_config(name)).state_dict().items()}
        if expected == shapes:
            return name
    return None


def load_checkpoint(path: str | Path, config: str | Path | dict[str, Any]) -> nn.Module:
    """A :class:`VeloxSeg` in eval mode with the weights of ``path``, matched strictly.

    ``config`` is a registry name, a dict, or a JSON file. Training-only modules (reconstruction
    teachers, deep-supervision heads) load too, but the eval forward never runs them.
    """
    _, cfg = resolve_config(config)
    model = VeloxSeg(**cfg)
    state = read_state_dict(path)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = sorted(
        k for k in set(state) & set(expected) if tuple(state[k].shape) != tuple(expected[k].shape)
    )
    if missing or unexpected or mismatched:
        suggestion = _suggest_config(state)
        hint = f" The checkpoint fits config {suggestion!r}." if suggestion else ""
        raise CheckpointError(
            f"checkpoint {path} does not fit the config: "
            f"missing keys {_preview(missing)}, unexpected keys {_preview(unexpected)}, "
            f"shape mismatches {_preview(mismatched)}.{hint}"
        )
    model.load_state_dict(state, strict=True)
    return model.eval()


def _preview(keys: list[str], limit: int = 5) -> str:
    if not keys:
        return "none"
    more = f" (+{len(keys) - limit} more)" if len(keys) > limit else ""
    return "[" + ", ".join(keys[:limit]) + "]" + more
