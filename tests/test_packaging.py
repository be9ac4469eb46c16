"""The distribution ships every subpackage and the bundled assets (a plain, non-editable
`pip install .` only includes what pyproject.toml lists)."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_package_folder_is_listed_in_pyproject():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    for package, folder in config["package-dir"].items():
        for init in (ROOT / folder).rglob("__init__.py"):
            relative = init.parent.relative_to(ROOT / folder)
            name = ".".join([package, *relative.parts])
            assert name in listed, f"{name} ({init.parent}) is missing from [tool.setuptools]"


def test_bundled_model_and_sample_are_package_data_and_small():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    patterns = config["package-data"]["veloxseg.assets"]
    assets = ROOT / "assets"
    shipped = {p for pattern in patterns for p in assets.glob(pattern)}
    assert {p.name for p in shipped} >= {
        "veloxseg_autopetii_phantom.onnx",
        "sample_0000.nii.gz",
        "sample_0001.nii.gz",
        "sample_label.nii.gz",
    }
    assert sum(p.stat().st_size for p in shipped) < 15e6
