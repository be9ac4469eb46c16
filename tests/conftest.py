"""Shared fixtures: paths to reference data, and helpers for building small test inputs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

DATA = Path(__file__).parent / "data"


def reference_dir() -> Path:
    """``../shared/reference`` beside the checkout, or ``$VELOXSEG_REFERENCE``."""
    env = os.environ.get("VELOXSEG_REFERENCE")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2] / "shared" / "reference"


@pytest.fixture(scope="session")
def reference() -> Path:
    path = reference_dir()
    if not (path / "autopetii_checkpoint.pth").is_file():
        pytest.skip(f"upstream reference checkpoint not found at {path} (set VELOXSEG_REFERENCE)")
    return path
