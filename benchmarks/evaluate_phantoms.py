"""Accuracy of the bundled model on held-out phantoms against an SUV-threshold baseline.

Seeds 10000-10019 (training used 0-63). Each phantom is already at the model spacing in RAS
order, so the pipeline is normalise (from the model card) -> sliding window -> labels. Reports
Dice, lesion-wise detection (TP/FP/FN) and false-positive volume per mode (backend x precision),
and the SUV >= 2.5 connected-component baseline. Writes JSON and a Markdown table.

Usage: python benchmarks/evaluate_phantoms.py [--model M] [--modes openvino-fp32,openvino-bf16]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from veloxseg.assets import bundled_model
from veloxseg.cli.bench import FORMATS, cpu_description
from veloxseg.runtime import Engine
from veloxseg.runtime.normalization import normalize
from veloxseg.train.metrics import dice, lesion_detection, suv_threshold_baseline
from veloxseg.train.phantom import make_phantom

RESULTS = Path(__file__).parent / "results"


def score(pred: np.ndarray, label: np.ndarray, spacing) -> dict:  # type: ignore[no-untyped-def]
    det = lesion_detection(pred, label, spacing)
    return {"dice": dice(pred, label), **{k: float(v) for k, v in det.items()}}


def evaluate(model: Path, modes: list[str], seeds: range, threads: int) -> dict:
    engines = {
        m: Engine.open(model, backend=FORMATS[m][0], precision=FORMATS[m][1], threads=threads)
        for m in modes
    }
    rows = []
    for seed in seeds:
        ph = make_phantom(seed)
        row = {"seed": seed, "shape": list(ph.ct.shape), "lesion_ml": float(ph.label.sum())
               * float(np.prod(ph.spacing)) / 1000}  # fmt: skip
        baseline = suv_threshold_baseline(ph.pet, spacing=ph.spacing)
        row["baseline"] = score(baseline > 0, ph.label > 0, ph.spacing)
        for mode, engine in engines.items():
            volume = normalize(np.stack([ph.ct, ph.pet]), engine.metadata.normalization)
            start = time.perf_counter()
            labels = engine.predict_volume(volume)
            row[mode] = {**score(labels > 0, ph.label > 0, ph.spacing),
                         "seconds": time.perf_counter() - start}  # fmt: skip
        rows.append(row)
        print(seed, {k: round(v["dice"], 3) for k, v in row.items() if isinstance(v, dict)})
    return {"machine": cpu_description(), "threads": threads, "model": str(model), "cases": rows}


def summary_table(result: dict, modes: list[str]) -> str:
    lines = [
        "| method | mean Dice | TP | FP | FN | FP volume mL (mean) |",
        "|---|---|---|---|---|---|",
    ]
    for method in ["baseline", *modes]:
        cases = [c[method] for c in result["cases"]]
        name = "SUV >= 2.5 baseline" if method == "baseline" else f"VeloxSeg {method}"
        lines.append(
            f"| {name} | {np.mean([c['dice'] for c in cases]):.3f} | "
            f"{sum(c['tp'] for c in cases):.0f} | {sum(c['fp'] for c in cases):.0f} | "
            f"{sum(c['fn'] for c in cases):.0f} | "
            f"{np.mean([c['fp_volume_ml'] for c in cases]):.1f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=bundled_model())
    parser.add_argument("--modes", default="openvino-fp32,openvino-bf16")
    parser.add_argument("--first-seed", type=int, default=10000)
    parser.add_argument("--count", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    modes = args.modes.split(",")
    seeds = range(args.first_seed, args.first_seed + args.count)
    result = evaluate(args.model, modes, seeds, args.threads)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "phantom_eval.json").write_text(json.dumps(result, indent=2) + "\n")
    table = summary_table(result, modes)
    (RESULTS / "phantom_eval.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
