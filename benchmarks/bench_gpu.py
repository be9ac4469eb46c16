"""GPU throughput of the bundled model on a CUDA machine: PyTorch eager fp32, AMP (bf16
autocast), torch.compile (fp32 and AMP), at batch sizes up to 64, and ONNX Runtime's CUDA
provider when its GPU build is installed. Same weights as the bundled ONNX file.

Usage (on the GPU host): python benchmarks/bench_gpu.py --out DIR [--budget-s 420]
Writes gpu_bench.json and gpu_bench.md into DIR.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from veloxseg.assets import bundled_model
from veloxseg.export.torch_reference import torch_model_from_onnx

BATCHES = (1, 2, 4, 8, 16, 32, 64)


def time_cuda(fn, iterations: int = 20, warmup: int = 5) -> float:  # type: ignore[no-untyped-def]
    """Median seconds per call, measured with CUDA events after warm-up."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(iterations):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1000)
    return float(np.median(times))


def _row(mode: str, batch: int, seconds: float) -> dict:
    return {
        "mode": mode,
        "batch": batch,
        "status": "ok",
        "ms_per_batch": seconds * 1000,
        "patches_per_s": batch / seconds,
    }


def torch_modes(model: torch.nn.Module, deadline: float) -> list[dict]:
    rows = []
    compiled = None
    for mode in ("eager-fp32", "eager-amp-bf16", "compile-fp32", "compile-amp-bf16"):
        if mode.startswith("compile") and compiled is None:
            compiled = torch.compile(model)
        net = compiled if mode.startswith("compile") else model
        amp = mode.endswith("bf16")
        for batch in BATCHES:
            if time.time() > deadline:
                rows.append({"mode": mode, "batch": batch, "status": "skipped (time budget)"})
                continue
            x = torch.randn(batch, 2, 96, 96, 96, device="cuda")

            def run(net=net, x=x, amp=amp):  # type: ignore[no-untyped-def]
                with torch.inference_mode(), torch.autocast("cuda", torch.bfloat16, enabled=amp):
                    return net(x)

            try:
                seconds = time_cuda(run)
                rows.append(_row(mode, batch, seconds))
            except torch.cuda.OutOfMemoryError:
                rows.append({"mode": mode, "batch": batch, "status": "out of memory"})
            torch.cuda.empty_cache()
            print(rows[-1], flush=True)
    return rows


def onnxruntime_cuda(path: Path) -> list[dict]:
    try:
        import onnxruntime as ort
    except ImportError:
        return [{"mode": "onnxruntime-cuda", "status": "onnxruntime not installed"}]
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return [{"mode": "onnxruntime-cuda", "status": "no CUDA provider in this onnxruntime"}]
    session = ort.InferenceSession(str(path), providers=["CUDAExecutionProvider"])
    rows = []
    for batch in (1, 8, 16, 32):
        x = np.random.default_rng(0).standard_normal((batch, 2, 96, 96, 96), np.float32)
        for _ in range(3):
            session.run(None, {"image": x})
        start = time.perf_counter()
        for _ in range(10):
            session.run(None, {"image": x})
        seconds = (time.perf_counter() - start) / 10
        rows.append(_row("onnxruntime-cuda", batch, seconds))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--budget-s", type=float, default=420)
    args = parser.parse_args()
    deadline = time.time() + args.budget_s
    torch.backends.cudnn.benchmark = True
    model = torch_model_from_onnx(bundled_model()).cuda().eval()
    rows = torch_modes(model, deadline) + onnxruntime_cuda(bundled_model())
    card = torch.cuda.get_device_name(0)
    result = {"gpu": card, "torch": torch.__version__, "rows": rows}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu_bench.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [f"GPU: {card}, torch {torch.__version__}", "",
             "| mode | batch | patches/s | ms per batch |", "|---|---|---|---|"]  # fmt: skip
    for r in rows:
        if r["status"] == "ok":
            lines.append(f"| {r['mode']} | {r['batch']} | {r['patches_per_s']:.1f} | "
                         f"{r['ms_per_batch']:.2f} |")  # fmt: skip
        else:
            lines.append(f"| {r['mode']} | {r.get('batch', '-')} | {r['status']} | - |")
    (args.out / "gpu_bench.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
