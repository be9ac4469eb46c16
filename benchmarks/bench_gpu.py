"""GPU throughput of the bundled model on a CUDA machine: PyTorch eager fp32, AMP (bf16
autocast), torch.compile (fp32 and AMP), at batch sizes up to 64, and ONNX Runtime's CUDA
provider when its GPU build is installed. Same weights as the bundled ONNX file.

Usage (on the GPU host): python benchmarks/bench_gpu.py --out DIR [--budget-s 420]
[--onnxruntime-only]. Writes gpu_bench.json and gpu_bench.md (gpu_bench_onnxruntime.* with
--onnxruntime-only) into DIR.
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


def onnxruntime_cuda(path: Path, reference: torch.nn.Module) -> list[dict]:
    """The same ONNX file on ONNX Runtime's CUDA provider, one graph output at a time (as the CPU
    bench), input and output kept on the GPU through IOBinding; max |Δ| against PyTorch fp32."""
    try:
        import onnxruntime as ort
    except ImportError:
        return [{"mode": "onnxruntime-cuda", "status": "onnxruntime not installed"}]
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return [{"mode": "onnxruntime-cuda", "status": "no CUDA provider in this onnxruntime"}]
    from veloxseg.runtime.model_file import LOGITS, MARGINS, graph_for_output, open_model_file

    model = open_model_file(path)
    rows = []
    for output in (LOGITS, MARGINS):
        graph = graph_for_output(model, output).SerializeToString()
        session = ort.InferenceSession(graph, providers=["CUDAExecutionProvider"])
        mode = "onnxruntime-cuda" + ("-labels" if output == MARGINS else "")
        for batch in (1, 8, 16, 32, 64):
            x = torch.randn(batch, 2, 96, 96, 96, device="cuda")
            binding = session.io_binding()
            binding.bind_input("image", "cuda", 0, np.float32, list(x.shape), x.data_ptr())
            binding.bind_output(output, "cuda")

            def run(session=session, binding=binding):  # type: ignore[no-untyped-def]
                session.run_with_iobinding(binding)

            try:
                row = _row(mode, batch, time_cuda(run, iterations=10, warmup=3))
            except Exception as e:  # a provider error (out of memory, say) ends this mode only
                rows.append({"mode": mode, "batch": batch, "status": str(e).splitlines()[0]})
                break
            if batch == 1:
                with torch.inference_mode():
                    logits = reference(x)
                expected = logits if output == LOGITS else logits[:, 1:] - logits[:, :1]
                got = torch.from_numpy(binding.copy_outputs_to_cpu()[0])
                row["max_abs_diff_vs_torch_fp32"] = float((got - expected.cpu()).abs().max())
            rows.append(row)
            print(rows[-1], flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--budget-s", type=float, default=420)
    parser.add_argument("--onnxruntime-only", action="store_true", help="skip the PyTorch modes")
    args = parser.parse_args()
    deadline = time.time() + args.budget_s
    torch.backends.cudnn.benchmark = True
    model = torch_model_from_onnx(bundled_model()).cuda().eval()
    rows = [] if args.onnxruntime_only else torch_modes(model, deadline)
    rows += onnxruntime_cuda(bundled_model(), model)
    card = torch.cuda.get_device_name(0)
    result = {"gpu": card, "torch": torch.__version__, "rows": rows}
    args.out.mkdir(parents=True, exist_ok=True)
    name = "gpu_bench_onnxruntime" if args.onnxruntime_only else "gpu_bench"
    (args.out / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [f"GPU: {card}, torch {torch.__version__}", "",
             "| mode | batch | patches/s | ms per batch |", "|---|---|---|---|"]  # fmt: skip
    for r in rows:
        if r["status"] == "ok":
            lines.append(f"| {r['mode']} | {r['batch']} | {r['patches_per_s']:.1f} | "
                         f"{r['ms_per_batch']:.2f} |")  # fmt: skip
        else:
            lines.append(f"| {r['mode']} | {r.get('batch', '-')} | {r['status']} | - |")
    (args.out / f"{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
