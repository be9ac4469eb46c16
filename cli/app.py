"""The ``veloxseg`` command: a thin Typer layer over the Python API.

Only this layer turns errors into exit codes: a user-fixable problem prints one line and exits 2.
"""

from __future__ import annotations

import functools
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from typer import rich_utils

from veloxseg.cli.output import print_case_summary, print_folder_summary
from veloxseg.runtime.errors import VeloxSegError, one_line
from veloxseg.runtime.nifti_io import DEFAULT_MAX_VOXELS

__all__ = ["app", "main"]

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    context_settings={"help_option_names": ["-h", "--help"]},  # as nnU-Net's and others' -h
    pretty_exceptions_enable=False,
    help="Fast CPU inference for VeloxSeg 3D segmentation models.",
)
err = Console(stderr=True)


def _print_version(value: bool) -> None:
    if value:
        from veloxseg import __version__

        typer.echo(f"veloxseg {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_print_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """Fast CPU inference for VeloxSeg 3D segmentation models."""


F = TypeVar("F", bound=Callable[..., Any])
_PIPED_HELP_WIDTH = 120


def _notice(message: str, label: str = "warning") -> None:
    """One yellow line on stderr that the run goes on after (a warning or a note)."""
    err.print(f"[yellow]{label}:[/] {escape(message)}", highlight=False, soft_wrap=True)


def _fail(message: str, code: int) -> None:
    err.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def friendly_errors(fn: F) -> F:
    """Turn user errors into one line + exit 2, and anything else into one line + exit 1."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (typer.Exit, typer.Abort, KeyboardInterrupt):
            raise
        except Exception as e:
            if _INTERRUPTED.is_set():  # Ctrl-C inside native code can surface as its own error
                raise KeyboardInterrupt from e
            _fail_for(e)

    return wrapper  # type: ignore[return-value]


def _fail_for(e: Exception) -> None:
    """One line and exit 2 for what the user can fix, 1 for anything else."""
    if isinstance(e, MemoryError):
        _fail("out of memory: the image (or its grid at the model's spacing) is too large "
              "for this machine; check the header's voxel sizes", 1)  # fmt: skip
    if isinstance(e, (VeloxSegError, ValueError, FileNotFoundError, PermissionError)):
        _fail(one_line(e), 2)
    if isinstance(e, OSError):  # the machine's, not ours: disk full, name too long, I/O error
        where = f" ({e.filename})" if e.filename else ""
        _fail(f"{e.strerror or one_line(e)}{where}; free space or fix the path and retry", 2)
    if os.environ.get("VELOXSEG_DEBUG"):
        raise e
    _fail(f"internal error ({type(e).__name__}: {one_line(e)}); "
          "set VELOXSEG_DEBUG=1 for a traceback", 1)  # fmt: skip


Backend = Annotated[str, typer.Option(help="auto, openvino or onnxruntime.")]
Precision = Annotated[str, typer.Option(help="auto, fp32 or bf16 (bf16: OpenVINO only).")]
Overlap = Annotated[float, typer.Option(help="Sliding-window overlap in [0, 1).")]
BlendOption = Annotated[str, typer.Option("--blend", help="constant or gaussian.")]
Tta = Annotated[bool, typer.Option(help="Mirror over 3 axes (8x slower).")]
BatchSize = Annotated[int, typer.Option(help="Windows per inference call.")]
Quiet = Annotated[
    bool, typer.Option("--quiet", "-q", help="No progress or summary (failures still shown).")
]


def _open_engine(model: Path | None, backend: str, precision: str, threads: int | None):  # type: ignore[no-untyped-def]
    from veloxseg.runtime import Engine

    if model is None:
        from veloxseg.assets import bundled_model

        model = bundled_model()
    return Engine.open_for_volumes(model, backend, precision, threads)  # type: ignore[arg-type]


@app.command()
@friendly_errors
def segment(
    input: Annotated[
        list[Path],
        typer.Option(
            "-i",
            "--input",
            help="One file per modality in the model's order, one 4D NIfTI, "
            "or a folder of nnU-Net-named cases.",
        ),
    ],
    output: Annotated[Path, typer.Option("-o", "--output", help="Output .nii.gz (or folder).")],
    model: Annotated[
        Path | None, typer.Option("-m", "--model", help="ONNX model (default: bundled).")
    ] = None,
    backend: Backend = "auto",
    precision: Precision = "auto",
    threads: Annotated[
        int | None,
        typer.Option(min=1, help="CPU threads (default: all cores; with --ray: per worker)."),
    ] = None,
    overlap: Overlap = 0.25,
    blend: BlendOption = "constant",
    tta: Tta = False,
    batch_size: BatchSize = 1,
    save_probabilities: Annotated[bool, typer.Option(help="Also write probabilities.")] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace existing outputs.")] = False,
    quiet: Quiet = False,
    preview: Annotated[bool, typer.Option(help="Write a PNG preview beside the output.")] = False,
    max_voxels: Annotated[
        int, typer.Option(min=1, help="Refuse inputs with more voxels (checked from the header).")
    ] = DEFAULT_MAX_VOXELS,
    ray: Annotated[bool, typer.Option("--ray", help="Spread a folder over a Ray cluster.")] = False,
    ray_address: Annotated[
        str | None, typer.Option(help="Existing Ray cluster (HEAD:6379 or auto); implies --ray.")
    ] = None,
    workers: Annotated[
        int | None, typer.Option(min=1, help="Ray workers (default: as many as the cores fit).")
    ] = None,
) -> None:
    """Segment NIfTI scans: one case (-i per modality, or one 4D file), or a folder of cases."""
    from veloxseg.runtime.segment import SegmentOptions

    options = SegmentOptions(  # checked here, before the model's compile
        overlap=overlap, blend=blend, batch_size=batch_size, tta=tta,
        save_probabilities=save_probabilities, preview=preview, max_voxels=max_voxels,
    )  # fmt: skip
    folder = len(input) == 1 and input[0].is_dir()
    cores = os.cpu_count() or 1  # the engine uses at most these
    if threads and threads > cores and not (ray or ray_address or workers or quiet):
        _notice(f"--threads {threads} is more than this machine's {cores} cores; using {cores}",
                "note")  # fmt: skip
    if (ray or ray_address or workers) and not folder:
        _fail("--ray, --ray-address and --workers segment a folder: pass -i DIR", 2)
    if not folder:  # the inputs (a folder among them named), then the outputs, before any work
        from veloxseg.runtime.segment import check_outputs

        _check_headers_first(model, input, max_voxels)
        check_outputs(output, input, options, overwrite)
    if ray or ray_address or workers:
        from veloxseg.runtime.engine import check_format

        check_format(backend, precision)  # before the progress bar and a cluster start
        cluster = dict(backend=backend, precision=precision, threads=threads, workers=workers)
        _run_ray(model, input[0], output, options, overwrite, quiet, address=ray_address, **cluster)
        return
    start = time.perf_counter()
    engine = _open_engine(model, backend, precision, threads)
    if folder:
        _run_folder(engine, input[0], output, options, overwrite, quiet)
    else:
        load = time.perf_counter() - start
        _run_case(engine, input, output, options, overwrite=overwrite, quiet=quiet, load=load)


def _check_headers_first(model: Path | None, inputs: list[Path], max_voxels: int) -> None:
    """Refuse bad input from the headers before compiling the model: in milliseconds, and a
    header claiming billions of voxels never costs a model compile."""
    from veloxseg.assets import bundled_model
    from veloxseg.runtime.model_file import open_model_file
    from veloxseg.runtime.nifti_io import inspect_case

    card = open_model_file(model or bundled_model()).card
    inspect_case(inputs, card.in_channels, max_voxels=max_voxels, modality_names=card.modalities)


def _run_case(  # type: ignore[no-untyped-def]
    engine, inputs: list[Path], output: Path, options, *, overwrite: bool, quiet: bool, load: float
):
    from dataclasses import replace

    from veloxseg.runtime.segment import segment_case

    options = replace(options, progress=not quiet)
    result = segment_case(engine, inputs, output, options, overwrite=overwrite)
    if not quiet:  # --quiet, as TotalSegmentator's: warnings stay in the sidecar
        for warning in result.warnings:
            _notice(warning)
        print_case_summary(err, result, model_load=load)
    return result


def _run_folder(
    engine, input_dir: Path, output_dir: Path, options, overwrite: bool, quiet: bool
) -> None:  # type: ignore[no-untyped-def]
    from dataclasses import replace

    from veloxseg.runtime.cases import segment_folder

    options = replace(options, progress=not quiet)  # each case's windows, under the case bar
    _with_progress(
        input_dir, output_dir, engine.metadata.in_channels, quiet,
        lambda on_case: segment_folder(
            engine, input_dir, output_dir, options, overwrite=overwrite, on_case=on_case
        ),
    )  # fmt: skip


def _run_ray(
    model: Path | None, input_dir: Path, output_dir: Path, options, overwrite: bool, quiet: bool,
    **cluster: Any,
) -> None:  # type: ignore[no-untyped-def]  # fmt: skip
    """Folder mode on a Ray cluster (``veloxseg.runtime.ray_cohort``); Ray is an optional extra."""
    try:
        import ray  # noqa: F401
    except ImportError:
        _fail("--ray needs Ray: pip install 'veloxseg[cluster]'", 2)
    from veloxseg.assets import bundled_model
    from veloxseg.runtime.model_file import open_model_file
    from veloxseg.runtime.ray_cohort import segment_folder_ray

    model = model or bundled_model()
    _with_progress(
        input_dir, output_dir, open_model_file(model).card.in_channels, quiet,
        lambda on_case: segment_folder_ray(
            model, input_dir, output_dir, options, overwrite=overwrite, on_case=on_case, **cluster
        ),
    )  # fmt: skip


def _with_progress(
    input_dir: Path,
    output_dir: Path,
    n_modalities: int,
    quiet: bool,
    run: Callable[[Callable[[str, str], None]], Any],
) -> None:
    """Run a folder (``run(on_case)``) under a progress bar over its cases, then report; exit 1
    if any case failed."""
    from rich.progress import MofNCompleteColumn, Progress

    from veloxseg.runtime.cases import check_folder_run, ignored_note

    total = len(check_folder_run(input_dir, output_dir, n_modalities))  # refusals before the bar
    if not quiet and (note := ignored_note(input_dir)):
        _notice(note, "note")
    finished: list[str] = []

    def on_case(case: str, status: str) -> None:
        finished.append(status)
        bar.advance(task)

    try:
        with Progress(
            *Progress.get_default_columns(), MofNCompleteColumn(), console=err, disable=quiet
        ) as bar:
            task = bar.add_task("cases", total=total)
            report = run(on_case)
    except (KeyboardInterrupt, SystemExit):  # Ctrl-C, or SIGTERM as main() raises it
        _notice(f"stopped after {finished.count('done')} of {total} cases were segmented; run "
                "the same command again to go on (finished cases are skipped)", "note")  # fmt: skip
        raise
    print_folder_summary(err, report, quiet)
    if report.failed:
        raise typer.Exit(1)


@app.command()
@friendly_errors
def demo(
    output: Annotated[Path, typer.Option("-o", "--output", help="Output folder.")] = Path(
        "veloxseg_demo"
    ),
    backend: Backend = "auto",
    precision: Precision = "auto",
    threads: Annotated[int | None, typer.Option(min=1, help="CPU threads.")] = None,
    overlap: Overlap = 0.25,
    blend: BlendOption = "constant",
    tta: Tta = False,
    batch_size: BatchSize = 1,
    quiet: Quiet = False,
) -> None:
    """Segment the bundled sample with the bundled model and print the Dice against its label."""
    import nibabel as nib

    from veloxseg.assets import sample_case
    from veloxseg.runtime.output_files import create_output_folder
    from veloxseg.train.metrics import dice

    inputs, label_path = sample_case()
    from veloxseg.runtime.segment import SegmentOptions

    options = SegmentOptions(  # checked here, before the model's compile
        overlap=overlap, blend=blend, batch_size=batch_size, tta=tta, preview=True
    )
    if output.exists() and not output.is_dir():
        raise ValueError(f"demo output {output} is a file; pass a folder with -o")
    create_output_folder(output)
    start = time.perf_counter()
    engine = _open_engine(None, backend, precision, threads)
    load = time.perf_counter() - start
    output = output / "sample_seg.nii.gz"  # a rerun replaces the last demo's outputs
    result = _run_case(engine, inputs, output, options, overwrite=True, quiet=quiet, load=load)
    predicted = nib.load(result.output).get_fdata() > 0
    reference = nib.load(label_path).get_fdata() > 0
    typer.echo(f"Dice vs sample label: {dice(predicted, reference):.3f}")
    typer.echo(f"wrote {result.output}, {result.sidecar}, {result.preview}")


@app.command()
@friendly_errors
def info(
    model: Annotated[Path | None, typer.Argument(help="ONNX model (default: bundled).")] = None,
) -> None:
    """Print a model's card, operator counts, size, inputs and outputs."""
    from veloxseg.cli.output import print_model_info
    from veloxseg.runtime.model_file import open_model_file

    if model is None:
        from veloxseg.assets import bundled_model

        model = bundled_model()
    print_model_info(Console(), open_model_file(model))


@app.command()
@friendly_errors
def export(
    checkpoint: Annotated[
        Path, typer.Argument(help="Upstream-format or bare state-dict checkpoint.")
    ],
    config: Annotated[str, typer.Option("--config", "-c", help="Config name or JSON file.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Output .onnx file.")],
    opset: Annotated[int, typer.Option(help="ONNX opset (11 to 20).")] = 17,
    card: Annotated[
        Path | None,
        typer.Option(
            help="JSON with model-card overrides (default normalisation: the "
            "normalization.json beside the checkpoint, if any)."
        ),
    ] = None,
    verify: Annotated[bool, typer.Option(help="Check parity in ORT and OpenVINO.")] = True,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing output file.")] = False,
) -> None:
    """Export a PyTorch checkpoint to ONNX with the ai.veloxseg custom op and a model card."""
    try:
        from veloxseg.export import ExportMismatchError, export_onnx
    except ImportError as e:
        _fail(f"export needs torch: pip install 'veloxseg[export]' ({e})", 2)
    try:
        result = export_onnx(checkpoint, config, output, opset=opset, card_overrides=card,
                             verify=verify, overwrite=overwrite)  # fmt: skip
    except ExportMismatchError as e:
        _fail(f"{one_line(e)}; nothing was written", 1)
    typer.echo(f"wrote {result.path} ({result.custom_nodes} ai.veloxseg nodes)")
    for backend, diff in result.max_abs_diff.items():
        typer.echo(f"  {backend}: max |Δlogit| vs PyTorch = {diff:.2e}")
    if result.normalization_file:
        typer.echo(f"normalisation from {result.normalization_file} (written by veloxseg train)")
    if result.placeholder_statistics:
        _notice(
            "the card carries placeholder CT statistics, not those of your training data, so CT "
            "is normalised wrongly; re-export with --card FILE.json holding a 'normalization' "
            "list (e.g. the normalization.json that veloxseg train writes)"
        )
    if result.generic_card_fields:
        _notice(result.generic_card_notice)


@app.command()
@friendly_errors
def train(
    output: Annotated[Path, typer.Option("-o", "--output", help="Run folder (checkpoints, logs).")],
    steps: Annotated[
        int | None, typer.Option(help="Optimiser steps [default: 3000, or the resumed run's].")
    ] = None,
    batch_size: Annotated[int, typer.Option(help="96^3 patches per step.")] = 8,
    pool_size: Annotated[
        int | None, typer.Option(help="Phantoms in the pool [default: 64, or the resumed run's].")
    ] = None,
    device: Annotated[str, typer.Option(help="auto, cuda or cpu.")] = "auto",
    resume: Annotated[
        Path | None, typer.Option(help="A run's checkpoint_last.pth to continue from.")
    ] = None,
    time_limit: Annotated[float | None, typer.Option(help="Stop and save after N minutes.")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace a run already in -o.")] = False,
) -> None:
    """Train VeloxSeg (AutoPET-II config) on phantom PET/CT with the upstream recipe."""
    try:
        from veloxseg.train.trainer import train_main
    except ImportError as e:
        _fail(f"training needs torch: pip install 'veloxseg[train]' ({e})", 2)
    final = train_main(output, steps=steps, batch_size=batch_size, pool_size=pool_size,
                       device=device, resume=resume, time_limit_minutes=time_limit,
                       overwrite=overwrite)  # fmt: skip
    typer.echo(f"final checkpoint: {final}")


@app.command()
@friendly_errors
def bench(
    model: Annotated[
        Path | None, typer.Option("-m", "--model", help="ONNX model (default: bundled).")
    ] = None,
    input: Annotated[
        list[Path] | None,
        typer.Option(
            "-i",
            "--input",
            help="Cut patches from this case (one file per modality, or one 4D NIfTI); "
            "default: the bundled sample if the model takes CT, PET, else seeded noise.",
        ),
    ] = None,
    backends: Annotated[str, typer.Option(help="Comma-separated formats (default: all).")] = "all",
    threads: Annotated[
        int, typer.Option(min=1, help="Threads for every engine and for PyTorch.")
    ] = 2,
    iterations: Annotated[
        int, typer.Option(min=1, help="Timed patches per format per round.")
    ] = 10,
    rounds: Annotated[
        int,
        typer.Option(min=1, help="Round-robin rounds over the formats (ratios: median of rounds)."),
    ] = 3,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write results as JSON.")] = None,
    plot: Annotated[
        Path | None, typer.Option(help="Write a bar chart (.png, .svg, .pdf...).")
    ] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace existing --json/--plot files.")] = False,
) -> None:
    """Patches/s, latency, peak RSS and accuracy per backend x precision vs PyTorch eager."""
    from veloxseg.cli.bench import (
        FORMATS,
        bench_patches,
        check_results_path,
        cpu_description,
        eager_note,
        print_results,
        write_json,
        write_plot,
    )

    if model is None:
        from veloxseg.assets import bundled_model

        model = bundled_model()
    for path, example in ((json_out, "bench.json"), (plot, "bench.png")):
        if path is not None:  # in milliseconds, not after minutes of timing
            check_results_path(path, [model, *(input or [])], example, overwrite)
    formats = list(FORMATS) if backends == "all" else [b.strip() for b in backends.split(",")]
    report = bench_patches(
        model, [f for f in formats if f], threads, iterations, rounds=rounds, inputs=input
    )
    if note := eager_note(report):
        _notice(note, "note")
    console = Console()
    if not console.is_terminal:  # logs and pipes: never truncate the table's columns
        console = Console(width=200)
    print_results(console, report, threads)
    meta = {"model": str(model), "threads": threads, "iterations": iterations, "rounds": rounds}
    if json_out:
        write_json(json_out, report, meta, overwrite)
    if plot:
        write_plot(plot, report, f"{cpu_description()}, {threads} threads", overwrite)


_INTERRUPTED = threading.Event()


def _interrupt(signum: int, frame: object) -> None:
    """Ctrl-C: remembered, so that an error a native library raises for it (OpenVINO's
    converter reports a failed conversion) still exits 130, not as a broken model."""
    _INTERRUPTED.set()
    raise KeyboardInterrupt


def _terminated(signum: int, frame: object) -> None:
    """SIGTERM (Slurm, ``timeout``, ``docker stop``) unwinds like Ctrl-C, so temp files go."""
    raise SystemExit(128 + signum)


# click's base exception (usage errors, bad option values). Typer vendors click privately since
# 0.2x; its public BadParameter derives from this class in every version.
_CLICK_ERROR: type[Exception] = next(
    c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException"
)


def main() -> None:
    """Console-script entry point: command-line mistakes (a bad option value, a missing option,
    a misspelt command) print one ``error:`` line, like every other failure, not a panel."""
    signal.signal(signal.SIGTERM, _terminated)
    signal.signal(signal.SIGINT, _interrupt)
    if not sys.stdout.isatty() and rich_utils.MAX_WIDTH is None:
        # Piped or redirected help would be cut to 80 columns (option names end in "…");
        # Typer's own TERMINAL_WIDTH variable still wins when set.
        rich_utils.MAX_WIDTH = _PIPED_HELP_WIDTH
    try:
        code = app(standalone_mode=False)
    except _CLICK_ERROR as e:
        code = getattr(e, "exit_code", 2)
        if type(e).__name__ != "NoArgsIsHelpError":  # that one has printed the help already
            ctx = getattr(e, "ctx", None)
            where = ctx.command_path if ctx is not None else "veloxseg"
            message = one_line(e.format_message()).rstrip(".")  # type: ignore[attr-defined]
            err.print(f"[bold red]error:[/] {escape(message)} (run '{where} --help')",
                      highlight=False, soft_wrap=True)  # fmt: skip
    except typer.Abort:  # end of input at a prompt
        code = 1
    sys.exit(code)
