"""`veloxseg bench` as a short smoke test (no timing assertions): every requested format gets a
row with the table's columns, accuracy against PyTorch eager (ONNX Runtime fp32 without torch),
a record of which patches were timed, and a JSON record."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
from typer.testing import CliRunner

from veloxseg.cli.app import app

QUICK = ["--iterations", "1", "--rounds", "1", "--threads", "2"]


@pytest.mark.slow
def test_bench_reports_each_format_against_eager(tmp_path):
    out = tmp_path / "bench.json"
    args = ["bench", "--backends", "openvino-fp32,onnxruntime-fp32", "--iterations", "1",
            "--threads", "2", "--json", str(out)]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "Format" in result.output and "× eager" in result.output
    assert "bundled sample" in result.output
    record = json.loads(out.read_text())
    assert record["reference"] == "pytorch-eager-fp32"
    assert record["patches"]["source"] == "sample"
    rows = {r["format"]: r for r in record["results"]}
    assert set(rows) == {"pytorch-eager-fp32", "openvino-fp32", "onnxruntime-fp32"}
    for name in ("openvino-fp32", "onnxruntime-fp32"):
        assert rows[name]["status"] == "ok"
        assert rows[name]["max_abs_diff"] < 1e-2  # fp32 formats track eager of the same weights
        assert rows[name]["agreement"] > 0.999
        assert rows[name]["patches_per_s"] > 0 and rows[name]["speedup_vs_eager"] > 0


@pytest.mark.slow
def test_bench_times_a_model_without_the_samples_modalities_on_labelled_synthetic_patches(
    tmp_path, exported
):
    out = tmp_path / "bench.json"
    args = ["bench", "-m", str(exported("brats2021")), "--backends", "onnxruntime-fp32",
            *QUICK, "--json", str(out)]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "synthetic" in result.output
    record = json.loads(out.read_text())
    assert record["patches"]["source"] == "synthetic"
    rows = {r["format"]: r for r in record["results"]}
    assert rows["onnxruntime-fp32"]["status"] == "ok"
    assert rows["onnxruntime-fp32"]["max_abs_diff"] < 1e-2


@pytest.mark.slow
def test_bench_cuts_patches_from_input_files_of_the_models_modalities(tmp_path, exported):
    rng = np.random.default_rng(0)
    inputs = []
    for c in range(4):  # FLAIR, T1, T1ce, T2 at the model's 1 mm spacing
        path = tmp_path / f"case_{c:04d}.nii.gz"
        nib.save(
            nib.Nifti1Image(rng.normal(500, 100, (40, 40, 32)).astype(np.int16), np.eye(4)), path
        )
        inputs += ["-i", str(path)]
    out = tmp_path / "bench.json"
    args = ["bench", "-m", str(exported("brats2021")), *inputs, "--backends", "onnxruntime-fp32",
            *QUICK, "--json", str(out)]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    record = json.loads(out.read_text())
    assert record["patches"]["source"] == "input"
    assert "case_0000.nii.gz" in record["patches"]["description"]
    assert {r["status"] for r in record["results"]} == {"ok"}


def test_bench_refuses_input_files_that_do_not_match_the_models_modalities(tmp_path):
    path = tmp_path / "ct.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 8), np.int16), np.eye(4)), path)
    args = ["bench", "-i", str(path), "-i", str(path), "-i", str(path), *QUICK]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2
    assert "needs 2 modalities" in result.output and "internal error" not in result.output


@pytest.mark.parametrize("option", [["--iterations", "0"], ["--rounds", "0"], ["--threads", "-1"]])
def test_bench_counts_below_one_are_usage_errors(option):
    result = CliRunner().invoke(app, ["bench", *option])
    assert result.exit_code == 2
    assert "internal error" not in result.output


@pytest.mark.slow
@pytest.mark.parametrize("torch_state", ["missing", "broken"])
def test_bench_without_importable_torch_times_onnx_formats_against_onnxruntime_fp32(
    tmp_path, torch_state
):
    """The edge install has no torch ("missing"); a torch that fails to import ("broken") must
    not stop the run either."""
    site = tmp_path / "site"
    site.mkdir()
    if torch_state == "missing":
        (site / "sitecustomize.py").write_text("import sys\nsys.modules['torch'] = None\n")
    else:
        (site / "torch").mkdir()
        (site / "torch" / "__init__.py").write_text("raise ImportError('torch is broken')\n")
    out = tmp_path / "bench.json"
    args = ["bench", "--backends", "openvino-fp32", *QUICK, "--json", str(out)]
    env = {**os.environ, "PYTHONPATH": str(site)}
    result = subprocess.run(
        [sys.executable, "-m", "veloxseg.cli", *args], env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert "PyTorch eager not run" in result.stderr and "Traceback" not in result.stderr
    assert "accuracy vs onnxruntime-fp32" in result.stdout
    record = json.loads(out.read_text())
    assert record["reference"] == "onnxruntime-fp32"
    rows = {r["format"]: r for r in record["results"]}
    assert rows["pytorch-eager-fp32"]["status"] != "ok"
    assert rows["openvino-fp32"]["status"] == "ok"
    assert rows["openvino-fp32"]["max_abs_diff"] < 1e-2
    assert rows["openvino-fp32"]["agreement"] > 0.999
    assert rows["openvino-fp32"]["speedup_vs_eager"] is None


@pytest.mark.slow
def test_a_failing_format_is_reported_while_the_others_are_timed(tmp_path):
    from veloxseg.assets import bundled_model
    from veloxseg.runtime.benchmark import engine_subject, time_interleaved

    x = np.zeros((1, 2, 96, 96, 96), np.float32)
    subjects = {
        "missing": (engine_subject, (str(tmp_path / "none.onnx"), "openvino", "fp32", 1, x)),
        "ok": (engine_subject, (str(bundled_model()), "onnxruntime", "fp32", 1, x)),
    }
    results = time_interleaved(subjects, rounds=2, iterations=1)
    assert results["missing"].startswith("failed: model file")
    outputs, timing = results["ok"]
    assert outputs.shape == (1, 2, 96, 96, 96)
    assert len(timing.round_ms) == 2 and timing.peak_rss_mb > 0
