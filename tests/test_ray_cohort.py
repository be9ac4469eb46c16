"""Cohorts on a Ray cluster: the same outputs, skips and per-case failures as folder mode, workers
that fit the cores, clear errors for unreachable paths, and nothing of Ray in the edge install."""

from __future__ import annotations

import gzip
import http.server
import json
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from veloxseg.assets import bundled_model
from veloxseg.cli.app import app
from veloxseg.runtime import Engine, VeloxSegError
from veloxseg.runtime.cases import Case, segment_folder
from veloxseg.runtime.ray_cohort import SHARED_FS, CaseWorker, plan_workers, segment_folder_ray
from veloxseg.runtime.segment import SegmentOptions
from veloxseg.train.phantom import make_phantom, save_phantom_case

GOOD = ("p0", "p1", "p2")
FORMAT = {"backend": "openvino", "precision": "fp32"}  # not auto: a timing-based choice may vary
runner = CliRunner()


@pytest.fixture(scope="module")
def ray_cluster():
    """One local two-CPU cluster for the module; segment_folder_ray uses it as it finds it."""
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    """Three phantom cases, one with a truncated PET file and one without its PET file."""
    root = tmp_path_factory.mktemp("cohort")
    for seed, case_id in enumerate(GOOD):
        save_phantom_case(make_phantom(seed, shape=(64, 64, 48)), root, case_id)
    images = root / "images"
    for case_id in ("broken", "half"):
        (images / f"{case_id}_0000.nii.gz").write_bytes((images / "p0_0000.nii.gz").read_bytes())
    (images / "broken_0001.nii.gz").write_bytes((images / "p0_0001.nii.gz").read_bytes()[:100])
    return images


def _sidecar(path: Path) -> dict:
    summary = json.loads(path.read_text())
    del summary["timings_s"]
    return summary


def test_ray_cohort_matches_folder_mode_accounts_for_every_case_and_skips_on_rerun(
    ray_cluster, cohort, tmp_path
):
    engine = Engine.open_for_volumes(bundled_model(), threads=1, **FORMAT)  # as the CLI runs
    expected = segment_folder(engine, cohort, tmp_path / "folder", SegmentOptions())
    seen: list[tuple[str, str]] = []
    report = segment_folder_ray(
        bundled_model(), cohort, tmp_path / "ray", workers=2, threads=1, **FORMAT,
        on_case=lambda case, status: seen.append((case, status)),
    )  # fmt: skip

    assert report.done == expected.done == list(GOOD)
    assert report.failed == expected.failed and set(report.failed) == {"broken", "half"}
    assert "truncated" in report.failed["broken"] or "NIfTI" in report.failed["broken"]
    assert sorted(seen) == sorted(
        [(c, "done") for c in GOOD] + [(c, "failed") for c in report.failed]
    )
    for case_id in GOOD:
        ours, theirs = (
            tmp_path / "ray" / f"{case_id}.nii.gz",
            tmp_path / "folder" / f"{case_id}.nii.gz",
        )
        assert gzip.decompress(ours.read_bytes()) == gzip.decompress(theirs.read_bytes())
        expected_sidecar = _sidecar(theirs.with_name(f"{case_id}.json"))
        expected_sidecar["output"] = str(ours)
        assert _sidecar(ours.with_name(f"{case_id}.json")) == expected_sidecar
        assert report.results[case_id].output == ours
    assert not list((tmp_path / "ray").glob(".*tmp*"))

    stamps = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "ray").iterdir()}
    rerun = segment_folder_ray(
        bundled_model(), cohort, tmp_path / "ray", workers=2, threads=1, **FORMAT
    )
    assert rerun.done == [] and rerun.skipped == list(GOOD) and rerun.failed == report.failed
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "ray").iterdir()} == stamps


def test_cli_ray_flag_reports_like_folder_mode_and_segments_the_cohort_in_one_format(
    ray_cluster, cohort, tmp_path
):
    args = ["segment", "-i", str(cohort), "-o", str(tmp_path), "--ray", "--workers", "2"]
    result = runner.invoke(app, args)
    assert result.exit_code == 1, result.output
    assert "done 3, skipped 0, failed 2" in result.output and "broken" in result.output
    assert sorted(p.name for p in tmp_path.glob("*.nii.gz")) == [f"{c}.nii.gz" for c in GOOD]
    sidecars = [json.loads((tmp_path / f"{c}.json").read_text()) for c in GOOD]
    assert len({(s["backend"], s["precision"]) for s in sidecars}) == 1


