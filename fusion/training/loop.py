"""``fusion train``: the generic training loop over any in-loop :class:`~fusion.training.Trainable`.

Outputs under ``runs/train/<name>/`` (rank 0 writes, every file atomically): ``config.yaml`` (resolved),
``classes.yaml`` (the job's vocabulary), ``checkpoint.pt`` (every ``train.checkpoint_every`` steps and at each epoch
end), ``metrics.jsonl`` (``step`` and ``eval`` records), ``results.png``, and ``weights/{last,best}.safetensors``
with ``weights/{last,best}.member.yaml`` (the member config that loads them back into an ensemble).

Under ``torchrun`` every rank computes the gradients of its share of the global batch and the gradients are
averaged with one all-reduce before clipping (the data-parallel rule ``DistributedDataParallel`` applies; done
by hand so that plugin models need no wrapper and unused parameters need no special case).
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from fusion.classes import ClassMap
from fusion.distributed import DistContext, init_distributed
from fusion.io import atomic_write_text, atomic_write_yaml
from fusion.training import state as st
from fusion.training.config import TrainConfigBase, load_train_config
from fusion.training.external import write_member
from fusion.training.job import HookFactory, LoopHook, LossFn, resolve_run
from fusion.training.trainable import Trainable

__all__ = ["LoopHook", "train"]


@dataclass
class _Run:
    cfg: TrainConfigBase
    out: Path
    dist: DistContext
    device: torch.device
    class_map: ClassMap
    trainable: Trainable
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler | None
    ema: Any
    amp: torch.dtype | None
    loader: Any
    steps_per_epoch: int
    val: Any = None
    loss: LossFn | None = None
    modules: nn.Module | None = None
    kind: str = "train"
    epoch: int = 0
    epoch_step: int = 0
    step: int = 0
    best: float = -math.inf
    best_epoch: int = -1

    @property
    def total_steps(self) -> int:
        return self.cfg.train.epochs * self.steps_per_epoch


def train(
    config: str | Path | dict[str, Any] | TrainConfigBase | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    *,
    root: str | Path = "runs",
    resume: str | Path | None = None,
    verbose: bool = True,
) -> dict[str, Any] | None:
    """Train the config's model; returns the summary (best metric, files) on rank 0, ``None`` on other ranks.

    Args:
        config: A training config (path, shipped name, mapping or validated model); ignored with ``resume``.
        overrides: ``dotted.path=value`` strings.
        root: Where ``train/<name>`` run folders are created.
        resume: A run folder to continue from its ``checkpoint.pt`` (its ``config.yaml`` is used).
        verbose: Progress bar and summary lines (rank 0).
    """
    dist = init_distributed()
    try:
        cfg, out = resolve_run(
            "train", load_train_config, TrainConfigBase, config, overrides, root, resume, dist
        )
        return _train(cfg, out, dist, resume is not None, verbose)
    finally:
        dist.close()


def _device(cfg: TrainConfigBase, dist: DistContext) -> torch.device:
    from fusion.ensemble import resolve_device

    device = resolve_device(cfg.device)
    if device.type == "cuda" and dist.world_size > 1:
        device = torch.device("cuda", dist.local_rank % torch.cuda.device_count())
    return device


def _load_data(cfg: TrainConfigBase) -> tuple[Any, Any]:
    from fusion.coco.annotations import load_annotations

    gt_train = load_annotations(cfg.data.train.annotations)
    gt_val = load_annotations(cfg.data.val.annotations) if cfg.data.val is not None else None
    if gt_val is not None and gt_val.class_map != gt_train.class_map:
        raise ValueError(
            f"data.val.annotations: categories differ from data.train's ({gt_val.class_map} vs "
            f"{gt_train.class_map}); both splits need the same ids and names"
        )
    return gt_train, gt_val


def _train(
    cfg: TrainConfigBase,
    out: Path,
    dist: DistContext,
    resuming: bool,
    verbose: bool,
    hook_factory: HookFactory | None = None,
) -> dict | None:
    """Train ``cfg`` into ``out``; ``hook_factory`` (``fusion distill``) changes the model, loss or data."""
    import random

    import numpy as np

    from fusion.registry import DETECTORS

    gt_train, gt_val = _load_data(cfg)
    class_map = gt_train.class_map
    device = _device(cfg, dist)
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    hook = hook_factory(gt_train, gt_val, class_map, device) if hook_factory is not None else LoopHook()
    trainable = hook.trainable or DETECTORS.get(cfg.model.type).trainable(cfg.model, class_map, device)
    if dist.is_main and not resuming:
        atomic_write_yaml(out / "config.yaml", cfg.model_dump(mode="json"))
        atomic_write_yaml(out / "classes.yaml", {"names": list(class_map.names)})
    if trainable.owns_loop:
        from fusion.training.external import fit_external

        return fit_external(cfg, out, trainable, class_map, device, dist, resuming)
    run = _build_run(cfg, out, dist, device, class_map, trainable, gt_train, gt_val, hook)
    if resuming:
        _restore(run, st.load_checkpoint(out / "checkpoint.pt"))
    else:
        _broadcast_weights(run)
    # Ranks draw different dropout masks and proposal samples, from seeds fixed by the job's seed.
    if not resuming and dist.world_size > 1:
        torch.manual_seed(cfg.seed + 1000 * dist.rank)
    _loop(run, verbose)
    summary = {"out": str(out), "best": run.best, "best_epoch": run.best_epoch, "steps": run.step}
    return summary if dist.is_main else None


def _build_run(cfg, out, dist, device, class_map, trainable, gt_train, gt_val, hook: LoopHook) -> _Run:
    from fusion.training.data import CocoTrainDataset, EpochSampler, build_augment, make_train_loader

    loop = cfg.train
    if loop.batch_size % dist.world_size:
        raise ValueError(
            f"train.batch_size {loop.batch_size} (global) must be divisible by the {dist.world_size} ranks"
        )
    per_rank = loop.batch_size // dist.world_size
    augment = build_augment(cfg.data.augment, cfg.data.image_size)
    dataset = hook.dataset
    if dataset is None:
        dataset = CocoTrainDataset(gt_train, cfg.data.train.images, class_map, augment, seed=cfg.seed)
    if len(dataset) == 0:
        raise ValueError(f"data.train.annotations: {gt_train.source} has no images")
    sampler = EpochSampler(len(dataset), cfg.seed, dist.rank, dist.world_size)
    loader = make_train_loader(dataset, sampler, per_rank, cfg.data.workers)
    steps_per_epoch = math.ceil(len(sampler) / per_rank)
    trainable.model.to(device).train()
    if hook.modules is not None:
        hook.modules.to(device).train()
    optimizer = st.build_optimizer(trainable.model, loop, extra=hook.modules)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, st.lr_schedule(loop, steps_per_epoch))
    amp = {"bf16": torch.bfloat16, "fp16": torch.float16, "none": None}.get(loop.amp)
    if loop.amp == "auto":
        amp = torch.bfloat16 if device.type == "cuda" else None
    scaler = torch.amp.GradScaler(device.type) if amp == torch.float16 else None
    ema = st.build_ema(trainable.model, loop.ema.decay) if loop.ema.enabled else None
    val = (gt_val, cfg.data.val.images) if gt_val is not None else None
    return _Run(
        cfg, out, dist, device, class_map, trainable, optimizer, scheduler, scaler, ema, amp, loader,
        steps_per_epoch, val, hook.loss, hook.modules, hook.kind,
    )  # fmt: skip


def _broadcast_weights(run: _Run) -> None:
    """Every rank starts from rank 0's weights (initialisation need not be bitwise equal across processes)."""
    if run.dist.world_size == 1:
        return
    import torch.distributed as dist

    for module in (run.trainable.model, run.modules):
        for tensor in module.state_dict().values() if module is not None else ():
            dist.broadcast(tensor, src=0)


