"""`veloxseg export` and `veloxseg bench` refuse what a researcher commonly gets wrong in one line
(exit 2, no file written): a run folder passed as the checkpoint, ill-typed card fields, an empty
format list, a results path that is the benchmarked model. Bench result files are written whole,
into folders they create, and a repeated format is one row. An export from a config without named
card defaults says which card fields are generic guesses."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import Result
from typer.testing import CliRunner

from veloxseg.assets import bundled_model, sample_case
from veloxseg.cli.app import app
from veloxseg.cli.bench import BenchReport, PatchSource, write_json, write_plot
from veloxseg.model import VeloxSeg, get_config, seeded_state_dict
from veloxseg.runtime.benchmark import FormatResult

QUICK = ["--iterations", "1", "--rounds", "1", "--threads", "2"]


def _invoke(*args: str | Path) -> Result:
    return CliRunner().invoke(app, list(map(str, args)))


def _one_line(result: Result) -> str:
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    return lines[0]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """An upstream-format AutoPET-II checkpoint (``{"model": ...}``, ``module.`` prefixes)."""
    model = VeloxSeg(**get_config("autopetii")).eval()
    state = seeded_state_dict(model, 1)
    path = tmp_path_factory.mktemp("ckpt") / "c.pth"
    torch.save({"model": {f"module.{k}": v for k, v in state.items()}}, path)
    return path


def _report(sources: tuple[Path, ...] = ()) -> BenchReport:
    row = FormatResult("onnxruntime-fp32", ms_median=100.0, patches_per_s=10.0)
    return BenchReport([row], "onnxruntime-fp32", PatchSource("synthetic", "noise"), sources)


def test_export_of_a_run_folder_names_the_checkpoints_in_it(tmp_path, checkpoint):
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(checkpoint, run / "checkpoint_final.pth")
    output = tmp_path / "m.onnx"
    result = _invoke("export", run, "-c", "autopetii", "-o", output)
    assert result.exit_code == 2
    line = _one_line(result)
    assert f"checkpoint {run} is a folder; pass a .pth file in it" in line
    assert "checkpoint_final.pth" in line
    assert not output.exists()


@pytest.mark.parametrize(
    ("card", "expected"),
    [
        ({"modalities": "CT"}, "card field 'modalities' must be a list of strings, got 'CT'"),
        ({"label_values": ["0", "1"]}, "card field 'label_values' must be a list of integers"),
        ({"normalization": "zscore"}, "card field 'normalization' must be a list of objects"),
        (
            {"normalization": [{"scheme": "zscore", "stdev": 1}, {"scheme": "zscore"}]},
            "card normalization entry 0 has unknown key 'stdev'; did you mean 'std'?",
        ),
        ({"extra": ["note"]}, "card field 'extra' must be a JSON object"),
    ],
    ids=["string modalities", "string labels", "string normalization", "stray key", "extra list"],
)
def test_export_refuses_an_ill_typed_card_field_in_one_line_naming_it(
    tmp_path, checkpoint, card, expected
):
    card_file = tmp_path / "card.json"
    card_file.write_text(json.dumps(card))
    output = tmp_path / "m.onnx"
    result = _invoke(
        "export", checkpoint, "-c", "autopetii", "-o", output, "--card", card_file, "--no-verify"
    )
    assert result.exit_code == 2, result.output
    line = _one_line(result)
    assert expected in line and "internal error" not in line
    assert not output.exists()


@pytest.mark.parametrize("backends", [",", ""])
def test_bench_with_no_format_named_exits_2_listing_the_formats(backends):
    result = _invoke("bench", "--backends", backends, *QUICK)
    assert result.exit_code == 2
    line = _one_line(result)
    assert "--backends names no format; choose from openvino-fp32" in line


@pytest.mark.parametrize("write", [write_json, write_plot], ids=["json", "plot"])
def test_bench_results_never_replace_the_benchmarked_model(tmp_path, write):
    model = tmp_path / "model.onnx"
    shutil.copy(bundled_model(), model)
    before = model.read_bytes()
    with pytest.raises(ValueError, match=r"is the bench's input .*never replaces its inputs"):
        write(model, _report((model,)), {} if write is write_json else "title")
    assert model.read_bytes() == before


def test_bench_results_go_into_a_new_folder_leaving_no_temp_files(tmp_path):
    folder = tmp_path / "results" / "cpu"
    write_json(folder / "bench.json", _report(), {"threads": 2})
    write_plot(folder / "bench.svg", _report(), "title")
    assert sorted(p.name for p in folder.iterdir()) == ["bench.json", "bench.svg"]
    assert json.loads((folder / "bench.json").read_text())["results"][0]["patches_per_s"] == 10.0
    assert (folder / "bench.svg").read_text().lstrip().startswith("<?xml")


def test_bench_results_path_that_is_a_folder_is_refused_naming_a_file(tmp_path):
    with pytest.raises(ValueError, match=r"is a folder; pass a file path such as bench\.json"):
        write_json(tmp_path, _report(), {})


@pytest.mark.parametrize("write", [write_json, write_plot], ids=["json", "plot"])
def test_bench_results_replace_an_existing_file_only_with_overwrite(tmp_path, write):
    scan = tmp_path / "ct.json" if write is write_json else tmp_path / "ct.png"
    scan.write_bytes(b"someone's file")
    meta = {} if write is write_json else "title"
    with pytest.raises(ValueError, match="exists; pass --overwrite to replace it"):
        write(scan, _report(), meta)
    assert scan.read_bytes() == b"someone's file"
    write(scan, _report(), meta, overwrite=True)
    assert scan.read_bytes() != b"someone's file"


@pytest.mark.parametrize(
    ("option", "name", "wanted"),
    [("--json", "ct.nii.gz", "must end in .json"), ("--plot", "p.txt", "must end in .")],
)
def test_bench_refuses_a_results_name_of_another_kind_before_timing(tmp_path, option, name, wanted):
    scan = tmp_path / name
    result = _invoke("bench", *QUICK, option, str(scan))
    assert result.exit_code == 2 and wanted in _one_line(result)
    assert "ms/patch" not in result.output and not scan.exists()


@pytest.mark.slow
def test_bench_times_a_repeated_format_once_and_counts_progress_steps(tmp_path):
    from veloxseg.runtime.benchmark import engine_subject, time_interleaved

    out = tmp_path / "new" / "bench.json"
    args = ["bench", "--backends", "onnxruntime-fp32,onnxruntime-fp32", *QUICK, "--json", out]
    result = _invoke(*args)
    assert result.exit_code == 0, result.output
    formats = [r["format"] for r in json.loads(out.read_text())["results"]]
    assert formats.count("onnxruntime-fp32") == 1
    steps = []
    x = np.zeros((1, 2, 96, 96, 96), np.float32)
    subjects = {"ort": (engine_subject, (str(bundled_model()), "onnxruntime", "fp32", 1, x))}
    time_interleaved(subjects, rounds=2, iterations=1, on_step=lambda: steps.append(1))
    assert len(steps) == len(subjects) * (2 + 1)


def test_export_of_an_unnamed_upstream_config_reports_the_card_fields_left_generic(tmp_path):
    from veloxseg.export import export_onnx

    config = tmp_path / "models_config_mypet.json"
    config.write_text(json.dumps({"VeloxSeg": get_config("autopetii")}))
    card = {"modalities": ["CT", "PET"]}
    result = export_onnx(None, config, tmp_path / "m.onnx", card_overrides=card, verify=False)
    assert result.card.config_name == "mypet"
    assert result.generic_card_fields == ("normalization", "spacing", "class_names", "label_values")


def test_bench_refuses_a_results_path_over_its_model_before_timing_anything(tmp_path):
    model = tmp_path / "model.onnx"
    shutil.copy(bundled_model(), model)
    result = _invoke("bench", "-m", model, "--json", model, *QUICK)
    assert result.exit_code == 2
    assert "never replaces its inputs" in _one_line(result)  # no table: nothing was timed


def test_demo_into_an_existing_file_says_to_pass_a_folder(tmp_path):
    taken = tmp_path / "taken"
    taken.write_text("keep me")
    result = _invoke("demo", "-o", taken, "--threads", "1")
    assert result.exit_code == 2 and "is a file; pass a folder with -o" in _one_line(result)
    assert taken.read_text() == "keep me"


@pytest.mark.parametrize(
    ("make", "wanted"),
    [
        (lambda tmp: sample_case()[0][0], "is a scan, not a model; pass scans with -i"),
        (lambda tmp: Path("/dev/null"), "is not a regular file"),
    ],
    ids=["scan", "device"],
)
def test_info_on_a_file_that_is_not_a_model_says_what_it_is(tmp_path, make, wanted):
    result = _invoke("info", make(tmp_path))
    assert result.exit_code == 2 and wanted in _one_line(result)