def test_ray_flag_without_ray_installed_is_one_line_exit_2(monkeypatch, cohort, tmp_path):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray now raises ImportError
    result = runner.invoke(app, ["segment", "-i", str(cohort), "-o", str(tmp_path), "--ray"])
    assert result.exit_code == 2
    assert result.output.strip() == "error: --ray needs Ray: pip install 'veloxseg[cluster]'"


def test_ray_options_on_a_single_case_are_refused(cohort, tmp_path):
    inputs = ["-i", str(cohort / "p0_0000.nii.gz"), "-i", str(cohort / "p0_0001.nii.gz")]
    result = runner.invoke(app, ["segment", *inputs, "-o", str(tmp_path / "s.nii.gz"), "--ray"])
    assert result.exit_code == 2 and "pass -i DIR" in result.output


def test_worker_that_cannot_see_a_path_fails_the_case_naming_host_and_shared_filesystem(
    cohort, tmp_path
):
    worker = CaseWorker(bundled_model(), "openvino", "fp32", 1)
    assert worker.ready() is None and worker.engine_format() == ("openvino", "fp32")
    absent = Case("gone", (tmp_path / "elsewhere" / "gone_0000.nii.gz", cohort / "p0_0001.nii.gz"))
    status, reason = worker.run(absent, tmp_path, SegmentOptions(), False)
    assert status == "failed"
    assert f"worker on host {worker.host} cannot read {absent.files[0]}: {SHARED_FS}" == reason
    present = Case("p0", (cohort / "p0_0000.nii.gz", cohort / "p0_0001.nii.gz"))
    status, reason = worker.run(present, tmp_path / "not_mounted", SegmentOptions(), False)
    assert status == "failed" and "cannot write" in str(reason) and SHARED_FS in str(reason)


def test_worker_that_cannot_read_the_model_says_so_instead_of_opening(tmp_path):
    worker = CaseWorker(tmp_path / "model.onnx", "auto", "auto", 1)
    expected = f"worker on host {worker.host} cannot read {tmp_path / 'model.onnx'}: {SHARED_FS}"
    assert worker.ready() == expected


@pytest.mark.parametrize(
    ("nodes", "threads", "workers", "plan"),
    [
        ([2], None, None, (2, 1)),
        ([2], None, 2, (2, 1)),
        ([2], 1, None, (2, 1)),
        ([16, 16], 4, None, (8, 4)),
        ([8, 2], None, 3, (3, 2)),
        ([1], None, None, (1, 1)),
    ],
)
def test_plan_workers_fits_threads_on_the_cores_of_each_node(nodes, threads, workers, plan):
    assert plan_workers(nodes, threads, workers) == plan


@pytest.mark.parametrize(
    ("nodes", "threads", "workers", "says"),
    [
        ([2], 3, None, "3 threads per worker do not fit on any node (CPUs per node: [2]); ask for "
         "at most 2"),
        ([2], 1, 3, "3 workers x 1 threads do not fit"),
        ([], 1, 1, "no CPUs"),
    ],
)  # fmt: skip
def test_plan_workers_refuses_to_oversubscribe(nodes, threads, workers, says):
    with pytest.raises(VeloxSegError, match=re.escape(says)):
        plan_workers(nodes, threads, workers)


def test_a_bad_format_is_refused_before_any_work_or_output_folder(cohort, tmp_path):
    out = tmp_path / "never"
    with pytest.raises(ValueError, match="runs fp32 only"):
        segment_folder_ray(bundled_model(), cohort, out, backend="onnxruntime", precision="bf16")
    assert not out.exists()


def test_edge_install_never_imports_ray():
    code = (
        "import sys; sys.modules['ray'] = None\n"
        "import veloxseg.runtime, veloxseg.runtime.ray_cohort, veloxseg.runtime.cases\n"
        "import veloxseg.cli.app\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_an_address_where_another_service_listens_is_refused_in_seconds(tmp_path):
    from veloxseg.runtime.ray_cohort import _check_reachable

    server = http.server.HTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        start = time.monotonic()
        with pytest.raises(VeloxSegError, match="answers, but not as a Ray cluster does"):
            _check_reachable(f"127.0.0.1:{server.server_port}")
        assert time.monotonic() - start < 10
    finally:
        server.shutdown()


def test_a_live_ray_clusters_address_passes_the_check(ray_cluster):
    from veloxseg.runtime.ray_cohort import _check_reachable

    _check_reachable(ray_cluster.get_runtime_context().gcs_address)
