"""``fusion distill``: a teacher (a trained member, or a whole ensemble) -> a student, on ``fusion train``'s loop.

Outputs under ``runs/distill/<name>/``: everything ``fusion train`` writes (``config.yaml``, ``checkpoint.pt``,
``metrics.jsonl``, ``results.png``, ``weights/{best,last}.*`` with the member YAML), plus

* a member teacher: ``teacher.json`` (the teacher's fingerprint: its config and the SHA-256 of the files it
  names; a resumed run with another teacher is refused);
* an ensemble teacher: ``teacher/<split>/`` (its fused detections, cached once, fingerprinted, with the
  pseudo-label threshold chosen on the val split: :mod:`fusion.training.teacher`); a YOLO student also gets
  ``student_data/`` (the training images and the fused pseudo-labels it is given);
* ``student.yaml``: an ensemble config of the student alone, for ``fusion score`` / ``predict`` as it is;
* ``report.md`` + ``report.json``: teacher(s), fused ensemble and student side by side on the validation split.

Three ways to distill:

* member teacher (a DETR) -> in-loop student (cut from it, or any DETR config): the loss is the student
  plugin's ``distill_loss`` (ground-truth set loss + KD terms); ``distill_modules`` train beside it.
* ensemble teacher -> in-loop student (DETR): the fused boxes, augmented with the ground truth, are a second
  target set with its own matching and score-weighted losses (``teacher.labeled: extra``, Teach-DETR), or
  replace the ground truth (``replace``); on unlabelled images they are the targets.
* ensemble teacher -> own-loop student (ultralytics YOLO): ground truth and/or pseudo-labels written as a YOLO
  dataset, trained by the plugin's ``fit``.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from fusion.classes import ClassMap
from fusion.distributed import DistContext, init_distributed
from fusion.io import atomic_write_json, atomic_write_yaml
from fusion.training.distill_config import DistillConfigBase, load_distill_config
from fusion.training.job import LoopHook, resolve_run
from fusion.training.loop import _device, _load_data, _train
from fusion.training.trainable import Trainable, TrainTarget

__all__ = ["distill", "member_fingerprint"]


def distill(
    config: str | Path | dict[str, Any] | DistillConfigBase | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    *,
    root: str | Path = "runs",
    resume: str | Path | None = None,
    unlabeled: str | Path | None = None,
    report: bool = True,
    verbose: bool = True,
) -> dict[str, Any] | None:
    """Distill the config's teacher into its student; returns the summary on rank 0, ``None`` on other ranks.

    Args:
        config: A distillation config (path, shipped ``configs/distill`` name, mapping or validated model);
            ignored with ``resume``.
        overrides: ``dotted.path=value`` strings.
        root: Where ``distill/<name>`` run folders are created.
        resume: A run folder to continue (its ``config.yaml`` is used; a changed teacher is refused).
        unlabeled: A folder of unlabelled images for the ensemble teacher's pseudo-labels (sets ``unlabeled``).
        report: Write ``report.md`` / ``report.json`` after training (needs ``data.val``).
        verbose: Progress bars and summary lines (rank 0).
    """
    overrides = list(overrides)
    if unlabeled is not None:
        if resume is not None:
            raise ValueError("--unlabeled: a resumed run keeps its config's unlabeled folder")
        overrides.append(f"unlabeled={unlabeled}")
    dist = init_distributed()
    try:
        cfg, out = resolve_run(
            "distill", load_distill_config, DistillConfigBase, config, overrides, root, resume, dist
        )
        assert isinstance(cfg, DistillConfigBase)
        resuming = resume is not None
        if cfg.ensemble_teacher and _owns_loop(cfg):
            summary = _distill_external(cfg, out, dist, resuming, verbose)
        else:
            factory = functools.partial(_hook, cfg, out, dist, resuming, verbose)
            summary = _train(cfg, out, dist, resuming, verbose, hook_factory=factory)
        if dist.is_main:
            _write_student_ensemble(cfg, out)
        if dist.is_main and report and cfg.data.val is not None:
            from fusion.training.distill_report import write_report

            summary = {**(summary or {}), "report": write_report(cfg, out, verbose=verbose)}
        return summary if dist.is_main else None
    finally:
        dist.close()


def _write_student_ensemble(cfg: DistillConfigBase, out: Path) -> None:
    """``student.yaml``: an ensemble config of the student alone (``fusion score --config`` takes it as it is)."""
    import yaml

    member = yaml.safe_load((out / "weights" / "best.member.yaml").read_text())
    ensemble = {"name": cfg.name, "classes": str(out / "classes.yaml"), "device": "auto", "members": [member]}
    atomic_write_yaml(out / "student.yaml", ensemble)


def _owns_loop(cfg: DistillConfigBase) -> bool:
    """Whether the student trains with its plugin's own loop (a probe, built on the CPU and dropped: building
    it inside the seeded loop keeps runs reproducible)."""
    from fusion.registry import DETECTORS

    gt_train, _ = _load_data(cfg)
    return (
        DETECTORS.get(cfg.model.type).trainable(cfg.model, gt_train.class_map, torch.device("cpu")).owns_loop
    )


# ---------------------------------------------------------------------------------------------- member teacher
def member_fingerprint(member: Any) -> dict[str, Any]:
    """What a member teacher's outputs depend on: its config, and size + SHA-256 of every file it names (a
    safetensors checkpoint's ``.yaml`` too), and the code version; ``sha256`` of all that."""
    import hashlib

    from fusion import __version__
    from fusion.training.teacher import _leaves, file_digest

    data = json.loads(json.dumps(member.model_dump(mode="json"), sort_keys=True, default=str))
    files = {}
    for where, value in _leaves(data):
        if isinstance(value, str) and value and Path(value).is_file():
            files[where] = {"path": value, **file_digest(value)}
            sidecar = Path(value).with_suffix(".yaml")
            if Path(value).suffix == ".safetensors" and sidecar.is_file():
                files[f"{where}(yaml)"] = {"path": str(sidecar), **file_digest(sidecar)}
    found = {"ensemble": data, "files": files, "code": __version__}
    return {**found, "sha256": hashlib.sha256(json.dumps(found, sort_keys=True).encode()).hexdigest()}


