"""Whole-volume segmentation: our engine against the upstream path, in the same run.

Upstream path: MONAI ``sliding_window_inference`` (roi = patch, same overlap, constant blend) over
upstream-equivalent PyTorch eager, then argmax. Ours: ``Engine.predict_volume(output="labels")``
(streamed labels, pipelined). Both get the same normalised (C, X, Y, Z) float32 volume and the
same threads; each runs in its own process so that peak RSS is its own. Also reports patches/s
inside a volume against isolated patches, the peak RSS above the input array, and how many
windows are constant in every channel (ours computes each distinct one once; ``--no-reuse``
computes them all, as upstream does).

Each side runs ``--repeats`` times, alternating; seconds are medians, the speed-up is the median
of the per-pair ratios, and peak RSS the largest of the runs.

Usage: python benchmarks/bench_volume.py [--large-shape 400 400 326] [--threads 2] [--repeats 3]
       [--precision fp32|bf16] [--streams N] [--no-reuse]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from veloxseg.assets import bundled_model, sample_case
from veloxseg.cli.bench import cpu_description
from veloxseg.runtime.benchmark import peak_rss_mb, run_isolated
from veloxseg.runtime.model_file import open_model_file

RESULTS = Path(__file__).parent / "results"


def _rss_now_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS"):
                return int(line.split()[1]) / 1024
    return float("nan")


def prepare_volume(kind: str, large_shape: tuple[int, int, int], folder: Path) -> Path:
    """Write the normalised (2, X, Y, Z) float32 input (bundled sample or a large phantom) to
    ``folder`` once, so each measured process holds only the input array, not its making."""
    from veloxseg.runtime.model_file import open_model_file
    from veloxseg.runtime.nifti_io import load_case
    from veloxseg.runtime.normalization import normalize
    from veloxseg.train.phantom import make_phantom

    card = open_model_file(bundled_model()).card
    if kind == "sample":
        data, _ = load_case(sample_case()[0], card.in_channels)
    else:
        phantom = make_phantom(30000, shape=large_shape)
        data = np.stack([phantom.ct, phantom.pet])
        del phantom
    volume = normalize(np.ascontiguousarray(data, dtype=np.float32), card.normalization)
    path = folder / f"{kind}.npy"
    np.save(path, volume)
    return path


def constant_windows(path: Path, patch: tuple[int, int, int], overlap: float) -> int:
    """How many windows of the volume are constant in every channel (``segment`` computes each
    distinct one once)."""
    from veloxseg.runtime.tiling import plan_tiles

    volume = np.load(path, mmap_mode="r")
    plan = plan_tiles(volume.shape[1:], patch, overlap)
    padded = np.pad(volume, ((0, 0), *plan.pad)) if plan.shape != plan.padded_shape else volume
    count = 0
    for start in plan.starts:
        corner = (slice(s, s + p) for s, p in zip(start, patch, strict=True))
        count += all(c.min() == c.max() for c in padded[(slice(None), *corner)])
    return count


def run_ours(  # type: ignore[no-untyped-def]
    path: Path, threads: int, overlap: float, backend: str, precision: str, streams: int,
    reuse: bool,
):  # fmt: skip
    from veloxseg.runtime import Engine
    from veloxseg.runtime.tiling import plan_tiles

    volume = np.load(path)
    base_rss = _rss_now_mb()
    engine = Engine.open(
        bundled_model(), backend=backend, precision=precision, threads=threads, streams=streams
    )  # type: ignore[arg-type]
    engine.compiled(engine.label_output)  # model loading is outside the timing, on both sides
    start = time.perf_counter()
    labels = engine.predict_volume(volume, overlap=overlap, output="labels", reuse_constant=reuse)
    seconds = time.perf_counter() - start
    windows = len(plan_tiles(volume.shape[1:], engine.metadata.patch_size, overlap).starts)
    return {
        "seconds": seconds,
        "peak_rss_mb": peak_rss_mb(),
        "input_mb": volume.nbytes / 2**20,
        "rss_before_engine_mb": base_rss,
        "windows": windows,
        "patches_per_s": windows / seconds,
        "foreground_voxels": int((labels > 0).sum()),
        "labels": labels,
    }


def run_upstream(path: Path, threads: int, overlap: float):  # type: ignore[no-untyped-def]
    import torch
    from monai.inferers import sliding_window_inference

    from veloxseg.export.torch_reference import torch_model_from_onnx

    torch.set_num_threads(threads)
    volume = np.load(path)
    base_rss = _rss_now_mb()
    model = torch_model_from_onnx(bundled_model())
    patch = tuple(model.config["input_size"])
    start = time.perf_counter()
    with torch.inference_mode():
        logits = sliding_window_inference(
            torch.from_numpy(volume)[None], patch, 1, model, overlap=overlap, mode="constant"
        )
        labels = logits[0].argmax(0).to(torch.uint8).numpy()
    seconds = time.perf_counter() - start
    return {
        "seconds": seconds,
        "peak_rss_mb": peak_rss_mb(),
        "input_mb": volume.nbytes / 2**20,
        "rss_before_engine_mb": base_rss,
        "labels": labels,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--large-shape", type=int, nargs=3, default=[400, 400, 326])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--overlap", type=float, default=0.25)
    parser.add_argument("--backend", default="openvino")
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--cases", default="sample,large")
    parser.add_argument("--streams", type=int, default=0, help="0: OpenVINO chooses (as the CLI)")
    parser.add_argument("--repeats", type=int, default=3, help="ours/upstream pairs, alternated")
    parser.add_argument(
        "--no-reuse", action="store_true", help="compute every constant window, as MONAI does"
    )
    args = parser.parse_args()
    shape = tuple(args.large_shape)
    rows = []
    folder = Path(tempfile.mkdtemp(prefix="veloxseg_volume_bench_"))
    for kind in args.cases.split(","):
        path = run_isolated(prepare_volume, kind, shape, folder)
        pairs = []
        for _ in range(args.repeats):  # alternate the sides: drifting load hits both alike
            ours = run_isolated(run_ours, path, args.threads, args.overlap, args.backend,
                                args.precision, args.streams, not args.no_reuse)  # fmt: skip
            upstream = run_isolated(run_upstream, path, args.threads, args.overlap)
            pairs.append((ours, upstream))
        patch = tuple(open_model_file(bundled_model()).card.patch_size)
        constant = constant_windows(path, patch, args.overlap)
        path.unlink()
        ours, upstream = pairs[0]
        agree = float((ours.pop("labels") == upstream.pop("labels")).mean())
        for side, index in (("ours", 0), ("upstream", 1)):
            runs = [pair[index] for pair in pairs]
            merged = ours if side == "ours" else upstream
            merged["seconds"] = float(np.median([r["seconds"] for r in runs]))
            merged["seconds_runs"] = [r["seconds"] for r in runs]
            merged["peak_rss_mb"] = max(r["peak_rss_mb"] for r in runs)
        ours["patches_per_s"] = ours["windows"] / ours["seconds"]
        row = {
            "case": kind,
            "ours": ours,
            "upstream": upstream,
            "speedup": float(np.median([u["seconds"] / o["seconds"] for o, u in pairs])),
            "rss_ratio": ours["peak_rss_mb"] / upstream["peak_rss_mb"],
            "label_agreement": agree,
            "constant_windows": constant,
        }
        rows.append(row)
        print(json.dumps(row, indent=1))
    result = {
        "machine": cpu_description(),
        "load_average_at_start": os.getloadavg(),
        "settings": vars(args),
        "rows": rows,
    }
    RESULTS.mkdir(exist_ok=True)
    name = f"volume_bench_{args.precision}" + ("_1stream" if args.streams == 1 else "")
    name += "_noreuse" if args.no_reuse else ""
    (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        f"Machine: {result['machine']}, {args.threads} threads, overlap {args.overlap}, "
        f"ours = {args.backend} {args.precision}, streams {args.streams or 'auto'}, "
        f"constant windows {'computed each' if args.no_reuse else 'computed once per value'}",
        "",
        "| case | windows | constant windows | ours s | upstream s | speed-up | ours peak RSS MB "
        "| upstream peak RSS MB | RSS ratio | ours peak above input-loaded RSS MB "
        "| ours patches/s in volume | label agreement |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        o, u = r["ours"], r["upstream"]
        lines.append(
            f"| {r['case']} | {o['windows']} | {r['constant_windows']} | {o['seconds']:.1f} | "
            f"{u['seconds']:.1f} | "
            f"{r['speedup']:.2f}x | {o['peak_rss_mb']:.0f} | {u['peak_rss_mb']:.0f} | "
            f"{r['rss_ratio']:.2f} | {o['peak_rss_mb'] - o['rss_before_engine_mb']:.0f} | "
            f"{o['patches_per_s']:.2f} | {100 * r['label_agreement']:.3f}% |"
        )
    (RESULTS / f"{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
