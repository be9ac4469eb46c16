"""Interrupted and overlapping folder runs, in real processes: a run killed with SIGKILL at
any moment leaves no partial or corrupt file under a final name and a restart completes every
case; two runs over one output folder do not corrupt each other. Outputs are compared with an
uninterrupted run's, voxel for voxel."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

AFFINE = np.diag([2.03642, 2.03642, 3.0, 1.0])
N_CASES = 6


def _start(cases: Path, out: Path) -> subprocess.Popen[bytes]:
    """``veloxseg segment`` on a folder, one thread so that runs are reproducible."""
    command = [sys.executable, "-m", "veloxseg.cli", "segment", "-i", str(cases), "-o", str(out),
               "-q", "--threads", "1", "--save-probabilities"]  # fmt: skip
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _finish(process: subprocess.Popen[bytes]) -> None:
    stdout, stderr = process.communicate(timeout=300)
    assert process.returncode == 0, (stdout, stderr)


def _visible(out: Path) -> list[Path]:
    return sorted(p for p in out.iterdir() if not p.name.startswith("."))


def _assert_intact(out: Path, reference: dict[str, np.ndarray]) -> int:
    """Every file under a final name is complete and equals the uninterrupted run's; returns
    how many cases are finished (labels and sidecar)."""
    for path in _visible(out):
        if path.name.endswith(".json"):
            assert json.loads(path.read_text())["labels"], path
        else:
            assert np.array_equal(np.asarray(nib.load(path).dataobj), reference[path.name]), path
    return len(list(out.glob("*.json")))


def _kill_when(process: subprocess.Popen[bytes], moment: Callable[[], bool]) -> bool:
    """SIGKILL ``process`` as soon as ``moment()`` holds; False if it finished first."""
    deadline = time.monotonic() + 120
    while process.poll() is None and not moment():
        assert time.monotonic() < deadline, "the run never got there"
        time.sleep(0.001)
    process.send_signal(signal.SIGKILL)
    return process.wait() == -signal.SIGKILL


def _half_done(out: Path) -> set[str]:
    """Cases whose labels are written but whose sidecar (written last) is not."""
    labels = [p for p in out.glob("*.nii.gz") if not p.name.endswith("_probabilities.nii.gz")]
    return {p.name for p in labels if not p.with_name(p.name[:-7] + ".json").exists()}


def _moment(kind: str, out: Path, pid: int, half_done: set[str], finished: int) -> bool:
    """Whether run ``pid`` has reached the moment to kill it at."""
    if not out.is_dir():
        return False
    if kind == "while writing a temp file":
        return any(p.name.startswith(".") and f"-{pid}-" in p.name for p in out.iterdir())
    if kind == "between labels and sidecar":
        return bool(_half_done(out) - half_done)
    return len(list(out.glob("*.json"))) > finished


@pytest.fixture(scope="module")
def cases(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("cases")
    rng = np.random.default_rng(0)
    for i in range(N_CASES):
        for c in range(2):
            volume = rng.normal(100, 50, (72, 64, 40)).astype(np.float32)
            nib.save(nib.Nifti1Image(volume, AFFINE), folder / f"case{i}_{c:04d}.nii.gz")
    return folder


@pytest.fixture(scope="module")
def reference(cases: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, np.ndarray]:
    """Outputs of one uninterrupted run, by file name."""
    out = tmp_path_factory.mktemp("reference")
    _finish(_start(cases, out))
    outputs = {p.name: np.asarray(nib.load(p).dataobj) for p in out.glob("*.nii.gz")}
    assert len(outputs) == 2 * N_CASES
    return outputs


def test_sigkilled_run_leaves_no_partial_output_and_a_restart_completes_every_case(
    cases: Path, reference: dict[str, np.ndarray], tmp_path: Path
) -> None:
    out = tmp_path / "out"
    finished = 0
    for kind in ("while writing a temp file", "between labels and sidecar", "after a case"):
        process = _start(cases, out)
        moment = partial(_moment, kind, out, process.pid, _half_done(out), finished)
        killed = _kill_when(process, moment)
        finished = _assert_intact(out, reference)
        assert killed or finished == N_CASES, kind
    _finish(_start(cases, out))
    assert _assert_intact(out, reference) == N_CASES
    assert {p.name for p in _visible(out) if p.name.endswith(".nii.gz")} == set(reference)


def test_two_runs_over_one_output_folder_do_not_corrupt_each_other(
    cases: Path, reference: dict[str, np.ndarray], tmp_path: Path
) -> None:
    out = tmp_path / "out"
    first, second = _start(cases, out), _start(cases, out)
    _finish(first)
    _finish(second)
    assert _assert_intact(out, reference) == N_CASES
    assert {p.name for p in _visible(out) if p.name.endswith(".nii.gz")} == set(reference)
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


def test_sigterm_while_writing_exits_143_and_removes_its_temp_files(
    cases: Path, reference: dict[str, np.ndarray], tmp_path: Path
) -> None:
    out = tmp_path / "out"
    process = _start(cases, out)
    deadline = time.monotonic() + 120
    while process.poll() is None and not _moment("while writing a temp file", out, process.pid,
                                                  set(), 0):  # fmt: skip
        assert time.monotonic() < deadline, "the run never got there"
        time.sleep(0.001)
    process.send_signal(signal.SIGTERM)  # as Slurm, `timeout` and `docker stop` send
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 128 + signal.SIGTERM
    assert b"run the same command again to go on" in stderr and b"Traceback" not in stderr
    assert not [p for p in out.iterdir() if p.name.startswith(".")]
    _assert_intact(out, reference)


def test_ctrl_c_that_a_native_library_reports_as_its_own_error_still_exits_130(monkeypatch):
    """OpenVINO's converter turns a KeyboardInterrupt in a Python callback into a RuntimeError
    ("Conversion is failed for ..."): that must not read as a broken model."""
    from veloxseg.cli import app as cli

    monkeypatch.setattr(cli, "_INTERRUPTED", type(cli._INTERRUPTED)())

    @cli.friendly_errors
    def compile_model() -> None:
        try:
            cli._interrupt(signal.SIGINT, None)
        except KeyboardInterrupt:
            raise RuntimeError("Conversion is failed for: PairedWindowAttention") from None

    with pytest.raises(KeyboardInterrupt):
        compile_model()


def test_ctrl_c_while_the_command_is_still_importing_exits_130_without_a_traceback():
    code = (
        "import builtins, sys\n"
        "real = builtins.__import__\n"
        "def slow(name, *args, **kwargs):\n"  # Ctrl-C lands in the app's imports
        "    if name == 'typer':\n"
        "        raise KeyboardInterrupt\n"
        "    return real(name, *args, **kwargs)\n"
        "builtins.__import__ = slow\n"
        "sys.argv = ['veloxseg', '--help']\n"
        "from veloxseg.cli import main\n"
        "main()\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 130 and "Traceback" not in result.stderr, result.stderr


@pytest.mark.parametrize(
    "command", [["-m", "veloxseg", "-h"], ["-m", "veloxseg.cli", "segment", "-h"]]
)
def test_python_dash_m_and_dash_h_show_the_help(command):
    result = subprocess.run([sys.executable, *command], capture_output=True, text=True)
    assert result.returncode == 0 and "Usage:" in result.stdout, result.stderr


def test_a_killed_runs_temp_files_are_removed_by_the_next_write_of_that_output(tmp_path):
    from veloxseg.runtime.output_files import atomic_write_bytes

    out = tmp_path / "seg.nii.gz"
    killed = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\n"
         "from veloxseg.runtime.output_files import atomic_writer\n"
         "with atomic_writer(__import__('pathlib').Path(sys.argv[1])) as f:\n"
         "    f.write(b'half a scan'); f.flush(); print('writing', flush=True); time.sleep(60)\n",
         str(out)],
        stdout=subprocess.PIPE,
    )  # fmt: skip
    assert killed.stdout is not None and killed.stdout.readline() == b"writing\n"
    atomic_write_bytes(out, b"first")  # a live run's temp stays
    assert len(list(tmp_path.glob(".seg.nii.gz.tmp-*"))) == 1
    killed.kill()
    killed.wait()
    atomic_write_bytes(out, b"labels")
    assert [p.name for p in tmp_path.iterdir()] == ["seg.nii.gz"]


def test_a_rerun_removes_a_killed_runs_temps_of_outputs_it_no_longer_writes(tmp_path):
    from veloxseg.assets import bundled_model, sample_case
    from veloxseg.runtime import Engine
    from veloxseg.runtime.output_files import _temp_prefix
    from veloxseg.runtime.segment import SegmentOptions, segment_case

    out = tmp_path / "seg.nii.gz"
    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                           capture_output=True, text=True, check=True)  # fmt: skip
    left = Path(f"{_temp_prefix(tmp_path / 'seg_probabilities.nii.gz')}{ended.stdout.strip()}-0")
    left.write_bytes(b"probabilities of a run the OOM killer stopped")
    engine = Engine.open(bundled_model(), backend="onnxruntime", precision="fp32", threads=2)
    segment_case(engine, sample_case()[0], out, SegmentOptions())  # labels only, this time
    assert sorted(p.name for p in tmp_path.iterdir()) == ["seg.json", "seg.nii.gz"]