def _check_member_teacher(out: Path, member: Any, resuming: bool, dist: DistContext) -> None:
    """Record the teacher's fingerprint in ``teacher.json`` (new run) or refuse a changed one (resume)."""
    from fusion.training.teacher import TeacherChangedError, fingerprint_changes

    fingerprint = member_fingerprint(member)
    path = out / "teacher.json"
    if resuming and path.is_file():
        changes = fingerprint_changes(json.loads(path.read_text())["fingerprint"], fingerprint)
        if changes:
            raise TeacherChangedError(
                f"{out}: this run was distilled from another teacher; refusing to resume with a changed teacher. "
                f"What changed: {'; '.join(changes[:8])}. Start a new run (another name) for this teacher."
            )
    elif dist.is_main:
        atomic_write_json(path, {"fingerprint": fingerprint})


def _hook(
    cfg: DistillConfigBase,
    out: Path,
    dist: DistContext,
    resuming: bool,
    verbose: bool,
    gt_train: Any,
    gt_val: Any,
    class_map: ClassMap,
    device: torch.device,
) -> LoopHook:
    from fusion.registry import DETECTORS

    if cfg.ensemble_teacher:
        return _ensemble_hook(cfg, out, dist, verbose, gt_train, gt_val, class_map, device)
    teacher_cfg = cfg.teacher  # type: ignore[attr-defined]
    _check_member_teacher(out, teacher_cfg, resuming, dist)
    teacher = DETECTORS.get(teacher_cfg.type).trainable(teacher_cfg, class_map, device)
    teacher.model.to(device).eval().requires_grad_(False)
    if cfg.student.cut is not None:
        try:
            student = teacher.cut_student(cfg.student.cut, cfg.model)
        except NotImplementedError:
            raise ValueError(
                f"student.cut: a {teacher_cfg.type!r} teacher cannot be cut into a student"
            ) from None
    else:
        student = DETECTORS.get(cfg.model.type).trainable(cfg.model, class_map, device)
    weights = dict(cfg.distill)
    if student.owns_loop or type(student).distill_loss is Trainable.distill_loss:
        raise ValueError(
            f"model.type: a {cfg.model.type!r} student cannot learn from a member teacher (no distill_loss); "
            "distill it from an ensemble teacher (teacher.ensemble) instead"
        )
    try:
        modules = student.distill_modules(teacher, weights)
    except TypeError as error:  # a teacher of a family the student cannot learn from
        raise ValueError(f"teacher.type: {error}") from None

    def loss(images: list[Tensor], targets: list[TrainTarget]) -> dict[str, Tensor]:
        return student.distill_loss(images, targets, teacher, weights)

    return LoopHook(trainable=student, loss=loss, modules=modules, kind="distill")


