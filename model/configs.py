"""Named VeloxSeg configurations and config resolution.

The registry holds the three published configs (``configs.json``, taken verbatim from the upstream
``config/models_config_*.json``). A config can be given as a registry name, a dict, or a JSON file.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

__all__ = ["CONFIG_NAMES", "get_config", "resolve_config"]


def _registry() -> dict[str, dict[str, Any]]:
    text = resources.files("veloxseg.model").joinpath("configs.json").read_text()
    return json.loads(text)


CONFIG_NAMES: tuple[str, ...] = tuple(sorted(_registry()))


def get_config(name: str) -> dict[str, Any]:
    """A fresh copy of the named config (``autopetii``, ``brats2021`` or ``hecktor2022``)."""
    registry = _registry()
    if name not in registry:
        raise ValueError(f"unknown config {name!r}; choose one of {', '.join(sorted(registry))}")
    return registry[name]


def resolve_config(config: str | Path | dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """Return ``(name, config_dict)`` for a registry name, a JSON file path or a dict.

    A JSON file may hold the config itself, ``{"name": ..., "config": {...}}``, or upstream's
    ``config/models_config_*.json`` (configs keyed by model name; its ``VeloxSeg`` entry).
    """
    if isinstance(config, dict):
        return str(config.get("name", "custom")), {k: v for k, v in config.items() if k != "name"}
    text = str(config)
    if text in _registry():
        return text, get_config(text)
    path = Path(text)
    if path.suffix.lower() == ".json" or path.exists():
        try:
            raw = json.loads(path.read_text())
        except FileNotFoundError as e:
            raise ValueError(f"config file {path} does not exist") from e
        except json.JSONDecodeError as e:
            raise ValueError(f"config file {path} is not valid JSON: {e}") from e
        if not isinstance(raw, dict):
            raise ValueError(f"config file {path} must hold a JSON object")
        if "config" in raw and isinstance(raw["config"], dict):
            return str(raw.get("name", path.stem)), raw["config"]
        if isinstance(raw.get("VeloxSeg"), dict):  # upstream's file, keyed by model name
            return path.stem.removeprefix("models_config_"), raw["VeloxSeg"]
        if raw and all(isinstance(v, dict) for v in raw.values()):  # a config has lists, numbers
            raise ValueError(
                f"config file {path} has no 'VeloxSeg' entry (it configures "
                f"{', '.join(map(str, raw))}); pass one with a 'VeloxSeg' entry, or one of "
                f"{', '.join(CONFIG_NAMES)}"
            )
        return path.stem, raw
    raise ValueError(
        f"unknown config {text!r}; give one of {', '.join(CONFIG_NAMES)} or a JSON file"
    )
