"""Table (a) of ``benchmarks/training.py``: our DETR training step vs Hugging Face ``transformers``' on the same
architecture, weights and batch.

One step = forward + set-criterion loss + backward + gradient clipping (0.1) + AdamW step (backbone LR group), as
``fusion train`` does it (``DetrTrainable.loss`` then the loop's update). The reference is
``DetrForObjectDetection`` with our weights mapped in (``benchmarks/detr_transformers.py``) and its own Hungarian
loss (``labels=``); its trainable parameters are set to ours (its non-timm ResNet would otherwise freeze the
whole backbone: it looks for ``stage.N`` in names spelled ``stages.N``). The two steps alternate, round by round,
so load on a shared CPU hits both alike. A parity line checks that both compute the same loss (dropout off).
"""

from __future__ import annotations

import contextlib
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torchvision.ops import box_convert

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, print_table
from detr_transformers import transformers_state_dict, transformers_twin

__all__ = ["ARCHS", "step_table"]

#: name -> overrides of configs/train/detr.yaml (the small DETR of the training config, and the official R50 size)
ARCHS: dict[str, list[str]] = {
    "small": [],
    "r50": ["model.model=detr_resnet50", "model.arch={}"],
}


def _batch(split: tuple[Path, Path], size: int, device: torch.device) -> tuple[list[Tensor], list[dict]]:
    """The first ``size`` images of ``split`` (float [0, 1]) with their pixel xyxy boxes and labels."""
    from fusion.coco.annotations import load_annotations
    from fusion.training.data import CocoTrainDataset

    gt = load_annotations(split[0])
    dataset = CocoTrainDataset(gt, split[1], gt.class_map, None, seed=0)
    items = [dataset[(i % len(dataset), 0)] for i in range(size)]
    images = [image.to(device) for image, _, _ in items]
    targets = [{k: v.to(device) for k, v in t.items()} for _, t, _ in items]
    return images, targets


def _ours(arch: str, classes: Any, device: torch.device, dropout: float | None = None) -> Any:
    from fusion.registry import DETECTORS
    from fusion.training.config import load_train_config

    overrides = [*ARCHS[arch], *([f"model.arch.dropout={dropout}"] if dropout is not None else [])]
    cfg = load_train_config(ROOT / "configs/train/detr.yaml", overrides)
    return DETECTORS.get("detr").trainable(cfg.model, classes, device), cfg.train


def _reference(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """transformers' DETR with ``model``'s weights, training the same parameters."""
    twin = transformers_twin(model).to(device).train()
    flags = {name: torch.full((3,), float(p.requires_grad)) for name, p in model.named_parameters()}
    wanted = {name: bool(value[0]) for name, value in transformers_state_dict(flags).items()}
    for name, param in twin.named_parameters():
        param.requires_grad_(wanted[name])
    return twin


def _optimizer(model: torch.nn.Module, loop: Any, backbone_prefix: str) -> torch.optim.AdamW:
    groups: dict[str, list[Tensor]] = {"backbone": [], "rest": []}
    for name, param in model.named_parameters():
        if param.requires_grad:
            groups["backbone" if name.startswith(backbone_prefix) else "rest"].append(param)
    return torch.optim.AdamW(
        [{"params": groups["rest"], "lr": loop.lr}, {"params": groups["backbone"], "lr": loop.backbone_lr}],
        weight_decay=loop.weight_decay,
    )


def _labels(images: list[Tensor], targets: list[dict]) -> list[dict[str, Tensor]]:
    out = []
    for image, target in zip(images, targets):
        h, w = image.shape[-2:]
        scale = torch.tensor([w, h, w, h], dtype=torch.float32, device=image.device)
        boxes = box_convert(target["boxes"].float(), "xyxy", "cxcywh") / scale
        out.append({"class_labels": target["labels"], "boxes": boxes})
    return out


class _Steps:
    """One training step of ours and of the reference on a fixed batch."""

    def __init__(
        self, arch: str, split: tuple[Path, Path], batch: int, device: torch.device, amp: bool
    ) -> None:
        from detectors.detr.preprocess import nested_batch
        from fusion.coco.annotations import load_annotations

        torch.manual_seed(0)
        classes = load_annotations(split[0]).class_map
        self.trainable, loop = _ours(arch, classes, device)
        self.reference = _reference(self.trainable.model, device)
        self.opt_ours = _optimizer(self.trainable.model, loop, "backbone")
        self.opt_ref = _optimizer(self.reference, loop, "model.backbone")
        self.clip = loop.clip_grad
        self.images, self.targets = _batch(split, batch, device)
        pixels, mask = nested_batch(self.images)
        self.ref_inputs = {
            "pixel_values": pixels,
            "pixel_mask": (~mask).long(),
            "labels": _labels(self.images, self.targets),
        }
        self.device, self.amp, self.arch = device, amp, arch
        self.params = sum(p.numel() for p in self.trainable.model.parameters())

    def _autocast(self) -> Any:
        if not self.amp:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16)

    def _update(self, loss: Tensor, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], self.clip)
        optimizer.step()

    def ours(self) -> float:
        with self._autocast():
            losses = self.trainable.loss(self.images, self.targets)
        total = sum(losses.values())
        self._update(total, self.trainable.model, self.opt_ours)
        return float(total.detach())

    def ref(self) -> float:
        with self._autocast():
            loss = self.reference(**self.ref_inputs).loss
        self._update(loss, self.reference, self.opt_ref)
        return float(loss.detach())


