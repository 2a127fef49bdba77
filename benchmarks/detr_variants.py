"""DETR teacher vs students: parameters, CPU latency, GPU fp32/bf16 throughput; ours vs transformers' DETR.

Usage::

    python benchmarks/detr_variants.py                 # CPU: batch 1 at 384 px, best of 3 timed runs each
    python benchmarks/detr_variants.py --size 480 --reps 5 --gpu-batch 8 --gpu-size 800

Targets (issue 5): our R50 forward no slower than the reference, Hugging Face ``transformers``'
``DetrForObjectDetection`` with the same weights (``benchmarks/detr_transformers.py``; ratio >= 1.0 = as fast or faster);
4-encoder/3-decoder student >= 20% fewer parameters and >= 1.3x faster than 6/6; on GPU bf16 with fused
attention >= 2x fp32 throughput at batch 8 with outputs within bf16 tolerance. Random weights (no downloads):
speed and size do not depend on the weights.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from detr_transformers import transformers_twin

from detectors.detr import build_detr
from detectors.detr.training import build_student


class Reference(torch.nn.Module):
    """transformers' DETR with our call signature: ``(images, mask True = padding) -> its output``."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.twin = transformers_twin(model)

    def forward(self, images: torch.Tensor, mask: torch.Tensor) -> dict:
        out = self.twin(pixel_values=images, pixel_mask=(~mask).long())
        return {"pred_logits": out.logits, "pred_boxes": out.pred_boxes}


def _params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@torch.inference_mode()
def _latency(model: torch.nn.Module, images: torch.Tensor, mask: torch.Tensor, reps: int) -> float:
    model(images, mask)  # warm-up
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        model(images, mask)
        times.append(time.perf_counter() - start)
    return min(times)  # best of reps: least disturbed by other load on a shared CPU


@torch.inference_mode()
def _transformer_latency(
    model: torch.nn.Module, images: torch.Tensor, mask: torch.Tensor, reps: int
) -> float:
    """Encoder + decoder + heads only (the part a layer cut shrinks), on precomputed backbone features."""
    features, small, pos = model.backbone(images, mask)
    src = model.input_proj(features)

    def head() -> None:
        hs, _ = model.transformer(src, small, model.query_embed.weight, pos)
        model.class_embed(hs), model.bbox_embed(hs)

    head()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        head()
        times.append(time.perf_counter() - start)
    return min(times)  # best of reps: least disturbed by other load on a shared CPU


def variants() -> dict[str, torch.nn.Module]:
    teacher = build_detr("detr_resnet50").eval()
    models = {
        "teacher R50 6/6 (8 heads, FFN 2048)": teacher,
        "student 4/3": build_student(teacher, encoder_layers=4, decoder_layers=3),
        "student 4/3, 6 heads": build_student(teacher, encoder_layers=4, decoder_layers=3, num_heads=6),
        "student 4/3, 6 heads, FFN 1024": build_student(
            teacher, encoder_layers=4, decoder_layers=3, num_heads=6, dim_feedforward=1024
        ),
        "student R18 4/3, 6 heads, FFN 1024": build_student(
            teacher,
            encoder_layers=4,
            decoder_layers=3,
            num_heads=6,
            dim_feedforward=1024,
            backbone="resnet18",
        ),
    }
    # Students are built for training (train mode: dropout on); time them as they are deployed.
    return {name: model.eval() for name, model in models.items()}


