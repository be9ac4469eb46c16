"""Load upstream-format (or bare) VeloxSeg checkpoints safely and strictly.

Checkpoints are data, not code: they are read with ``torch.load(weights_only=True)``, which refuses
any pickle that would import or call arbitrary objects.
"""

from __future__ import annotations

import pickle
import warnings
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
        raise CheckpointError(f"checkpoint {path} does not exist; check the path")
    try:
        with warnings.catch_warnings():  # "Detected pickle protocol 4": noise in a 1-line error
            warnings.simplefilter("ignore")
            raw: Any = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # arbitrary bytes fail in arbitrary ways (KeyError, RuntimeError, ...)
        raise CheckpointError(
            f"{path} is not a VeloxSeg checkpoint that loads with torch.load(weights_only=True): "
            f"{_load_failure(e)}; pass a .pth saved by veloxseg train or upstream VeloxSeg"
        ) from e
    state = raw.get("model", raw) if isinstance(raw, dict) else None
    if (
        not isinstance(state, dict)
        or not state
        or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items())
    ):
        raise CheckpointError(
            f"{path} holds no state dict (expected tensors by name, or a 'model' entry of them); "
            "pass a .pth saved by veloxseg train or upstream VeloxSeg"
        )
    return {k.removeprefix("module."): v for k, v in state.items()}


def _suggest_config(state: dict[str, torch.Tensor]) -> str | None:
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    for name in CONFIG_NAMES:
        expected = {k: tuple(v.shape) for k, v in VeloxSeg(**get_config(name)).state_dict().items()}
        if expected == shapes:
            return name
    return None


_TORCH_BOILERPLATE = ("Weights only load failed", "Please file an issue", "Check the documentation")


def _load_failure(e: Exception) -> str:
    """The informative sentence of a ``torch.load`` failure: for a refused pickle, the blocked
    global or opcode without torch's paragraphs on ``weights_only=False`` (which would run the
    file's code)."""
    _, marker, detail = str(e).partition("WeightsUnpickler error:")
    lines = [line.strip() for line in (detail if marker else str(e)).splitlines()]
    reasons = [line for line in lines if line and not line.startswith(_TORCH_BOILERPLATE)]
    reason = reasons[0].split(". ")[0].rstrip(".") if reasons else ""
    if isinstance(e, KeyError | EOFError) or not reason:  # "KeyError: 101": bytes, not a pickle
        return f"not a torch.save file ({type(e).__name__}{': ' + reason if reason else ''})"
    if isinstance(e, pickle.UnpicklingError):
        return f"{reason} (refused: loading it any other way could run code)"
    return reason


def load_checkpoint(path: str | Path, config: str | Path | dict[str, Any]) -> nn.Module:
    """A :class:`VeloxSeg` in eval mode with the weights of ``path``, matched strictly.

    ``config`` is a registry name, a dict, or a JSON file. Training-only modules (reconstruction
    teachers, deep-supervision heads) load too, but the eval forward never runs them.
    """
    name, cfg = resolve_config(config)
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
        fix = (
            f"it fits config {suggestion!r}; export it with that config"
            if suggestion
            else "no known config fits it; pass the config it was trained with"
        )
        details = ", ".join(
            f"{kind} {_preview(keys)}"
            for kind, keys in (
                ("missing keys", missing),
                ("unexpected keys", unexpected),
                ("shape mismatches", mismatched),
            )
            if keys
        )
        raise CheckpointError(f"checkpoint {path} does not fit config {name!r}: {fix} ({details})")
    model.load_state_dict(state, strict=True)
    return model.eval()


def _preview(keys: list[str], limit: int = 2) -> str:
    """A few key names: enough to recognise the model, short enough to keep the fix in sight."""
    more = f" (+{len(keys) - limit} more)" if len(keys) > limit else ""
    return "[" + ", ".join(keys[:limit]) + "]" + more