def _timed(step: Any, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def parity(split: tuple[Path, Path], batch: int = 4) -> tuple[float, float]:
    """Total loss of ours and of the reference on the same batch and weights, dropout off (must agree)."""
    from detectors.detr.preprocess import nested_batch
    from fusion.coco.annotations import load_annotations

    torch.manual_seed(0)
    device = torch.device("cpu")
    trainable, _ = _ours("small", load_annotations(split[0]).class_map, device, dropout=0.0)
    reference = _reference(trainable.model, device)
    images, targets = _batch(split, batch, device)
    pixels, mask = nested_batch(images)
    with torch.no_grad():
        ours = float(sum(trainable.loss(images, targets).values()))
        ref = float(
            reference(pixel_values=pixels, pixel_mask=(~mask).long(), labels=_labels(images, targets)).loss
        )
    return ours, ref


def step_table(
    split: tuple[Path, Path], archs: list[str], devices: list[str], batch: int, gpu_batch: int, reps: int
) -> None:
    """Print images/s of ours vs the reference per architecture and device (CUDA: fp32 and bf16 rows)."""
    rows = []
    for device_name in devices:
        device = torch.device(device_name)
        if device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32
            torch.backends.cudnn.allow_tf32 = False
        modes = [False, True] if device.type == "cuda" else [False]
        size = gpu_batch if device.type == "cuda" else batch
        for arch in archs:
            for amp in modes:
                rows.append(_measure(arch, split, size, device, amp, reps))
    ours, ref = parity(split)
    print_table(
        f"(a) DETR training step, ours vs transformers' DetrForObjectDetection (same weights, batch, optimiser); "
        f"best / median of {reps} alternating rounds, torch threads {torch.get_num_threads()}",
        [
            "arch",
            "params M",
            "device",
            "dtype",
            "batch",
            "ours img/s",
            "ref img/s",
            "ratio best",
            "ratio median",
            "loss@1 ours",
            "loss@1 ref",
        ],
        rows,
        [
            "target: ratio >= 1.0x the reference's throughput (issue 14)",
            f"parity (small arch, dropout 0, batch 4): total loss ours {ours:.6f} vs reference {ref:.6f} "
            f"(|diff| {abs(ours - ref):.2e})",
            "step = forward + Hungarian set loss (CE no-object 0.1, L1 x5, GIoU x2, aux layers) + backward + clip 0.1 "
            "+ AdamW; images 128 px rendered shapes (configs/train/detr.yaml model)",
        ],
    )


def _measure(
    arch: str, split: tuple[Path, Path], batch: int, device: torch.device, amp: bool, reps: int
) -> list:
    steps = _Steps(arch, split, batch, device, amp)
    first = (steps.ours(), steps.ref())  # warm-up step (allocations, cuDNN plans)
    ours_t, ref_t = [], []
    for _ in range(reps):
        ours_t.append(_timed(steps.ours, device))
        ref_t.append(_timed(steps.ref, device))
    best_o, best_r = min(ours_t), min(ref_t)
    med_o, med_r = statistics.median(ours_t), statistics.median(ref_t)
    dtype = "bf16" if amp else "fp32"
    return [arch, steps.params / 1e6, device.type, dtype, batch, batch / best_o, batch / best_r,
            f"{best_r / best_o:.2f}x", f"{med_r / med_o:.2f}x", first[0], first[1]]  # fmt: skip
