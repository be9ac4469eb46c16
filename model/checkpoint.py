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


_STATE_ENTRIES = ("model", "state_dict", "model_state_dict", "net")
"""Where training loops keep the weights: upstream VeloxSeg, Lightning, plain PyTorch, MONAI."""
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")
"""Added by DDP/DataParallel and by ``torch.compile``, nested in either order."""
_TOP_LEVEL_MODULES = ("encoder", "decoder", "rc_decoders")
"""VeloxSeg's own first names: a shared first name other than these is a wrapper's attribute."""


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The model state dict in ``path``, with wrapper prefixes removed.

    Accepts bare state dicts and training checkpoints that keep one under ``model`` (upstream),
    ``state_dict`` (Lightning), ``model_state_dict`` or ``net``. Strips DDP's ``module.`` and
    ``torch.compile``'s ``_orig_mod.``, and a Lightning-style attribute prefix (``model.``) that
    every key shares, so that the names are the network's own.
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
    state = _find_state(raw)
    if state is None:
        found = (
            f"its top-level keys are {_preview([repr(k) for k in raw], limit=6)}"
            if isinstance(raw, dict)
            else f"it holds a {type(raw).__name__}"
        )
        entries = ", ".join(repr(e) for e in _STATE_ENTRIES)
        raise CheckpointError(
            f"{path} holds no state dict (expected tensors by name, bare or under one of "
            f"{entries}; {found}); pass a .pth saved by veloxseg train or upstream VeloxSeg"
        )
    return _strip_prefixes(state)


def _is_state(value: Any) -> bool:
    return (
        isinstance(value, dict)
        and bool(value)
        and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in value.items())
    )


def _find_state(raw: Any) -> dict[str, torch.Tensor] | None:
    """``raw`` itself if it is a state dict, else its first entry of :data:`_STATE_ENTRIES` that
    is one."""
    if _is_state(raw):
        return raw
    if isinstance(raw, dict):
        return next((raw[e] for e in _STATE_ENTRIES if _is_state(raw.get(e))), None)
    return None


def _strip_wrappers(key: str) -> str:
    while prefix := next((p for p in _WRAPPER_PREFIXES if key.startswith(p)), None):
        key = key.removeprefix(prefix)
    return key


def _strip_prefixes(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Keys without wrapper prefixes, and without a first name that every key shares when that
    is not one of the network's modules (the attribute a Lightning module keeps it in)."""
    state = {_strip_wrappers(k): v for k, v in state.items()}
    heads = {k.split(".", 1)[0] for k in state}
    if len(heads) == 1 and all("." in k for k in state) and heads.isdisjoint(_TOP_LEVEL_MODULES):
        state = {_strip_wrappers(k.split(".", 1)[1]): v for k, v in state.items()}
    return state


def _suggest_config(state: dict[str, torch.Tensor]) -> str | None:
    """The named config that ``state`` loads into (it may lack training-only weights)."""
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    for name in CONFIG_NAMES:
        expected = {
            k: tuple(v.shape)
            for k, v in VeloxSeg(**get_config(name)).state_dict().items()
            if k in state or not k.startswith(TRAINING_ONLY_PREFIXES)
        }
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
    teachers, deep-supervision heads) load too, but the eval forward never runs them, so a
    checkpoint stripped of them loads as well (they keep their initial weights): every other key
    must match.
    """
    name, cfg = resolve_config(config)
    model = VeloxSeg(**cfg)
    state = read_state_dict(path)
    expected = model.state_dict()
    missing = sorted(
        k for k in set(expected) - set(state) if not k.startswith(TRAINING_ONLY_PREFIXES)
    )
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
    model.load_state_dict(state, strict=False)  # only training-only keys may be missing: above
    return model.eval()


def _preview(keys: list[str], limit: int = 2) -> str:
    """A few key names: enough to recognise the model, short enough to keep the fix in sight."""
    more = f" (+{len(keys) - limit} more)" if len(keys) > limit else ""
    return "[" + ", ".join(keys[:limit]) + "]" + more
