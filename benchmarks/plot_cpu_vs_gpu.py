"""CPU-vs-GPU throughput plot from results/cpu_bench.json, results/gpu_bench.json and, when
present, results/gpu_bench_onnxruntime.json (best batch per GPU mode; CPU formats at batch 1,
2 threads). Writes results/cpu_vs_gpu.png."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
from matplotlib import pyplot as plt

RESULTS = Path(__file__).parent / "results"


def main() -> None:
    argparse.ArgumentParser(description=__doc__).parse_args()  # no options; --help
    cpu = json.loads((RESULTS / "cpu_bench.json").read_text())
    gpu = json.loads((RESULTS / "gpu_bench.json").read_text())
    extra = RESULTS / "gpu_bench_onnxruntime.json"
    if extra.exists():  # ONNX Runtime's CUDA provider, run apart from the PyTorch modes
        gpu["rows"] = [r for r in gpu["rows"] if not r["mode"].startswith("onnxruntime")]
        gpu["rows"] += json.loads(extra.read_text())["rows"]
    bars = [(f"CPU {r['format']}", r["patches_per_s"], "tab:blue") for r in cpu["results"]]
    best: dict[str, dict] = {}
    for row in gpu["rows"]:
        if row["status"] == "ok" and row["patches_per_s"] > best.get(row["mode"], {}).get(
            "patches_per_s", 0
        ):
            best[row["mode"]] = row
    bars += [
        (f"GPU {mode} (batch {r['batch']})", r["patches_per_s"], "tab:green")
        for mode, r in best.items()
    ]
    fig, ax = plt.subplots(figsize=(8, 4))
    ax.barh([b[0] for b in bars], [b[1] for b in bars], color=[b[2] for b in bars])
    ax.set_xscale("log")
    ax.set_xlabel("96^3 patches per second (log scale)")
    ax.set_title(
        f"CPU: {cpu['machine']}, {cpu['threads']} threads  |  GPU: {gpu['gpu']}", fontsize=8
    )
    for i, (_, value, _) in enumerate(bars):
        ax.text(value, i, f" {value:.0f}", va="center", fontsize=7)
    fig.tight_layout()
    fig.savefig(RESULTS / "cpu_vs_gpu.png", dpi=100)


if __name__ == "__main__":
    main()
