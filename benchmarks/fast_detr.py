"""Fast-converging DETR vs plain DETR on rendered shapes: loss and AP after a fixed wall-clock budget, step time.

Each variant trains from random init (no pretrained weights exist offline) on the same small rendered set for
the same number of seconds, then is scored with the project's COCO evaluator on the TRAINING images (a
memorisation check: how fast the architecture can fit) and, with ``--val``, on held-out images.

    PYTHONPATH=$PWD python benchmarks/fast_detr.py --seconds 100 --variants plain,fast
    PYTHONPATH=$PWD python benchmarks/fast_detr.py --seconds 3600 --train-images 4000 --val 500 --variants all

Variants (``VARIANTS``): ``plain`` = dense DETR (ResNet-18 to layer4, softmax CE); ``fast`` = preset
``detr_fast_r18`` (deformable, R18 layer2+3, box refinement, two-stage, focal); ``fast-*`` = the fast preset with
one technique switched off, ``fast+*`` with one added (query groups, denoising): the ablation table.

Measured here (2 shared CPU cores, 1 thread, 16 rendered 128-px training images, batch 4, lr 5e-4, 110 s each):
``fast`` 76 steps, train AP 0.102 (AP50 0.200); ``plain`` 141 steps, train AP 0.0005. Step time
(``--timing 8``, 128 px, batch 4): plain 1.21 s, plain-r18l3 0.71, fast 1.36, fast+groups 2.13, fast+dn 1.41.
"""

from __future__ import annotations

import argparse
import math
import time
from typing import Any

import numpy as np
import torch

from detectors.detr import build_detr, postprocess
from detectors.detr.training import SetCriterion
from detectors.detr.training.fast_losses import FocalSetCriterion, group_set_loss
from fusion.coco.annotations import load_annotations
from fusion.coco.evaluate import evaluate
from fusion.coco.predictions import Predictions
from fusion.synthetic.render import CLASSES, render_split_image
from fusion.synthetic.render_scene import RenderConfig

_PLAIN = {"d_model": 128, "num_heads": 8, "enc_layers": 2, "dec_layers": 3, "dim_feedforward": 512}

#: name -> (preset, overrides)
VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "plain": ("detr_resnet18", {**_PLAIN, "num_queries": 100, "dropout": 0.0}),
    "plain-r18l3": ("detr_resnet18", {**_PLAIN, "num_queries": 100, "dropout": 0.0, "backbone_layers": (3,)}),
    "fast": ("detr_fast_r18", {}),
    "fast+groups": ("detr_fast_r18", {"num_query_groups": 3}),
    "fast+dn": ("detr_fast_r18", {"denoising_groups": 3}),
    "fast-no-two-stage": ("detr_fast_r18", {"two_stage": False}),
    "fast-no-refine": ("detr_fast_r18", {"box_refine": False}),
    # One stride-16 level has too few pixels for 100 two-stage proposals on small images: fewer queries.
    "fast-single-level": ("detr_fast_r18", {"backbone_layers": (3,), "num_queries": 30}),
    "fast-softmax": ("detr_fast_r18", {"classification": "softmax", "two_stage": False}),
}


def render_shapes(
    count: int, size: int = 128, seed: int = 0, split: str = "train"
) -> tuple[torch.Tensor, list[dict[str, Any]]]:
    """``count`` images of split ``split`` of the project's rendered dataset (:mod:`fusion.synthetic.render`).

    Returns:
        Normalised images ``[N, 3, size, size]`` and per image ``{"labels", "boxes" (cxcywh, normalised),
        "xywh" (pixels)}``.
    """
    images, targets = [], []
    config = RenderConfig(image_size=size)
    for index in range(count):
        rendered = render_split_image(seed, split, index, config)
        array = torch.from_numpy(np.array(rendered.pixels)).permute(2, 0, 1).float() / 255.0
        images.append((array - 0.45) / 0.25)
        xyxy = torch.as_tensor(rendered.boxes, dtype=torch.float32).reshape(-1, 4)
        xywh = torch.cat((xyxy[:, :2], xyxy[:, 2:] - xyxy[:, :2]), 1)
        cxcywh = torch.cat((xywh[:, :2] + xywh[:, 2:] / 2, xywh[:, 2:]), 1) / size
        labels = torch.as_tensor(rendered.labels, dtype=torch.int64).reshape(-1)
        targets.append({"labels": labels, "boxes": cxcywh, "xywh": xywh})
    return torch.stack(images), targets


