"""Table (b) of ``benchmarks/training.py``: fast-converging DETR ablation at a fixed wall-time budget.

Every variant is ``fusion train --config configs/train/detr.yaml`` plus its overrides (:data:`VARIANTS`), trained
for ``--minutes`` of wall time, then scored on the held-out ``test`` split from its last checkpoint. The trainer
has no time limit of its own, so the benchmark kills it (``kill -9``) when the budget is spent: the run keeps its
``checkpoint.pt`` (written every ``--checkpoint-every`` steps) and the time it has used in ``bench.json``; with
``--resume`` a later session continues each run (``fusion train --resume``) until its total reaches the budget.
The schedule is constant after warmup (step schedule, no milestones, epochs unbounded): a cosine schedule would
need the number of steps the budget allows, which is not known in advance.

The fast-DETR options come from the h-fastdetr branch (``DetrConfig`` fields and the ``detr_fast_r18`` preset of
``detectors/detr/model.py``); a variant whose options this checkout lacks is skipped with a note.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from _common import ROOT, fusion_cli, print_table, resumable_run

__all__ = ["VARIANTS", "Variant", "ablation_table"]


@dataclass(frozen=True)
class Variant:
    """An ablation row: ``fusion train`` overrides of ``configs/train/detr.yaml`` and the technique toggled."""

    name: str
    what: str
    overrides: tuple[str, ...]
    preset: str | None = None  # a PRESETS name the variant needs
    fields: tuple[str, ...] = ()  # DetrConfig fields it sets


_FAST = ("model.model=detr_fast_r18", "model.arch={}")
#: Deformable DETR (Zhu et al. 2021), box refinement and two-stage from it; mixed query selection (DINO, Zhang et
#: al. 2023); Group DETR (Chen et al. 2023); focal classification (Lin et al. 2017, as Deformable DETR);
#: denoising queries (DN-DETR, Li et al. 2022); ResNet-18 to layer3 (issue 14's lighter backbone); one-to-many
#: matching of the encoder proposals (H-DETR, Jia et al. 2023; a loss setting, ``model.loss.encoder_matches``).
VARIANTS: tuple[Variant, ...] = (
    Variant("plain", "DETR: R18 layer4, dense attention, softmax CE (configs/train/detr.yaml)", ()),
    Variant(
        "plain-r18l3",
        "plain, backbone ResNet-18 to layer3 (stride 16)",
        ("model.arch.backbone_layers=[3]",),
        fields=("backbone_layers",),
    ),
    Variant(
        "fast",
        "preset detr_fast_r18: deformable R18 l2+l3, refine, two-stage, focal",
        _FAST,
        preset="detr_fast_r18",
    ),
    Variant(
        "fast-no-deformable",
        "fast without deformable attention (dense, 1 level: no refine / two-stage)",
        (
            *_FAST,
            "model.arch.deformable=false",
            "model.arch.backbone_layers=[3]",
            "model.arch.box_refine=false",
            "model.arch.two_stage=false",
            "model.arch.num_queries=30",
        ),
        "detr_fast_r18",
        ("deformable", "backbone_layers", "box_refine", "two_stage"),
    ),
    Variant(
        "fast-single-level",
        "fast, one level (stride 16) instead of strides 8+16",
        (*_FAST, "model.arch.backbone_layers=[3]", "model.arch.num_queries=30"),
        "detr_fast_r18",
        ("backbone_layers",),
    ),
    Variant(
        "fast-no-refine",
        "fast without iterative box refinement",
        (*_FAST, "model.arch.box_refine=false"),
        "detr_fast_r18",
        ("box_refine",),
    ),
    Variant(
        "fast-no-two-stage",
        "fast without two-stage mixed query selection",
        (*_FAST, "model.arch.two_stage=false"),
        "detr_fast_r18",
        ("two_stage",),
    ),
    Variant(
        "fast+groups",
        "fast plus Group-DETR one-to-many supervision (3 query groups; the preset has 1)",
        (*_FAST, "model.arch.num_query_groups=3"),
        "detr_fast_r18",
        ("num_query_groups",),
    ),
    Variant(
        "fast-softmax",
        "fast with softmax CE instead of focal (needs no two-stage)",
        (*_FAST, "model.arch.classification=softmax", "model.arch.two_stage=false"),
        "detr_fast_r18",
        ("classification", "two_stage"),
    ),
    Variant(
        "fast+enc-o2m",
        "fast plus one-to-many encoder proposals (each object matched to 4; H-DETR's hybrid matching)",
        (*_FAST, "model.loss.encoder_matches=4"),
        "detr_fast_r18",
    ),
    Variant(
        "fast+dn",
        "fast plus denoising queries (DN-DETR/DINO, 3 groups)",
        (*_FAST, "model.arch.denoising_groups=3"),
        "detr_fast_r18",
        ("denoising_groups",),
    ),
)


def missing_options(variant: Variant) -> list[str]:
    """What of the variant's model options this checkout's DETR lacks (empty: it can run)."""
    from detectors.detr.model import PRESETS, DetrConfig

    known = {f.name for f in dataclasses.fields(DetrConfig)}
    missing = [f"preset {variant.preset}" for p in [variant.preset] if p is not None and p not in PRESETS]
    return missing + [f"DetrConfig.{name}" for name in variant.fields if name not in known]


def base_overrides(
    data: dict[str, tuple[Path, Path]], batch: int, checkpoint_every: int, workers: int = 0
) -> list[str]:
    """Overrides every variant shares: the rendered data, budget-friendly loop settings, no in-loop evaluation."""
    (train_ann, train_img), (val_ann, val_img) = data["train"], data["val"]
    return [
        f"data.train.annotations={train_ann}", f"data.train.images={train_img}",
        f"data.val.annotations={val_ann}", f"data.val.images={val_img}",
        f"data.workers={workers}", f"train.batch_size={batch}", "train.epochs=100000", "train.schedule=step",
        "train.milestones=[]", "train.eval_every=0", f"train.checkpoint_every={checkpoint_every}", "train.log_every=10",
    ]  # fmt: skip


def train_variant(
    variant: Variant, out: Path, shared: list[str], budget_s: float, resume: bool, device: str, threads: int
) -> dict[str, Any]:
    """Train (or continue) one variant's run until it has used ``budget_s``; returns its ``bench.json``."""
    project = out / "ablation"
    overrides = [*shared, *variant.overrides, f"name={variant.name}", f"device={device}"]
    fresh = fusion_cli("train", "--config", str(ROOT / "configs/train/detr.yaml"), "--project", str(project),
                       *overrides)  # fmt: skip
    folder, log = project / "train" / variant.name, out / "logs" / f"{variant.name}.log"
    return resumable_run(folder, fresh, log, resume=resume, budget_s=budget_s, threads=threads)