def _loop(run: _Run, verbose: bool) -> None:
    from tqdm.auto import tqdm

    sampler = run.loader.sampler
    show = verbose and run.dist.is_main
    with tqdm(
        total=run.total_steps,
        initial=run.step,
        unit="step",
        desc=f"{run.kind} {run.cfg.name}",
        disable=not show,
    ) as progress:
        while run.epoch < run.cfg.train.epochs:
            sampler.set_epoch(run.epoch, skip=run.epoch_step * run.loader.batch_size)
            for images, targets, _ in run.loader:
                lr = run.optimizer.param_groups[0]["lr"]  # the rate this step uses (group 0: non-backbone)
                losses, grad_norm = _step(run, images, targets)
                run.step += 1
                run.epoch_step += 1
                if run.dist.is_main and run.step % run.cfg.train.log_every == 0:
                    record = {
                        "kind": "step",
                        "epoch": run.epoch,
                        "step": run.step,
                        "loss": sum(losses.values()),
                    }
                    record |= {"losses": losses, "grad_norm": grad_norm, "lr": lr}
                    _log(run, record)
                progress.set_postfix(loss=f"{sum(losses.values()):.4f}", epoch=run.epoch + 1, refresh=False)
                progress.update(1)
                if run.step % run.cfg.train.checkpoint_every == 0 and run.epoch_step < run.steps_per_epoch:
                    _checkpoint(run)
            _end_epoch(run, progress)


