"""`veloxseg bench`: patch throughput and accuracy of each backend x precision against PyTorch
eager fp32 of the same weights, measured in the same run on the same threads.

Torch is optional (the edge install has none): without it eager is not run and accuracy is
against ONNX Runtime fp32, which the table and the JSON say."""

from __future__ import annotations

import importlib.util
import io
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from veloxseg.runtime.autoselect import cpu_info
from veloxseg.runtime.benchmark import (
    FormatResult,
    Subject,
    Timing,
    case_patches,
    compare_logits,
    compare_margins,
    engine_subject,
    file_size_mb,
    sample_patches,
    time_interleaved,
)
from veloxseg.runtime.model_file import LOGITS, MARGINS, open_model_file
from veloxseg.runtime.output_files import atomic_write_bytes, replaced_input

__all__ = [
    "FORMATS",
    "BenchReport",
    "PatchSource",
    "bench_input",
    "bench_patches",
    "check_results_path",
    "cpu_description",
    "eager_note",
    "results_table",
]

EAGER = "pytorch-eager-fp32"
FALLBACK_REFERENCE = "onnxruntime-fp32"  # accuracy reference when eager cannot run
SAMPLE_MODALITIES = ("CT", "PET")  # those of the bundled sample, in its file order
SYNTHETIC_SEED = 0
NO_TORCH = "skipped: torch not installed"
FORMATS = {  # name: (backend, precision, streams, output); streams 0 = the runtime's choice
    "openvino-fp32": ("openvino", "fp32", 1, LOGITS),
    "openvino-bf16": ("openvino", "bf16", 1, LOGITS),
    "onnxruntime-fp32": ("onnxruntime", "fp32", 1, LOGITS),
    "openvino-fp32-throughput": ("openvino", "fp32", 0, LOGITS),
    "openvino-bf16-throughput": ("openvino", "bf16", 0, LOGITS),
    "onnxruntime-fp32-throughput": ("onnxruntime", "fp32", 0, LOGITS),
    # what `veloxseg segment` runs for labels: the label-margins output, in throughput mode
    # (OpenVINO streams, or parallel ONNX Runtime sessions)
    "openvino-fp32-labels-throughput": ("openvino", "fp32", 0, MARGINS),
    "openvino-bf16-labels-throughput": ("openvino", "bf16", 0, MARGINS),
    "onnxruntime-fp32-labels": ("onnxruntime", "fp32", 1, MARGINS),
    "onnxruntime-fp32-labels-throughput": ("onnxruntime", "fp32", 0, MARGINS),
}


def cpu_description() -> str:
    """CPU model name and core count, for recording results with the machine."""
    return f"{cpu_info()[0]}, {os.cpu_count()} cores"


@dataclass(frozen=True)
class PatchSource:
    """Where the bench patches came from: ``kind`` is ``sample``, ``input`` or ``synthetic``."""

    kind: str
    description: str

    def to_dict(self) -> dict[str, str]:
        return {"source": self.kind, "description": self.description}


def bench_input(
    model: Path, count: int, inputs: list[Path] | None = None
) -> tuple[np.ndarray, PatchSource]:
    """The bench patches: of ``inputs`` when given, else of the bundled sample when the model
    takes its modalities (CT, PET), else seeded N(0, 1) noise shaped like normalised input,
    which times any model but makes argmax agreement a weaker check."""
    card = open_model_file(model).card
    if inputs:
        names = ", ".join(p.name for p in inputs)
        return case_patches(model, inputs, count), PatchSource("input", f"input case ({names})")
    if tuple(m.lower() for m in card.modalities) == tuple(m.lower() for m in SAMPLE_MODALITIES):
        return sample_patches(model, count), PatchSource("sample", "bundled sample (CT, PET)")
    rng = np.random.default_rng(SYNTHETIC_SEED)
    x = rng.standard_normal((count, card.in_channels, *card.patch_size), dtype=np.float32)
    why = f"the model's {', '.join(card.modalities)} are not the sample's CT, PET"
    text = f"synthetic N(0,1) noise, seed {SYNTHETIC_SEED} ({why}; -i for a real case)"
    return x, PatchSource("synthetic", text)


def eager_subject(path: str, threads: int, x: np.ndarray) -> Subject:
    """PyTorch eager, imported in the timing worker only: the parent never loads torch, and a
    torch that fails to import fails this row, not the run."""
    from veloxseg.export.torch_reference import eager_subject as subject

    return subject(path, threads, x)


