"""Human-readable summaries printed by the CLI (rich tables)."""

from __future__ import annotations

from collections import Counter

from rich.console import Console
from rich.table import Table

__all__ = ["print_case_summary", "print_folder_summary", "print_model_info"]


def print_case_summary(console: Console, result, model_load: float = 0.0) -> None:  # type: ignore[no-untyped-def]
    """Timings per stage (with the model's load and compile, when timed) and volume per label of
    one segmented case."""
    console.print(f"wrote {result.output}", highlight=False, soft_wrap=True)  # whole, never cut
    table = Table(show_header=True)
    table.add_column("stage")
    table.add_column("seconds", justify="right")
    timings = {"model": model_load, **result.timings} if model_load else result.timings
    for stage, seconds in timings.items():
        table.add_row(stage, f"{seconds:.2f}")
    table.add_row("total", f"{sum(timings.values()):.2f}")
    console.print(table)
    labels = Table(show_header=True)
    for col in ("label", "voxels", "mL"):
        labels.add_column(col, justify="right" if col != "label" else "left")
    for name, entry in result.summary["labels"].items():
        labels.add_row(name, str(entry["voxels"]), f"{entry['volume_ml']:.1f}")
    console.print(labels)


def print_folder_summary(console: Console, report, quiet: bool = False) -> None:  # type: ignore[no-untyped-def]
    """Seconds per stage over the cases done (total and per case), then counts of done,
    skipped and failed cases, with each failure's reason; ``quiet``: the failures only."""
    if not quiet:
        _print_folder_timings(console, report)
    for case_id, reason in report.failed.items():
        # one line per failure even when piped, so that logs can be grepped
        console.print(f"  [red]failed[/] {case_id}: {reason}", highlight=False, soft_wrap=True)


def _print_folder_timings(console: Console, report) -> None:  # type: ignore[no-untyped-def]
    if report.results:
        stages: Counter[str] = Counter()
        for result in report.results.values():
            stages.update(result.timings)
        n = len(report.results)
        table = Table(title=f"{n} case{'s' * (n != 1)} segmented", show_header=True)
        for col in ("stage", "seconds", "per case"):
            table.add_column(col, justify="left" if col == "stage" else "right")
        for stage, seconds in [*stages.items(), ("total", sum(stages.values()))]:
            table.add_row(stage, f"{seconds:.2f}", f"{seconds / n:.2f}")
        console.print(table)
    console.print(
        f"done {len(report.done)}, skipped {len(report.skipped)}, failed {len(report.failed)}"
    )
    for case_id, result in report.results.items():
        for warning in result.warnings:
            console.print(f"  [yellow]warning[/] {case_id}: {warning}", highlight=False,
                          soft_wrap=True)  # fmt: skip


def print_model_info(console: Console, model) -> None:  # type: ignore[no-untyped-def]
    """The card, operator counts, file size and graph inputs/outputs of a model file."""
    card = model.card
    table = Table(title=str(model.path), show_header=False)
    table.add_column("field", no_wrap=True)
    table.add_column("value", overflow="fold")  # hashes wrap whole at any width, never cut
    rows = {
        "config": card.config_name,
        "modalities": ", ".join(card.modalities),
        "normalisation": "; ".join(
            f"{m}: {n.scheme}"
            + (
                f" clip [{n.clip_low}, {n.clip_high}] mean {n.mean} std {n.std}"
                if n.scheme == "ct"
                else ""
            )
            for m, n in zip(card.modalities, card.normalization, strict=True)
        ),
        "classes": ", ".join(
            f"{v}={c}" for c, v in zip(card.class_names, card.label_values, strict=True)
        ),
        "spacing (mm)": " x ".join(map(str, card.spacing)),
        "patch": " x ".join(map(str, card.patch_size)),
        "source sha256": card.source_sha256 or "-",
        "exporter": card.exporter_version,
        "file size": f"{model.path.stat().st_size / 1e6:.2f} MB",
        "file sha256": model.sha256,
    }
    for graph_io in (*model.proto.graph.input, *model.proto.graph.output):
        dims = [d.dim_param or d.dim_value for d in graph_io.type.tensor_type.shape.dim]
        rows[f"tensor {graph_io.name}"] = str(dims)
    for key, value in rows.items():
        table.add_row(key, value)
    console.print(table)
    counts = Counter((n.domain or "ai.onnx") + "::" + n.op_type for n in model.proto.graph.node)
    ops = Table(title="operators (main graph)")
    ops.add_column("op")
    ops.add_column("count", justify="right")
    for op, count in counts.most_common():
        ops.add_row(op, str(count))
    console.print(ops)