def _step(
    run: _Run, images: list[Tensor], targets: list[dict[str, Tensor]]
) -> tuple[dict[str, float], float]:
    """One optimiser step; returns the losses (averaged over ranks) and the gradient norm before clipping."""
    device = run.device
    images = [image.to(device, non_blocking=True) for image in images]
    targets = [{key: value.to(device, non_blocking=True) for key, value in t.items()} for t in targets]
    autocast = torch.autocast(device.type, dtype=run.amp) if run.amp is not None else contextlib.nullcontext()
    with autocast:
        losses = (run.loss or run.trainable.loss)(images, targets)  # type: ignore[arg-type]
    total = sum(losses.values())
    values = torch.stack([value.detach().float() for value in losses.values()])
    if not bool(torch.isfinite(values).all()) and run.scaler is None:
        shown = {k: float(v) for k, v in zip(losses, values.tolist())}
        raise FloatingPointError(f"non-finite loss at step {run.step + 1} (epoch {run.epoch + 1}): {shown}")
    run.optimizer.zero_grad(set_to_none=True)
    (run.scaler.scale(total) if run.scaler is not None else total).backward()
    params = [p for group in run.optimizer.param_groups for p in group["params"]]
    if run.dist.world_size > 1:
        _all_reduce_grads(params, run.dist)
    if run.scaler is not None:
        run.scaler.unscale_(run.optimizer)
    max_norm = run.cfg.train.clip_grad if run.cfg.train.clip_grad > 0 else math.inf
    grad_norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
    if run.scaler is not None:
        run.scaler.step(run.optimizer)
        run.scaler.update()
    else:
        run.optimizer.step()
    run.scheduler.step()
    if run.ema is not None:
        run.ema.update_parameters(run.trainable.model)
    run.dist.all_reduce_mean(values)
    return {k: float(v) for k, v in zip(losses, values.tolist())}, float(grad_norm)


def _all_reduce_grads(params: list[Tensor], dist: DistContext) -> None:
    """Average the gradients over ranks in one flat all-reduce.

    A parameter without a gradient on some ranks counts as zeros there; one without a gradient on every rank
    keeps ``None`` (the optimiser skips it, as in a single process).
    """
    present = torch.tensor([p.grad is not None for p in params], dtype=torch.float32, device=params[0].device)
    dist.all_reduce_mean(present)
    used = [p for p, flag in zip(params, present.tolist()) if flag > 0]
    if not used:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in used]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce_mean(flat)
    offset = 0
    for param, grad in zip(used, grads):
        param.grad = flat[offset : offset + grad.numel()].view_as(grad).clone()
        offset += grad.numel()