def coco_ground_truth(targets: list[dict[str, Any]], size: int) -> dict[str, Any]:
    """COCO dict of rendered targets (image ids 1.., category ids = class index + 1)."""
    annotations = []
    for image_id, target in enumerate(targets, start=1):
        for label, box in zip(target["labels"].tolist(), target["xywh"].tolist()):
            annotations.append(
                {"id": len(annotations) + 1, "image_id": image_id, "category_id": label + 1, "bbox": box}
            )
    return {
        "images": [{"id": i, "width": size, "height": size} for i in range(1, len(targets) + 1)],
        "annotations": annotations,
        "categories": [{"id": i + 1, "name": n} for i, n in enumerate(CLASSES)],
    }


@torch.no_grad()
def average_precision(
    model: torch.nn.Module, images: torch.Tensor, targets: list[dict[str, Any]]
) -> tuple[float, float]:
    """COCO AP (0.5:0.95) and AP50 of the model on these images with the project's evaluator."""
    model.eval()
    size = images.shape[-1]
    records = []
    for start in range(0, len(images), 16):
        batch = images[start : start + 16]
        outputs = model(batch)
        dets = postprocess(
            outputs, [(size, size)] * len(batch), top_k=100, classification=model.config.classification
        )
        for offset, det in enumerate(dets):
            xywh = torch.cat((det.boxes[:, :2], det.boxes[:, 2:] - det.boxes[:, :2]), 1)
            for box, score, label in zip(xywh.tolist(), det.scores.tolist(), det.labels.tolist()):
                records.append(
                    {"image_id": start + offset + 1, "category_id": label + 1, "bbox": box, "score": score}
                )
    gt = load_annotations(coco_ground_truth(targets, size))
    stats = evaluate(gt, Predictions.from_records(records)).stats
    return stats["AP"], stats["AP50"]


