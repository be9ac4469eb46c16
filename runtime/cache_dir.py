"""Where veloxseg keeps what it measures or compiles once per machine and model:
``$VELOXSEG_CACHE_DIR``, else ``~/.cache/veloxseg``."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["cache_root", "writable_cache_folder"]


def cache_root() -> Path:
    return Path(os.environ.get("VELOXSEG_CACHE_DIR") or Path.home() / ".cache" / "veloxseg")


def writable_cache_folder(name: str) -> Path | None:
    """``cache_root() / name``, created if need be, or None where it cannot be written (a
    read-only home, a container): a cache only saves time, so its absence is never an error."""
    folder = cache_root() / name
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    return folder if os.access(folder, os.W_OK | os.X_OK) else None
