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

from veloxseg.runtime.engine import Engine
from veloxseg.runtime.errors import InputError
from veloxseg.runtime.segment import CaseResult, SegmentOptions, output_paths, segment_case

__all__ = ["Case", "FolderReport", "find_cases", "is_finished", "segment_folder"]

_NNUNET_NAME = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})\.nii(\.gz)?$")


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


def find_cases(folder: Path, n_modalities: int) -> list[Case]:
    """Cases in ``folder`` grouped by id; a case missing a modality carries a ``problem``."""
    if not folder.is_dir():
        raise InputError(f"input folder {folder} does not exist")
    channels: dict[str, dict[int, Path]] = {}
    for path in sorted(folder.iterdir()):
        match = _NNUNET_NAME.match(path.name)
        if match and path.is_file():
            channels.setdefault(match["case"], {})[int(match["channel"])] = path
    if not channels:
        raise InputError(
            f"no cases in {folder}: expected nnU-Net names like CASE_0000.nii.gz "
            f"(one file per modality, {n_modalities} per case)"
        )
    cases = []
    for case_id, files in sorted(channels.items()):
        wanted = set(range(n_modalities))
        if set(files) != wanted:
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
    if input_dir.resolve() == output_dir.resolve():
        raise InputError("output folder is the input folder; choose another output folder")
    cases = find_cases(input_dir, engine.metadata.in_channels)
    output_dir.mkdir(parents=True, exist_ok=True)
    report = FolderReport()
    for case in cases:
        output = output_dir / f"{case.case_id}.nii.gz"
        status = "done"
        if case.problem:
            report.failed[case.case_id] = case.problem
            status = "failed"
        elif is_finished(output) and not overwrite:
            report.skipped.append(case.case_id)
            status = "skipped"
        else:
            try:
                report.results[case.case_id] = segment_case(engine, case.files, output, options)
                report.done.append(case.case_id)
            except (ValueError, OSError, MemoryError) as e:
                report.failed[case.case_id] = str(e).splitlines()[0] if str(e) else repr(e)
                status = "failed"
        if on_case:
            on_case(case.case_id, status)
    return report