def cpu_table(models: dict[str, torch.nn.Module], size: int, reps: int) -> None:
    images = torch.randn(1, 3, size, size)
    mask = torch.zeros(1, size, size, dtype=torch.bool)
    teacher = next(iter(models.values()))
    reference = Reference(teacher).eval()
    # Ours vs reference: alternate the two for `reps` rounds so that load on a shared CPU hits both alike.
    ref_time = ours_time = float("inf")
    for _ in range(reps):
        ref_time = min(ref_time, _latency(reference, images, mask, 1))
        ours_time = min(ours_time, _latency(teacher, images, mask, 1))
    print(f"\nCPU, batch 1, {size}x{size}, best of {reps} (torch threads: {torch.get_num_threads()})")
    print(
        f"{'model':40s} {'params (M)':>10s} {'vs 6/6':>8s} {'latency (s)':>12s} {'speed-up':>9s} {'transformer (s)':>16s} {'speed-up':>9s}"
    )
    print(
        f"{'transformers DETR R50 6/6':40s} {_params(reference) / 1e6:10.2f} {'':>8s} {ref_time:12.3f} {'':>9s}"
    )
    base_params = base_time = base_tr = None
    for name, model in models.items():
        seconds = _latency(model, images, mask, reps)
        tr = _transformer_latency(model, images, mask, reps)
        params = _params(model)
        base_params, base_time, base_tr = base_params or params, base_time or seconds, base_tr or tr
        print(
            f"{name:40s} {params / 1e6:10.2f} {1 - params / base_params:8.1%} {seconds:12.3f} {base_time / seconds:8.2f}x"
            f" {tr:16.3f} {base_tr / tr:8.2f}x"
        )
    print(
        f"ours vs reference, R50 6/6 (alternating rounds): {ref_time:.3f} s vs {ours_time:.3f} s -> "
        f"{ref_time / ours_time:.2f}x the reference's speed (>= 1.0 meets the target)"
    )


def gpu_table(models: dict[str, torch.nn.Module], batch: int, size: int, reps: int) -> None:
    device = torch.device("cuda")
    images = torch.randn(batch, 3, size, size, device=device)
    mask = torch.zeros(batch, size, size, dtype=torch.bool, device=device)
    mask[: batch // 2, :, size * 3 // 4 :] = True  # half the batch padded: the masked (real) path

    def run(model: torch.nn.Module, bf16: bool) -> tuple[float, dict]:
        with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):
            out = model(images, mask)
            torch.cuda.synchronize()
            start = time.perf_counter()
            for _ in range(reps):
                model(images, mask)
            torch.cuda.synchronize()
        return batch * reps / (time.perf_counter() - start), out

    print(f"\nGPU {torch.cuda.get_device_name()}, batch {batch}, {size}x{size}, {reps} runs")
    print(
        f"{'model':40s} {'fp32 img/s':>11s} {'bf16 img/s':>11s} {'bf16/fp32':>10s} {'max |dprob|':>12s} {'max |dbox|':>11s}"
    )
    reference = Reference(next(iter(models.values()))).eval().to(device)
    fp32, _ = run(reference, False)
    print(f"{'transformers DETR R50 6/6':40s} {fp32:11.1f}")
    for name, model in models.items():
        model = model.to(device)
        fp32, out32 = run(model, False)
        bf16, out16 = run(model, True)
        dprob = (out16["pred_logits"].float().softmax(-1) - out32["pred_logits"].softmax(-1)).abs().max()
        dbox = (out16["pred_boxes"].float() - out32["pred_boxes"]).abs().max()
        print(
            f"{name:40s} {fp32:11.1f} {bf16:11.1f} {bf16 / fp32:9.2f}x {float(dprob):12.4f} {float(dbox):11.4f}"
        )
        model.cpu()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", type=int, default=384)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--gpu-batch", type=int, default=8)
    parser.add_argument("--gpu-size", type=int, default=800)
    parser.add_argument("--gpu-reps", type=int, default=10)
    parser.add_argument("--skip-cpu", action="store_true")
    args = parser.parse_args()
    torch.manual_seed(0)
    models = variants()
    if not args.skip_cpu:
        cpu_table(models, args.size, args.reps)
    if torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32
        torch.backends.cudnn.allow_tf32 = False
        gpu_table(models, args.gpu_batch, args.gpu_size, args.gpu_reps)
    else:
        print("\nno CUDA device: GPU fp32/bf16 table skipped")


if __name__ == "__main__":
    main()
