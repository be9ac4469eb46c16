"""`veloxseg bench`: patch throughput and accuracy of each backend x precision against PyTorch
eager fp32 of the same weights, measured in the same run on the same threads."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from veloxseg.runtime.autoselect import cpu_info
from veloxseg.runtime.benchmark import (
    FormatResult,
    compare_logits,
    compare_margins,
    engine_subject,
    file_size_mb,
    time_interleaved,
)
from veloxseg.runtime.model_file import LOGITS, MARGINS, open_model_file

__all__ = ["FORMATS", "bench_patches", "cpu_description", "results_table"]

EAGER = "pytorch-eager-fp32"
FORMATS = {  # name: (backend, precision, streams, output); streams 0 = OpenVINO's choice
    "openvino-fp32": ("openvino", "fp32", 1, LOGITS),
    "openvino-bf16": ("openvino", "bf16", 1, LOGITS),
    "onnxruntime-fp32": ("onnxruntime", "fp32", 1, LOGITS),
    "openvino-fp32-throughput": ("openvino", "fp32", 0, LOGITS),
    "openvino-bf16-throughput": ("openvino", "bf16", 0, LOGITS),
    # what `veloxseg segment` runs for labels: the label-margins output (OpenVINO: throughput
    # streams)
    "openvino-fp32-labels-throughput": ("openvino", "fp32", 0, MARGINS),
    "openvino-bf16-labels-throughput": ("openvino", "bf16", 0, MARGINS),
    "onnxruntime-fp32-labels": ("onnxruntime", "fp32", 1, MARGINS),
}


def cpu_description() -> str:
    """CPU model name and core count, for recording results with the machine."""
    return f"{cpu_info()[0]}, {os.cpu_count()} cores"


def sample_patches(model: Path, count: int) -> np.ndarray:
    """``count`` patches of the bundled sample, preprocessed exactly as ``veloxseg segment``
    does (real anatomy, not noise), so that argmax agreement means something for a trained
    model."""
    from veloxseg.assets import sample_case
    from veloxseg.runtime.model_file import open_model_file
    from veloxseg.runtime.nifti_io import load_case
    from veloxseg.runtime.orientation import to_canonical
    from veloxseg.runtime.segment import to_model_grid
    from veloxseg.runtime.tiling import plan_tiles

    card = open_model_file(model).card
    inputs, _ = sample_case()
    data, geometry = load_case(inputs, card.in_channels)
    canonical, affine, _ = to_canonical(data, geometry.affine)
    volume, _ = to_model_grid(np.ascontiguousarray(canonical), affine, card)
    plan = plan_tiles(volume.shape[1:], card.patch_size, 0.25)
    padded = np.pad(volume, ((0, 0), *plan.pad))
    picks = np.linspace(0, len(plan.starts) - 1, count).round().astype(int)
    patches = [
        padded[
            (
                slice(None),
                *(slice(s, s + p) for s, p in zip(plan.starts[i], card.patch_size, strict=True)),
            )
        ]
        for i in picks
    ]
    return np.ascontiguousarray(np.stack(patches), dtype=np.float32)


def bench_patches(
    model: Path,
    formats: list[str],
    threads: int,
    iterations: int,
    patches: int = 2,
    rounds: int = 3,
) -> list[FormatResult]:
    """One row per format plus PyTorch eager (when torch is installed), each in its own process,
    timed round-robin (``rounds`` x ``iterations`` patches each); × eager is the median over
    rounds of the ratio within a round.

    ``-labels`` formats time the label-margins output; their max |Δ| is against the reference's
    logit margins over class 0, and their agreement is that of the labels.
    """
    x = sample_patches(model, patches)
    has_margins = open_model_file(model).has_margins
    subjects: dict[str, tuple] = {}
    skipped: dict[str, str] = {}
    if importlib.util.find_spec("torch") is not None:
        from veloxseg.export.torch_reference import eager_subject

        subjects[EAGER] = (eager_subject, (str(model), threads, x))
    for name in formats:
        if name not in FORMATS:
            raise ValueError(f"unknown format {name!r}; choose from {', '.join(FORMATS)}")
        backend, precision, streams, output = FORMATS[name]
        if output == MARGINS and not has_margins:
            skipped[name] = "skipped: no label_margins output"
            continue
        args = (str(model), backend, precision, threads, x, streams, output)
        subjects[name] = (engine_subject, args)
    timed = time_interleaved(subjects, rounds, iterations)
    eager = timed.get(EAGER)
    reference = eager[0] if isinstance(eager, tuple) else None
    if reference is None:  # no torch: the first logits format is the reference
        reference = next(
            (t[0] for n, t in timed.items() if isinstance(t, tuple) and FORMATS[n][3] == LOGITS),
            None,
        )
    results = []
    for name in [EAGER, *formats]:
        outcome = timed.get(name, skipped.get(name))
        if outcome is None:
            continue
        if isinstance(outcome, str):
            results.append(FormatResult(name, status=outcome))
            continue
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
    return results


def results_table(results: list[FormatResult], title: str) -> Table:
    """The table: Format | Status | Size MB | max|Δ| | agreement | ms/patch | p90 | patches/s |
    peak RSS MB | × eager."""
    table = Table(title=title)
    for col in ("Format", "Status", "Size MB", "max|Δ|", "agreement", "ms/patch", "p90 ms",
                "patches/s", "peak RSS MB", "× eager"):  # fmt: skip
        table.add_column(col, justify="left" if col in ("Format", "Status") else "right")

    def fmt(value: float | None, spec: str) -> str:
        return "-" if value is None else format(value, spec)

    for r in results:
        table.add_row(
            r.format, r.status, fmt(r.size_mb, ".2f"), fmt(r.max_abs_diff, ".2e"),
            "-" if r.agreement is None else f"{100 * r.agreement:.3f}%",
            fmt(r.ms_median, ".1f"), fmt(r.ms_p90, ".1f"), fmt(r.patches_per_s, ".2f"),
            fmt(r.peak_rss_mb, ".0f"), fmt(r.speedup_vs_eager, ".2f"),
        )  # fmt: skip
    return table


def write_json(path: Path, results: list[FormatResult], meta: dict) -> None:
    """Results plus machine and settings, for ``benchmarks/``."""
    payload = {"machine": cpu_description(), **meta, "results": [r.to_dict() for r in results]}
    path.write_text(json.dumps(payload, indent=2) + "\n")


def write_plot(path: Path, results: list[FormatResult], title: str) -> None:
    """A bar chart of patches/s per format."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    rows = [r for r in results if r.patches_per_s]
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.barh([r.format for r in rows], [r.patches_per_s for r in rows], color="tab:blue")
    ax.set_xlabel("96^3 patches per second")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def print_results(console: Console, results: list[FormatResult], threads: int) -> None:
    console.print(results_table(results, f"{cpu_description()}, {threads} threads"))
