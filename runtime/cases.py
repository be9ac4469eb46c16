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
from veloxseg.runtime.errors import InputError, one_line
from veloxseg.runtime.nifti_io import CONVERT_DICOM, find_dicom, header_volume_count
from veloxseg.runtime.output_files import create_output_folder, nearest_unwritable_folder
from veloxseg.runtime.segment import CaseResult, SegmentOptions, output_paths, segment_case

__all__ = [
    "Case",
    "CaseStatus",
    "FolderReport",
    "check_folder_run",
    "find_cases",
    "ignored_note",
    "is_finished",
    "prepare_folder",
    "run_case",
    "segment_folder",
]

CaseStatus = Literal["done", "skipped", "failed"]

_NNUNET_NAME = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})\.nii(\.gz)?$", re.IGNORECASE)
_LISTED = 5  # names quoted in a message before "and N more"


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
    """Cases in ``folder`` grouped by id; a case missing a modality carries a ``problem``.

    Hidden files (``.DS_Store``, macOS ``._CASE_0000.nii.gz`` copies, temp files) are skipped,
    and, as in nnU-Net, so is anything else not named like a case (see ``ignored_note``).
    """
    if not folder.is_dir():
        raise InputError(f"input folder {folder} does not exist")
    channels: dict[str, dict[int, Path]] = {}
    problems: dict[str, str] = {}  # e.g. both a_0000.nii and a_0000.nii.gz, a broken link
    entries = sorted(folder.iterdir())
    for path in entries:
        match = _NNUNET_NAME.match(path.name)
        if match and not path.name.startswith("."):
            files = channels.setdefault(match["case"], {})
            channel = int(match["channel"])
            if channel in files:
                problems[match["case"]] = f"two files for channel {channel:04d}: " + (
                    f"{files[channel].name} and {path.name}; keep one"
                )
            elif not path.is_file():  # said here: "missing" would send the user looking
                what = "a link to nothing" if path.is_symlink() else "not a file"
                problems[match["case"]] = f"{path.name} is {what}; replace it with the image"
            files[channel] = path
    if not channels:
        raise InputError(_no_cases(folder, n_modalities))
    cases = []
    for case_id, files in sorted(channels.items()):
        wanted = set(range(n_modalities))
        if case_id in problems:
            cases.append(Case(case_id, (), problems[case_id]))
        elif set(files) != wanted:
            names = [p.name for p in entries]
            missing = ", ".join(
                _missing(f"{case_id}_{c:04d}", names) for c in sorted(wanted - set(files))
            )
            extra = ", ".join(files[c].name for c in sorted(set(files) - wanted))
            problem = f"expected channels 0000..{n_modalities - 1:04d}"
            problem += f"; missing {missing}" if missing else ""
            problem += f"; unexpected {extra} (the model takes {n_modalities})" if extra else ""
            if set(files) == {0} and (stacked := header_volume_count(files[0])) == n_modalities:
                problem = (
                    f"{files[0].name} holds all {stacked} modalities as one 4D file, but a folder "
                    "run reads one file per modality: split it, or segment it alone with -i FILE"
                )
            cases.append(Case(case_id, (), problem))
        else:
            cases.append(Case(case_id, tuple(files[c] for c in range(n_modalities))))
    return cases


def _missing(stem: str, names: list[str]) -> str:
    """A missing channel's file name, and the file that may be meant for it (``a_0000.nrrd``,
    ``a_0000.hdr``): only ``.nii`` and ``.nii.gz`` are read, as nnU-Net's NIfTI reader does."""
    other = next((n for n in names if n.startswith(stem + ".")), None)
    seen = f" ({other} is there, but only .nii/.nii.gz are read)" if other else ""
    return f"{stem}.nii.gz{seen}"


