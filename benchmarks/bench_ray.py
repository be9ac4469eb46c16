"""Cases per minute of a phantom cohort: Ray with 1 and 2 workers against folder mode.

Every configuration gets all the cores: Ray runs 1 worker x all cores, then 2 workers sharing
them (1 thread each on 2 cores); folder mode (no Ray) runs one engine with each of those thread
counts. Wall time includes starting the workers (model compile), not starting the local Ray
cluster, which is timed apart; steady-state counts the cases finished after every worker
finished its first one, over the time from then to the last. The machine may be shared, so the
load average is recorded before each run and the runs are repeated in turn. All runs use one
explicit format (default OpenVINO fp32), not ``auto``, whose timing-based choice may differ with
the thread count. Ray's labels are compared voxel by voxel with folder mode at the same threads
(other thread counts round fp32 differently, which can flip near-tied voxels).

Usage: python benchmarks/bench_ray.py [--cases 16] [--shape 160 160 224] [--repeats 2]
       [--backend openvino] [--precision fp32]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np

from veloxseg.assets import bundled_model
from veloxseg.cli.bench import cpu_description
from veloxseg.runtime import Engine
from veloxseg.runtime.cases import FolderReport, segment_folder
from veloxseg.runtime.ray_cohort import segment_folder_ray
from veloxseg.runtime.segment import SegmentOptions
from veloxseg.train.phantom import make_phantom, save_phantom_case

RESULTS = Path(__file__).parent / "results"


def timed(run, workers: int) -> tuple[FolderReport, dict]:  # type: ignore[no-untyped-def]
    """Run ``run(on_case)``; wall seconds, and finish times of each case for the steady rate."""
    load = os.getloadavg()
    finished: list[float] = []
    start = time.perf_counter()
    report = run(lambda case, status: finished.append(time.perf_counter()))
    wall = time.perf_counter() - start
    n = len(report.done)
    warm = finished[workers - 1]  # from here on, every worker is up and busy
    steady = (n - workers) / (finished[-1] - warm) * 60 if n > workers else None
    return report, {
        "cases": n,
        "wall_s": round(wall, 2),
        "first_case_s": round(finished[0] - start, 2),
        "cases_per_min": round(n / wall * 60, 2),
        "steady_cases_per_min": round(steady, 2) if steady else None,
        "loadavg_at_start": [round(x, 2) for x in load],
    }


def differing_voxels(a: Path, b: Path, case_ids: list[str]) -> int:
    """Label voxels that differ between two output folders (0: bit-identical label data)."""
    return sum(
        int((np.asarray(nib.load(a / f"{c}.nii.gz").dataobj)
             != np.asarray(nib.load(b / f"{c}.nii.gz").dataobj)).sum())
        for c in case_ids
    )  # fmt: skip


def bench(
    n_cases: int, shape: tuple[int, int, int], repeats: int, fmt: dict[str, str], work: Path
) -> dict:
    import ray

    cpus = os.cpu_count() or 1
    model, options = bundled_model(), SegmentOptions()
    for seed in range(n_cases):
        save_phantom_case(make_phantom(seed, shape=shape), work, f"case{seed:03d}")
    images = work / "images"
    plans = sorted({(1, cpus), (min(2, cpus), max(1, cpus // 2))})  # (workers, threads)
    engines = {t: Engine.open(model, threads=t, **fmt) for t in {t for _, t in plans}}
    start = time.perf_counter()
    ray.init(num_cpus=cpus, include_dashboard=False)
    ray_start = time.perf_counter() - start
    rows = []
    try:
        for repeat in range(repeats):
            for threads, engine in engines.items():
                out = work / f"folder{threads}_{repeat}"
                _, row = timed(
                    lambda on_case, e=engine, out=out: segment_folder(
                        e, images, out, options, on_case=on_case
                    ),
                    workers=1,
                )
                rows.append({"repeat": repeat, "mode": "folder (no Ray)", "workers": 1,
                             "threads": threads, **row})  # fmt: skip
            for workers, threads in plans:
                out = work / f"ray{workers}_{repeat}"
                report, row = timed(
                    lambda on_case, out=out, w=workers, t=threads: segment_folder_ray(
                        model, images, out, options, workers=w, threads=t, on_case=on_case, **fmt
                    ),
                    workers=workers,
                )
                folder = work / f"folder{threads}_{repeat}"
                row["voxels_differing_from_folder"] = differing_voxels(out, folder, report.done)
                rows.append({"repeat": repeat, "mode": "ray", "workers": workers,
                             "threads": threads, **row})  # fmt: skip
            print(*[r for r in rows if r["repeat"] == repeat], sep="\n")
    finally:
        ray.shutdown()
    return {
        "machine": cpu_description(),
        "cpus": cpus,
        "ray_version": ray.__version__,
        "local_cluster_start_s": round(ray_start, 2),
        "case_shape": list(shape),
        **fmt,
        "model": model.name,
        "runs": rows,
    }


def table(result: dict) -> str:
    lines = [
        f"Phantom cohort of {result['runs'][0]['cases']} cases of {result['case_shape']} voxels, "
        f"bundled model ({result['backend']} {result['precision']}), {result['machine']}, "
        f"{result['cpus']} CPUs, Ray {result['ray_version']} (local cluster start "
        f"{result['local_cluster_start_s']} s, not included).",
        "",
        "| repeat | mode | workers x threads | cases/min | steady cases/min | wall s "
        "| first case s | load avg at start | voxels differing from folder mode, same threads |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["runs"]:
        same = r.get("voxels_differing_from_folder", "-")
        lines.append(
            f"| {r['repeat']} | {r['mode']} | {r['workers']} x {r['threads']} "
            f"| {r['cases_per_min']} | {r['steady_cases_per_min']} | {r['wall_s']} "
            f"| {r['first_case_s']} "
            f"| {r['loadavg_at_start'][0]} | {same} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=16)
    parser.add_argument("--shape", type=int, nargs=3, default=(160, 160, 224))
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--backend", default="openvino")
    parser.add_argument("--precision", default="fp32")
    args = parser.parse_args()
    fmt = {"backend": args.backend, "precision": args.precision}
    with tempfile.TemporaryDirectory() as work:
        result = bench(args.cases, tuple(args.shape), args.repeats, fmt, Path(work))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "ray_bench.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / "ray_bench.md").write_text(table(result))
    print(table(result))


if __name__ == "__main__":
    main()