# -------------------------------------------------------------------------------------------- ensemble teacher
def _prepare(
    cfg: DistillConfigBase, out: Path, dist: DistContext, verbose: bool, gt_train: Any, gt_val: Any
) -> Any:
    """The ensemble teacher's caches (rank 0 computes them; the other ranks then read the complete caches)."""
    from fusion.training.teacher import prepare_teacher

    if gt_val is None or cfg.data.val is None:
        raise ValueError(
            "data.val: an ensemble teacher needs a labelled validation split (the pseudo-label threshold is "
            "chosen and recorded on it)"
        )
    teacher = cfg.teacher  # type: ignore[attr-defined]
    threshold = None if teacher.threshold == "auto" else float(teacher.threshold)
    options = {"device": cfg.device if cfg.device != "auto" else None, "batch_size": teacher.batch_size}

    def run() -> Any:
        return prepare_teacher(
            teacher.ensemble,
            out,
            (gt_train, cfg.data.train.images),
            (gt_val, cfg.data.val.images),  # type: ignore[union-attr]
            cfg.unlabeled,
            iou_thr=teacher.iou_thr,
            threshold=threshold,
            verbose=verbose and dist.is_main,
            **options,
        )

    if dist.world_size > 1:
        prepared = run() if dist.is_main else None
        dist.barrier()
        return prepared if prepared is not None else run()
    return run()


def _ensemble_hook(cfg, out, dist, verbose, gt_train, gt_val, class_map, device) -> LoopHook:
    from fusion.registry import DETECTORS
    from fusion.training.data import CocoTrainDataset, ConcatTrainDataset, build_augment

    teacher = _prepare(cfg, out, dist, verbose, gt_train, gt_val)
    mode = cfg.teacher.labeled
    augment = build_augment(cfg.data.augment, cfg.data.image_size)
    extra = {"teacher": teacher.targets("train", class_map)} if mode != "none" else {}
    parts = [CocoTrainDataset(gt_train, cfg.data.train.images, class_map, augment, cfg.seed, extra)]
    if "unlabeled" in teacher.caches:
        pseudo = {"pseudo": teacher.targets("unlabeled", class_map)}
        # Another seed: image i of the unlabelled folder is not augmented like training image i.
        parts.append(
            CocoTrainDataset(
                teacher.images["unlabeled"], cfg.unlabeled, class_map, augment, cfg.seed + 1, pseudo
            )
        )
    student = DETECTORS.get(cfg.model.type).trainable(cfg.model, class_map, device)
    loss = functools.partial(_ensemble_loss, student, mode, cfg.teacher.teacher_weight)
    dataset = ConcatTrainDataset(parts) if len(parts) > 1 else parts[0]
    return LoopHook(trainable=student, loss=loss, dataset=dataset, kind="distill")


def _target_set(target: TrainTarget, name: str) -> TrainTarget | None:
    if f"{name}_boxes" not in target:
        return None
    keys = ("boxes", "labels", "scores")
    return {key: target[f"{name}_{key}"] for key in keys}  # type: ignore[literal-required,return-value]


def _ensemble_loss(
    student: Trainable, mode: str, weight: float, images: list[Tensor], targets: list[TrainTarget]
) -> dict[str, Tensor]:
    """The student's loss on its main targets, plus (``extra``) ``weight`` × its loss on the teacher's set.

    Main targets: the ground truth (``extra``, ``none``) or the teacher's boxes (``replace``) on labelled images;
    the pseudo-labels on unlabelled images. The teacher's set (a separate matching) is the fused boxes of every
    image, so each step has the same loss terms on every rank.
    """
    main, taught = [], []
    for target in targets:
        pseudo = _target_set(target, "pseudo")
        teacher = _target_set(target, "teacher") or pseudo
        if pseudo is not None:
            main.append(pseudo)
        elif mode == "replace":
            main.append(teacher)
        else:
            main.append({"boxes": target["boxes"], "labels": target["labels"]})
        taught.append(teacher)
    losses = student.loss(images, main)  # type: ignore[arg-type]
    if mode == "extra" and weight > 0:
        losses |= {f"teacher_{k}": v * weight for k, v in student.loss(images, taught).items()}  # type: ignore[arg-type]
    return losses