def ignored_note(folder: Path) -> str | None:
    """One line naming what a folder run ignores, or None: a file the user meant as a case
    (``ct.nii.gz``, ``case1.nii.gz``) would otherwise vanish silently, as it does in nnU-Net.
    Hidden files (``.DS_Store``, ``._CASE_0000.nii.gz``) are not named."""
    ignored = _unmatched(folder)
    if not ignored:
        return None
    return f"ignored {_listing(ignored)} in {folder}: not named like a case (CASE_0000.nii.gz, ...)"


def _unmatched(folder: Path) -> list[str]:
    """Names in ``folder``, folders ending in ``/``, that are neither hidden nor a case's."""
    return [
        path.name + "/" * path.is_dir()
        for path in sorted(folder.iterdir())
        if not path.name.startswith(".") and not _NNUNET_NAME.match(path.name)
    ]


def _listing(names: list[str]) -> str:
    shown = ", ".join(names[:_LISTED])
    return f"{shown} and {len(names) - _LISTED} more" if len(names) > _LISTED else shown


def _no_cases(folder: Path, n_modalities: int) -> str:
    """Why a folder holds no case, and the fix: empty, DICOM, cases one folder down, or files
    not in nnU-Net naming (named, since the user must rename them)."""
    expected = (
        f"expected nnU-Net names like CASE_0000.nii.gz (one file per modality, "
        f"{n_modalities} per case)"
    )
    found = _unmatched(folder)
    if not found:
        what = "holds only hidden files" if any(folder.iterdir()) else "is empty"
        return f"input folder {folder} {what}; {expected}"
    dicom = find_dicom(folder)
    if dicom is not None:
        return f"{folder} holds DICOM files ({dicom}), not NIfTI; {CONVERT_DICOM}"
    below = [sub for sub in sorted(folder.iterdir()) if sub.is_dir() and _has_cases(sub)]
    if below:
        return (
            f"no cases in {folder}, but its subfolder {below[0].name} has some: pass -i {below[0]}"
        )
    return f"no cases in {folder}: {expected}; found {_listing(found)}"


def _has_cases(folder: Path) -> bool:
    """Whether ``folder`` holds a file named like a case (e.g. ``imagesTs`` of a dataset)."""
    try:
        return any(_NNUNET_NAME.match(p.name) for p in folder.iterdir())
    except OSError:  # unreadable: not where the cases are, as far as a hint goes
        return False


def is_finished(output: Path) -> bool:
    """A case is finished when its labels and (last written) sidecar both exist."""
    paths = output_paths(output)
    return paths["labels"].is_file() and paths["sidecar"].is_file()


def check_folder_run(input_dir: Path, output_dir: Path, n_modalities: int) -> list[Case]:
    """The cases of a folder run, after refusing to write into the input folder or where
    nothing can be written (checked before any case: else every case would fail after its
    inference). Creates nothing. The input is checked first: a folder of DICOM says so
    whatever ``-o`` is."""
    cases = find_cases(input_dir, n_modalities)
    if input_dir.resolve() == output_dir.resolve():
        raise InputError("output folder is the input folder; choose another output folder")
    if output_dir.name.lower().endswith((".nii", ".nii.gz")) or output_dir.is_file():
        raise InputError(
            f"-o {output_dir} names a file, but a folder of cases writes a folder of outputs; "
            "pass an output folder"
        )
    if (folder := nearest_unwritable_folder(output_dir)) is not None:
        raise InputError(
            f"cannot write into the output folder {output_dir} ({folder} is not writable); "
            "choose another -o"
        )
    return cases


def prepare_folder(input_dir: Path, output_dir: Path, n_modalities: int) -> list[Case]:
    """:func:`check_folder_run`, then create the output folder."""
    cases = check_folder_run(input_dir, output_dir, n_modalities)
    create_output_folder(output_dir)
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
        # an unfinished case's leftovers (labels without a sidecar) are replaced
        return "done", segment_case(engine, case.files, output, options, overwrite=True)
    except (ValueError, OSError, MemoryError) as e:
        return "failed", one_line(e)


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