@dataclass
class BenchReport:
    """The rows, what their accuracy is measured against, and which patches were timed."""

    results: list[FormatResult]
    reference: str
    patches: PatchSource
    sources: tuple[Path, ...] = ()
    """The model and input files the bench read, which its result files must never replace."""

    @property
    def eager_ran(self) -> bool:
        return any(r.format == EAGER and r.status == "ok" for r in self.results)


def bench_patches(
    model: Path,
    formats: list[str],
    threads: int,
    iterations: int,
    patches: int = 4,
    rounds: int = 3,
    inputs: list[Path] | None = None,
) -> BenchReport:
    """One row per format plus PyTorch eager (when torch is installed), each in its own process,
    timed round-robin (``rounds`` x ``iterations`` patches each); × eager is the median over
    rounds of the ratio within a round. Patches come from ``bench_input``.

    Accuracy is against eager, or ONNX Runtime fp32 logits when eager did not run.
    ``-labels`` formats time the label-margins output; their max |Δ| is against the reference's
    logit margins over class 0, and their agreement is that of the labels. A transient progress
    bar on stderr counts the loads and rounds, since a full run takes minutes.
    """
    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        raise ValueError(f"unknown format {unknown[0]!r}; choose from {', '.join(FORMATS)}")
    if not formats:
        raise ValueError(f"--backends names no format; choose from {', '.join(FORMATS)}")
    formats = list(dict.fromkeys(formats))  # a repeated name is one row, timed once
    x, source = bench_input(model, patches, inputs)
    has_margins = open_model_file(model).has_margins
    subjects: dict[str, tuple] = {}
    skipped: dict[str, str] = {}
    if importlib.util.find_spec("torch") is not None:
        subjects[EAGER] = (eager_subject, (str(model), threads, x))
    else:
        skipped[EAGER] = NO_TORCH
    for name in formats:
        backend, precision, streams, output = FORMATS[name]
        if output == MARGINS and not has_margins:
            skipped[name] = "skipped: no label_margins output"
            continue
        args = (str(model), backend, precision, threads, x, streams, output)
        subjects[name] = (engine_subject, args)
    err = Console(stderr=True)
    with Progress(console=err, transient=True, disable=not err.is_terminal) as bar:
        task = bar.add_task("loading, then timing", total=len(subjects) * (rounds + 1))
        timed = time_interleaved(subjects, rounds, iterations, lambda: bar.advance(task))
    eager = timed.get(EAGER)
    reference_name = EAGER if isinstance(eager, tuple) else FALLBACK_REFERENCE
    reference: np.ndarray | None = None
    results = []
    for name in [EAGER, *formats]:
        outcome = timed.get(name, skipped.get(name))
        if outcome is None:
            continue
        if isinstance(outcome, str):
            results.append(FormatResult(name, status=outcome))
            continue
        if reference is None:
            reference = _reference_outputs(timed, reference_name, model, threads, x)
        outputs, timing = outcome
        output = LOGITS if name == EAGER else FORMATS[name][3]
        compare = compare_margins if output == MARGINS else compare_logits
        diff, agreement = compare(outputs, reference)
        speedup = None
        if isinstance(eager, tuple):
            ratios = np.divide(eager[1].round_ms, timing.round_ms)
            speedup = float(np.median(ratios))
        results.append(
            FormatResult(
                name,
                size_mb=file_size_mb(model),
                max_abs_diff=diff,
                agreement=agreement,
                speedup_vs_eager=speedup,
                **timing.stats(),
            )
        )
    return BenchReport(results, reference_name, source, (model, *(inputs or ())))


def _reference_outputs(
    timed: dict[str, tuple[np.ndarray, Timing] | str],
    name: str,
    model: Path,
    threads: int,
    x: np.ndarray,
) -> np.ndarray:
    """The reference's logits: from its timed row, else (ONNX Runtime fp32 not among the
    formats, or failed there) computed here."""
    outcome = timed.get(name)
    if isinstance(outcome, tuple):
        return outcome[0]
    backend, precision, _, _ = FORMATS[name]
    return engine_subject(str(model), backend, precision, threads, x).outputs