def _end_epoch(run: _Run, progress: Any) -> None:
    loop = run.cfg.train
    last = run.epoch + 1 == loop.epochs
    evaluate = (
        run.val is not None and loop.eval_every > 0 and ((run.epoch + 1) % loop.eval_every == 0 or last)
    )
    ema_state = run.ema.module.state_dict() if run.ema is not None else None
    with st.swapped_weights(run.trainable.model, ema_state):
        stats = _evaluate(run) if evaluate else None
        improved = run.val is None or loop.eval_every == 0  # unvalidated: the best weights are the last
        if stats is not None and stats[loop.metric] > run.best:
            improved, run.best = True, stats[loop.metric]
        if improved:
            run.best_epoch = run.epoch + 1
        if run.dist.is_main:
            _export(run, "last")
            if improved:
                _export(run, "best")
    if stats is not None and run.dist.is_main:
        _log(run, {"kind": "eval", "epoch": run.epoch + 1, "step": run.step, "stats": stats})
        progress.write(f"epoch {run.epoch + 1}/{loop.epochs}: {loop.metric} {stats[loop.metric]:.4f}")
    run.epoch += 1
    run.epoch_step = 0
    _checkpoint(run)
    if run.dist.is_main:
        from fusion.training.plots import plot_results

        plot_results(run.out / "results.png", _read_metrics(run.out / "metrics.jsonl"))


def _evaluate(run: _Run) -> dict[str, float]:
    from fusion.training.evaluation import evaluate_trainable

    gt, images = run.val
    per_rank = max(run.cfg.train.batch_size // run.dist.world_size, 1)
    return evaluate_trainable(
        run.trainable, gt, images, run.class_map, run.device, run.dist, per_rank, run.cfg.data.workers
    )


def _export(run: _Run, stem: str) -> None:
    """``weights/<stem>.*`` through the plugin, and ``weights/<stem>.member.yaml``: the member config loading them."""
    folder = run.out / "weights"
    folder.mkdir(parents=True, exist_ok=True)
    fields = run.trainable.export(folder, stem)
    settings = run.cfg.model.model_dump(mode="json", exclude_unset=True)
    write_member(folder, folder / f"{stem}.member.yaml", run.cfg.model.name, fields, settings)


def _log(run: _Run, record: dict[str, Any]) -> None:
    with open(run.out / "metrics.jsonl", "a", encoding="utf-8") as handle:
        handle.write(json.dumps({**record, "time": round(time.time(), 3)}) + "\n")


def _read_metrics(path: Path, up_to_step: int | None = None) -> list[dict[str, Any]]:
    """The records of ``metrics.jsonl`` (a torn last line from a kill is skipped), optionally up to a step."""
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        with contextlib.suppress(json.JSONDecodeError):
            record = json.loads(line)
            if up_to_step is None or record.get("step", 0) <= up_to_step:
                records.append(record)
    return records


def _checkpoint(run: _Run) -> None:
    rng = run.dist.gather(st.get_rng_state())
    if not run.dist.is_main:
        return
    st.save_checkpoint(
        run.out / "checkpoint.pt",
        {
            "model": run.trainable.model.state_dict(),
            "modules": run.modules.state_dict() if run.modules is not None else {},
            "optimizer": run.optimizer.state_dict(),
            "scheduler": run.scheduler.state_dict(),
            "scaler": run.scaler.state_dict() if run.scaler is not None else {},
            "ema": run.ema.state_dict() if run.ema is not None else {},
            "rng": rng,
            "epoch": run.epoch,
            "epoch_step": run.epoch_step,
            "step": run.step,
            "best": run.best,
            "best_epoch": run.best_epoch,
        },
    )


def _restore(run: _Run, state: dict[str, Any]) -> None:
    run.trainable.model.load_state_dict(state["model"])
    if run.modules is not None:
        run.modules.load_state_dict(state.get("modules", {}))
    run.optimizer.load_state_dict(state["optimizer"])
    run.scheduler.load_state_dict(state["scheduler"])
    if run.scaler is not None and state["scaler"]:
        run.scaler.load_state_dict(state["scaler"])
    if run.ema is not None and state["ema"]:
        run.ema.load_state_dict(state["ema"])
    rng = state["rng"]
    st.set_rng_state(rng[run.dist.rank] if len(rng) == run.dist.world_size else rng[0])
    run.epoch, run.epoch_step, run.step = state["epoch"], state["epoch_step"], state["step"]
    run.best, run.best_epoch = state["best"], state["best_epoch"]
    if run.dist.is_main:  # records written after the checkpoint are written again
        kept = _read_metrics(run.out / "metrics.jsonl", up_to_step=run.step)
        atomic_write_text(run.out / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in kept))