# ----------------------------------------------------------------------------------------- own-loop students
def _distill_external(
    cfg: DistillConfigBase, out: Path, dist: DistContext, resuming: bool, verbose: bool
) -> dict[str, Any]:
    """Ensemble teacher -> own-loop student (YOLO): a training split of the labelled (and unlabelled) images
    with the ground truth and/or the fused pseudo-labels at the threshold, trained by the plugin's ``fit``."""
    from fusion.registry import DETECTORS
    from fusion.training.config import SplitConfig
    from fusion.training.external import fit_external

    mode = cfg.teacher.labeled  # type: ignore[attr-defined]
    if mode == "extra":
        raise ValueError(
            f"teacher.labeled: 'extra' needs a student whose loss takes a second, score-weighted target set (an "
            f"in-loop plugin such as detr); a {cfg.model.type} student trains on one label set per image: use "
            "'none' (ground truth, pseudo-labels on unlabelled images) or 'replace' (pseudo-labels only)"
        )
    taken = sorted({"pseudo_labels", "pseudo_threshold", "ground_truth"} & set(cfg.options))
    if taken:
        raise ValueError(f"options {taken}: fusion distill sets them from the teacher; remove them")
    if dist.world_size > 1:
        raise ValueError(f"model.type {cfg.model.type!r} trains with its own loop; run it without torchrun")
    gt_train, gt_val = _load_data(cfg)
    class_map = gt_train.class_map
    device = _device(cfg, dist)
    torch.manual_seed(cfg.seed)
    if not resuming:
        atomic_write_yaml(out / "config.yaml", cfg.model_dump(mode="json"))
        atomic_write_yaml(out / "classes.yaml", {"names": list(class_map.names)})
    teacher = _prepare(cfg, out, dist, verbose, gt_train, gt_val)
    annotations, images, pseudo = _student_data(cfg, out / "student_data", teacher, gt_train, mode)
    options = {**cfg.options, "pseudo_labels": str(pseudo), "pseudo_threshold": teacher.threshold.threshold}
    options["ground_truth"] = mode != "replace"
    data = cfg.data.model_copy(
        update={"train": SplitConfig(annotations=str(annotations), images=str(images))}
    )
    job_cfg = cfg.model_copy(update={"data": data, "options": options})
    trainable = DETECTORS.get(cfg.model.type).trainable(cfg.model, class_map, device)
    return fit_external(job_cfg, out, trainable, class_map, device, dist, resuming)


def _student_data(
    cfg: DistillConfigBase, folder: Path, teacher: Any, gt_train: Any, mode: str
) -> tuple[Path, Path, Path]:
    """``annotations.json`` (labelled + unlabelled images, ground truth of the labelled ones), ``images/`` (hard
    links, ``labeled/`` and ``unlabeled/``) and ``pseudo.json`` (the fused detections given as pseudo-labels)."""
    from fusion.coco.predictions import Predictions

    sources = {"labeled": (gt_train, Path(cfg.data.train.images))}
    if "unlabeled" in teacher.caches:
        sources["unlabeled"] = (teacher.images["unlabeled"], Path(str(cfg.unlabeled)))
    images, annotations = [], []
    for prefix, (gt, root) in sources.items():
        for image in gt.dataset["images"]:
            name = f"{prefix}/{image['file_name']}"
            _link(root / image["file_name"], folder / "images" / name)
            images.append({**image, "file_name": name})
        if prefix == "labeled":
            annotations = list(gt.dataset["annotations"])
    dataset = {"images": images, "annotations": annotations, "categories": gt_train.dataset["categories"]}
    atomic_write_json(folder / "annotations.json", dataset)
    given = [teacher.caches["unlabeled"].predictions] if "unlabeled" in teacher.caches else []
    if mode != "none":
        given.insert(0, teacher.caches["train"].predictions)
    pseudo = folder / "pseudo.json"
    (Predictions.concat(given) if given else Predictions.from_records([])).save(pseudo)
    return folder / "annotations.json", folder / "images", pseudo


def _link(source: Path, target: Path) -> None:
    """``target`` as a hard link to ``source`` (a copy across file systems); an existing one is kept."""
    if target.exists():
        return
    if not source.is_file():
        raise FileNotFoundError(f"image {source} does not exist")
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)
    except OSError:  # a copy, renamed into place: a kill never leaves a partial image behind
        tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
        shutil.copy2(source, tmp)
        os.replace(tmp, target)