def train_variant(
    name: str,
    images: torch.Tensor,
    targets: list[dict[str, Any]],
    seconds: float,
    batch: int,
    seed: int,
    lr: float = 2e-4,
    max_steps: int | None = None,
) -> dict[str, Any]:
    """Train one variant for ``seconds`` (or ``max_steps``); returns steps, s/step, first/last loss, the model."""
    preset, overrides = VARIANTS[name]
    torch.manual_seed(seed)
    model = build_detr(preset, num_classes=len(CLASSES), **overrides)
    if model.config.classification == "sigmoid":
        criterion: Any = FocalSetCriterion(len(CLASSES))
    else:
        criterion = SetCriterion(len(CLASSES))
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=1e-4
    )
    generator = torch.Generator().manual_seed(seed)
    losses, steps, start = [], 0, time.perf_counter()
    model.train()
    while time.perf_counter() - start < seconds and (max_steps is None or steps < max_steps):
        index = torch.randperm(len(images), generator=generator)[:batch]
        tgt = [{k: targets[i][k] for k in ("labels", "boxes")} for i in index.tolist()]
        loss = group_set_loss(criterion, model(images[index], targets=tgt), tgt)["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.1)
        optimizer.step()
        losses.append(float(loss.detach()))
        steps += 1
    elapsed = time.perf_counter() - start
    window = max(1, min(10, len(losses) // 4))
    return {
        "variant": name,
        "params_M": sum(p.numel() for p in model.parameters()) / 1e6,
        "steps": steps,
        "s_per_step": elapsed / max(steps, 1),
        "loss_first": float(np.mean(losses[:window])),
        "loss_last": float(np.mean(losses[-window:])),
        "model": model,
    }


def interleaved_step_times(
    names: list[str], images: torch.Tensor, targets: list[dict[str, Any]], steps: int, batch: int
) -> dict[str, float]:
    """Median training-step seconds of each variant, steps interleaved so that load changes hit all alike."""
    setups = []
    for name in names:
        preset, overrides = VARIANTS[name]
        torch.manual_seed(0)
        model = build_detr(preset, num_classes=len(CLASSES), **overrides).train()
        sigmoid = model.config.classification == "sigmoid"
        criterion = FocalSetCriterion(len(CLASSES)) if sigmoid else SetCriterion(len(CLASSES))
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
        setups.append((name, model, criterion, optimizer))
    times: dict[str, list[float]] = {name: [] for name in names}
    tgt = [{k: t[k] for k in ("labels", "boxes")} for t in targets[:batch]]
    for step in range(steps + 1):
        for name, model, criterion, optimizer in setups:
            start = time.perf_counter()
            loss = group_set_loss(criterion, model(images[:batch], targets=tgt), tgt)["loss"]
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if step:  # the first step warms up allocators and caches
                times[name].append(time.perf_counter() - start)
    return {name: float(np.median(values)) for name, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--variants", default="plain,fast", help=f"comma list or 'all' of {list(VARIANTS)}")
    parser.add_argument("--seconds", type=float, default=100.0, help="training budget per variant")
    parser.add_argument("--train-images", type=int, default=16)
    parser.add_argument("--val", type=int, default=0, help="held-out images to score (0 = none)")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--steps", type=int, default=None, help="stop a variant after this many steps")
    parser.add_argument(
        "--timing", type=int, default=0, help="only time this many interleaved steps per variant"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    names = list(VARIANTS) if args.variants == "all" else args.variants.split(",")
    unknown = sorted(set(names) - set(VARIANTS))
    if unknown:
        parser.error(f"unknown variants {unknown}; known: {list(VARIANTS)}")
    images, targets = render_shapes(args.train_images, args.size, args.seed)
    if args.timing:
        medians = interleaved_step_times(names, images, targets, args.timing, args.batch)
        base = medians[names[0]]
        print(f"batch {args.batch} of {args.size}px, median of {args.timing} interleaved steps")
        print(f"{'variant':<20}{'s/step':>8}{'vs ' + names[0]:>16}")
        for name, value in medians.items():
            print(f"{name:<20}{value:>8.3f}{value / base:>16.2f}")
        return
    val = render_shapes(args.val, args.size, args.seed, "val") if args.val else None
    print(
        f"{args.train_images} train images {args.size}px, batch {args.batch}, lr {args.lr}, "
        f"{args.seconds:.0f} s / {args.steps} steps per variant"
    )
    header = f"{'variant':<20}{'params M':>9}{'steps':>7}{'s/step':>8}{'loss 1st':>10}{'loss last':>10}{'ratio':>7}"
    header += f"{'train AP':>10}{'AP50':>7}" + (f"{'val AP':>8}{'AP50':>7}" if val else "")
    rows = []
    for name in names:
        result = train_variant(
            name, images, targets, args.seconds, args.batch, args.seed, args.lr, args.steps
        )
        result["train_ap"] = average_precision(result["model"], images, targets)
        result["val_ap"] = average_precision(result["model"], *val) if val else (math.nan, math.nan)
        rows.append(result)
        print(f"{name}: {result['steps']} steps, train AP {result['train_ap'][0]:.4f}", flush=True)
    print(header)
    for r in rows:
        line = f"{r['variant']:<20}{r['params_M']:>9.2f}{r['steps']:>7}{r['s_per_step']:>8.3f}"
        line += f"{r['loss_first']:>10.3f}{r['loss_last']:>10.3f}{r['loss_last'] / r['loss_first']:>7.2f}"
        line += f"{r['train_ap'][0]:>10.4f}{r['train_ap'][1]:>7.3f}"
        line += f"{r['val_ap'][0]:>8.4f}{r['val_ap'][1]:>7.3f}" if val else ""
        print(line)


if __name__ == "__main__":
    main()