def results_table(report: BenchReport, title: str) -> Table:
    """The table: Format | Status | Size MB | max|Δ| | agreement | ms/patch | p90 | patches/s |
    peak RSS MB | × eager, titled with the accuracy reference and the patches."""
    table = Table(title=f"{title}\n{describe(report)}")
    for col in ("Format", "Status", "Size MB", "max|Δ|", "agreement", "ms/patch", "p90 ms",
                "patches/s", "peak RSS MB", "× eager"):  # fmt: skip
        table.add_column(col, justify="left" if col in ("Format", "Status") else "right")

    def fmt(value: float | None, spec: str) -> str:
        return "-" if value is None else format(value, spec)

    def speedup(r: FormatResult) -> str:
        if r.ms_median is not None and not report.eager_ran:
            return "not run"
        return fmt(r.speedup_vs_eager, ".2f")

    for r in report.results:
        table.add_row(
            r.format, r.status, fmt(r.size_mb, ".2f"), fmt(r.max_abs_diff, ".2e"),
            "-" if r.agreement is None else f"{100 * r.agreement:.3f}%",
            fmt(r.ms_median, ".1f"), fmt(r.ms_p90, ".1f"), fmt(r.patches_per_s, ".2f"),
            fmt(r.peak_rss_mb, ".0f"), speedup(r),
        )  # fmt: skip
    return table


def describe(report: BenchReport) -> str:
    """One line: what max|Δ| and agreement are measured against, on which patches."""
    return f"accuracy vs {report.reference}; patches: {report.patches.description}"


def eager_note(report: BenchReport) -> str | None:
    """Why PyTorch eager has no timings, and what stands in for it; None when it ran."""
    if report.eager_ran:
        return None
    status = next((r.status for r in report.results if r.format == EAGER), NO_TORCH)
    why = status
    if status == NO_TORCH:
        why = "torch is not installed (pip install 'veloxseg[export]')"
    return (
        f"PyTorch eager not run: {why}; max|Δ| and agreement are against {report.reference}, "
        "and × eager is not measured"
    )


def check_results_path(
    path: Path, sources: Iterable[Path], example: str, overwrite: bool = False
) -> None:
    """Refuse a results path that is a folder, the model or an input (symlinks and hard links
    included: bench never replaces what it read), an existing file without ``overwrite``, or a
    name whose suffix is not the kind of file ``example`` is (``.json``, or a plot format)."""
    if path.is_dir():
        raise ValueError(f"{path} is a folder; pass a file path such as {example}")
    if (source := replaced_input(path, sources)) is not None:
        raise ValueError(
            f"{path} is the bench's input {source}; bench never replaces its inputs, "
            "choose another path"
        )
    allowed = (".json",) if example.endswith(".json") else _plot_suffixes()
    if path.suffix.lower() not in allowed:
        raise ValueError(f"{path} must end in {', '.join(allowed)} (e.g. {example})")
    if path.exists() and not overwrite:
        raise ValueError(f"{path} exists; pass --overwrite to replace it")


def _plot_suffixes() -> tuple[str, ...]:
    """The file types matplotlib can save a figure as, e.g. ``.png``, ``.svg``, ``.pdf``."""
    from matplotlib.figure import Figure

    return tuple(f".{kind}" for kind in Figure().canvas.get_supported_filetypes())


def _write_result(path: Path, data: bytes) -> None:
    """Write atomically, creating the folder, so a finished run is never lost to a path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, data)


def write_json(path: Path, report: BenchReport, meta: dict, overwrite: bool = False) -> None:
    """Results plus machine, settings, accuracy reference and patch source, for
    ``benchmarks/``."""
    check_results_path(path, report.sources, "bench.json", overwrite)
    payload = {
        "machine": cpu_description(),
        **meta,
        "reference": report.reference,
        "patches": report.patches.to_dict(),
        "results": [r.to_dict() for r in report.results],
    }
    _write_result(path, (json.dumps(payload, indent=2) + "\n").encode())


def write_plot(path: Path, report: BenchReport, title: str, overwrite: bool = False) -> None:
    """A bar chart of patches/s per format, in the format the suffix names (PNG, SVG, PDF...)."""
    check_results_path(path, report.sources, "bench.png", overwrite)
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    rows = [r for r in report.results if r.patches_per_s]
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.barh([r.format for r in rows], [r.patches_per_s for r in rows], color="tab:blue")
    ax.set_xlabel("patches per second")
    ax.set_title(f"{title}\npatches: {report.patches.kind}", fontsize=9)
    fig.tight_layout()
    image = io.BytesIO()
    try:
        fig.savefig(image, format=path.suffix[1:] or "png", dpi=100)
    finally:
        plt.close(fig)
    _write_result(path, image.getvalue())


def print_results(console: Console, report: BenchReport, threads: int) -> None:
    console.print(results_table(report, f"{cpu_description()}, {threads} threads"))
