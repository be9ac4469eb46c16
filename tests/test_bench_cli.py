"""`veloxseg bench` as a short smoke test (no timing assertions): every requested format gets a
row with the table's columns, accuracy against PyTorch eager, and a JSON record."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from veloxseg.cli.app import app


@pytest.mark.slow
def test_bench_reports_each_format_against_eager(tmp_path):
    out = tmp_path / "bench.json"
    args = ["bench", "--backends", "openvino-fp32,onnxruntime-fp32", "--iterations", "1",
            "--threads", "2", "--json", str(out)]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "Format" in result.output and "× eager" in result.output
    rows = {r["format"]: r for r in json.loads(out.read_text())["results"]}
    assert set(rows) == {"pytorch-eager-fp32", "openvino-fp32", "onnxruntime-fp32"}
    for name in ("openvino-fp32", "onnxruntime-fp32"):
        assert rows[name]["status"] == "ok"
        assert rows[name]["max_abs_diff"] < 1e-2  # fp32 formats track eager of the same weights
        assert rows[name]["agreement"] > 0.999
        assert rows[name]["patches_per_s"] > 0 and rows[name]["speedup_vs_eager"] > 0


@pytest.mark.slow
def test_a_failing_format_is_reported_while_the_others_are_timed(tmp_path):
    import numpy as np

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
