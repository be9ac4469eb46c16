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


@pytest.fixture(autouse=True, scope="session")
def _private_autoselect_cache(tmp_path_factory):
    """Keep `--backend auto` calibrations of the tests out of the user's cache."""
    os.environ["VELOXSEG_CACHE_DIR"] = str(tmp_path_factory.mktemp("veloxseg_cache"))


@pytest.fixture(scope="session")
def reference() -> Path:
    path = reference_dir()
    if not (path / "autopetii_checkpoint.pth").is_file():
        pytest.skip(f"upstream reference checkpoint not found at {path} (set VELOXSEG_REFERENCE)")
    return path


@pytest.fixture(scope="session")
def exported(tmp_path_factory):
    """Export one config with seeded weights once per session: ``exported(name) -> Path``."""
    from veloxseg.export import export_onnx

    cache: dict[str, Path] = {}
    folder = tmp_path_factory.mktemp("exported")

    def get(name: str) -> Path:
        if name not in cache:
            seed = ("autopetii", "brats2021", "hecktor2022").index(name) + 1
            cache[name] = export_onnx(None, name, folder / f"{name}.onnx", seed=seed).path
        return cache[name]

    return get