def evaluate_run(folder: Path, split: tuple[Path, Path], device: str) -> dict[str, Any]:
    """COCO stats on ``split`` of the run's last checkpoint (EMA weights when the run keeps them)."""
    from fusion.coco.annotations import load_annotations
    from fusion.distributed import DistContext
    from fusion.registry import DETECTORS
    from fusion.training.config import load_train_config
    from fusion.training.evaluation import evaluate_trainable
    from fusion.training.state import load_checkpoint

    cfg = load_train_config(folder / "config.yaml", [f"device={device}"])
    gt_train = load_annotations(cfg.data.train.annotations)
    target = torch.device(device)
    trainable = DETECTORS.get(cfg.model.type).trainable(cfg.model, gt_train.class_map, target)
    state = load_checkpoint(folder / "checkpoint.pt")
    weights = state["model"]
    if state.get("ema"):
        weights = {k.removeprefix("module."): v for k, v in state["ema"].items() if k.startswith("module.")}
    trainable.model.load_state_dict(weights)
    trainable.model.to(target)
    gt = load_annotations(split[0])
    stats = evaluate_trainable(
        trainable, gt, split[1], gt_train.class_map, target, DistContext(), batch_size=16
    )
    return {"step": int(state["step"]), "epoch": int(state["epoch"]), **stats}


def ablation_table(
    data: dict[str, tuple[Path, Path]],
    out: Path,
    minutes: float,
    names: list[str] | None,
    *,
    batch: int,
    checkpoint_every: int,
    resume: bool,
    device: str,
    threads: int,
    workers: int = 0,
) -> None:
    """Train every selected variant for ``minutes`` of wall time (resumable), then print AP on the test split."""
    shared = base_overrides(data, batch, checkpoint_every, workers)
    chosen = [v for v in VARIANTS if names is None or v.name in names]
    unknown = sorted(set(names or []) - {v.name for v in VARIANTS})
    if unknown:
        raise ValueError(f"--variants: unknown {unknown}; known: {[v.name for v in VARIANTS]}")
    rows, notes = [], []
    for variant in chosen:
        missing = missing_options(variant)
        if missing:
            notes.append(
                f"{variant.name}: skipped, this checkout's DETR lacks {', '.join(missing)} (h-fastdetr)"
            )
            continue
        state = train_variant(variant, out, shared, minutes * 60, resume, device, threads)
        folder = out / "ablation" / "train" / variant.name
        if "error" in state or not (folder / "checkpoint.pt").is_file():
            reason = state.get("error", "no checkpoint written within the budget").strip().splitlines()[-1:]
            notes.append(
                f"{variant.name}: failed ({' '.join(reason)}); log {out / 'logs' / (variant.name + '.log')}"
            )
            continue
        stats = evaluate_run(folder, data["test"], device)
        rows.append(
            [variant.name, stats["step"], state["trained_s"] / 60, stats["AP"], stats["AP50"], variant.what]
        )
        notes.append(f"{variant.name}: {state['command']}")
    print_table(
        f"(b) fast-converging DETR ablation: AP on {data['test'][0].parent.name} ({data['test'][0]}) after "
        f"{minutes:g} min of training wall time each, {device}, batch {batch}",
        ["variant", "steps", "minutes", "AP", "AP50", "what"],
        rows,
        ["target: >= 0.5 AP within 60 CPU-minutes (moonshot 30), plain DETR near 0 (issue 14)",
         "constant LR after warmup (budget runs have no known end); steps since the last checkpoint are lost at the "
         "kill; minutes include process start-up", *notes],
    )  # fmt: skip
