"""Folder mode: find cases in nnU-Net naming and segment them one by one, robustly.

Input files are ``CASE_XXXX.nii.gz`` (XXXX = modality index); outputs are ``OUT/CASE.nii.gz`` plus
``OUT/CASE.json``. The JSON sidecar is written last, so a case counts as finished only when both
exist: a run killed mid-case redoes that case on the next start.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from veloxseg.runtime.engine import Engine
from veloxseg.runtime.errors import InputError
from veloxseg.runtime.segment import CaseResult, SegmentOptions, output_paths, segment_case

__all__ = [
    "Case",
    "CaseStatus",
    "FolderReport",
    "find_cases",
    "is_finished",
    "prepare_folder",
    "run_case",
    "segment_folder",
]

CaseStatus = Literal["done", "skipped", "failed"]

_NNUNET_NAME = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})\.nii(\.gz)?$", re.IGNORECASE)


@dataclass(frozen=True)
class Case:
    """One case: its id and one file per modality in channel order (empty if incomplete)."""

    case_id: str
    files: tuple[Path, ...]
    problem: str | None = None


@dataclass
class FolderReport:
    """What a folder run did with each case."""

    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    results: dict[str, CaseResult] = field(default_factory=dict)

    def record(self, case_id: str, status: CaseStatus, detail: CaseResult | str | None) -> None:
        """File one outcome of ``run_case``; ``detail`` is the result or the failure reason."""
        if status == "skipped":
            self.skipped.append(case_id)
        elif isinstance(detail, CaseResult):
            self.done.append(case_id)
            self.results[case_id] = detail
        else:
            self.failed[case_id] = str(detail)


def find_cases(folder: Path, n_modalities: int) -> list[Case]:
    """Cases in ``folder`` grouped by id; a case missing a modality carries a ``problem``."""
    if not folder.is_dir():
        raise InputError(f"input folder {folder} does not exist")
    channels: dict[str, dict[int, Path]] = {}
    doubled: dict[str, str] = {}  # case -> problem, e.g. both a_0000.nii and a_0000.nii.gz
    for path in sorted(folder.iterdir()):
        match = _NNUNET_NAME.match(path.name)
        if match and path.is_file():
            files = channels.setdefault(match["case"], {})
            channel = int(match["channel"])
            if channel in files:
                doubled[match["case"]] = f"two files for channel {channel:04d}: " + (
                    f"{files[channel].name} and {path.name}; keep one"
                )
            files[channel] = path
    if not channels:
        raise InputError(
            f"no cases in {folder}: expected nnU-Net names like CASE_0000.nii.gz "
            f"(one file per modality, {n_modalities} per case)"
        )
    cases = []
    for case_id, files in sorted(channels.items()):
        wanted = set(range(n_modalities))
        if case_id in doubled:
            cases.append(Case(case_id, (), doubled[case_id]))
        elif set(files) != wanted:
            missing = sorted(wanted - set(files))
            extra = sorted(set(files) - wanted)
            problem = f"expected channels 0000..{n_modalities - 1:04d}; missing {missing}"
            problem += f", unexpected {extra}" if extra else ""
            cases.append(Case(case_id, (), problem))
        else:
            cases.append(Case(case_id, tuple(files[c] for c in range(n_modalities))))
    return cases


def is_finished(output: Path) -> bool:
    """A case is finished when its labels and (last written) sidecar both exist."""
    paths = output_paths(output)
    return paths["labels"].is_file() and paths["sidecar"].is_file()


def prepare_folder(input_dir: Path, output_dir: Path, n_modalities: int) -> list[Case]:
    """The cases of a folder run, after refusing to write into the input folder."""
    if input_dir.resolve() == output_dir.resolve():
        raise InputError("output folder is the input folder; choose another output folder")
    if output_dir.name.lower().endswith((".nii", ".nii.gz")) or output_dir.is_file():
        raise InputError(
            f"-o {output_dir} names a file, but a folder of cases writes a folder of outputs; "
            "pass an output folder"
        )
    cases = find_cases(input_dir, n_modalities)
    output_dir.mkdir(parents=True, exist_ok=True)
    return cases


def run_case(
    engine: Engine, case: Case, output_dir: Path, options: SegmentOptions, *, overwrite: bool
) -> tuple[CaseStatus, CaseResult | str | None]:
    """One case of a folder run: (status, result or one-line reason); a bad case never raises,
    so that it cannot stop the rest of a cohort (here or on a cluster worker)."""
    output = output_dir / f"{case.case_id}.nii.gz"
    if case.problem:
        return "failed", case.problem
    if is_finished(output) and not overwrite:
        return "skipped", None
    try:
        return "done", segment_case(engine, case.files, output, options)
    except (ValueError, OSError, MemoryError) as e:
        return "failed", str(e).splitlines()[0] if str(e) else repr(e)


def segment_folder(
    engine: Engine,
    input_dir: Path,
    output_dir: Path,
    options: SegmentOptions,
    *,
    overwrite: bool = False,
    on_case: Callable[[str, str], None] | None = None,
) -> FolderReport:
    """Segment every case of ``input_dir`` into ``output_dir``; failures do not stop the run.

    ``on_case(case_id, status)`` is called after each case (status: done, skipped, failed).
    """
    cases = prepare_folder(input_dir, output_dir, engine.metadata.in_channels)
    report = FolderReport()
    for case in cases:
        status, detail = run_case(engine, case, output_dir, options, overwrite=overwrite)
        report.record(case.case_id, status, detail)
        if on_case:
            on_case(case.case_id, status)
    return report
