"""Reproduce every shipped demo member from scratch with the project's own jobs: ``fusion demo --retrain``.

    python -m fusion.demo.retrain [--work runs/demo-retrain] [--device auto] [--assets DIR] [--dry-run]
                                  [--only STEP,STEP]   # e.g. train-detr in one process, the CNNs in another

Steps, in order (each one's wall time is printed and kept in ``<work>/steps/<step>.json``):

1. ``render``: train 4000 / val 500 / test 500 / unlabeled 4000 images of 128 px, seed 0 (``<work>/data``).
2. ``train-<member>``: ``fusion train --config configs/train/demo-<member>.yaml`` for yolo11n, yolov8n (two YOLO
   families, ultralytics' trainer), ssdlite (torchvision SSDlite320-MobileNetV3, the one torchvision model small
   enough for CPU training and the size budget) and detr (the fast-converging ``detr_fast_r18`` preset of
   h-fastdetr's DETR work), plus ``detr-student-nokd``: the DETR student's architecture on the ground truth alone,
   the baseline the distilled student is compared with (not shipped).
3. ``distill-<student>``: ``fusion distill --config configs/distill/demo-<student>.yaml`` (the command of the
   distillation-jobs issue, h-distillcmd) for detr-student and yolo11n-student, taught by the fused ensemble of the
   four trained members (``<work>/teacher.yaml``, written from their ``best.member.yaml``) on the labelled and
   unlabelled images. Kept in :func:`_distill`, the one place that knows how that command is called.
4. ``package``: the exports of the members ``configs/ensembles/demo.yaml`` lists, copied into the assets folder under
   the names it uses,
   floating-point tensors in fp16, ``MANIFEST.json`` (SHA-256 of each file; total <= 30 MiB); then the demo runs on
   a fixed render (seed 2026, 100 test images) and each member's and the fused AP are recorded in the manifest
   (the shipped-weights test checks them), beside the no-KD student's AP.

Resumable: a step is skipped when its record exists, its outputs are unchanged and the fingerprint of its inputs
(config file, overrides, upstream outputs, code version) matches; a training step killed midway resumes from its
checkpoint (``fusion train --resume``); a step whose inputs changed starts afresh (its old run folder is kept
as ``<name>.stale-N``). Commit the assets folder afterwards: ``git add fusion/assets/models``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Collection, Sequence
from pathlib import Path
from typing import Any

from fusion.classes import CONFIGS_DIR
from fusion.demo.assets import (
    ASSETS_DIR,
    DEMO_CONFIG,
    MANIFEST,
    demo_config,
    half_safetensors,
    write_manifest,
)
from fusion.io import sha256_file

__all__ = ["RECORD", "RENDER", "StepFailedError", "main", "retrain"]

RENDER: dict[str, Any] = {
    "seed": 0,
    "image_size": 128,
    "splits": {"train": 4000, "val": 500, "test": 500, "unlabeled": 4000},
}
# --smoke: the whole chain on a few images and one epoch each, to check the wiring in minutes (not for shipping).
SMOKE: dict[str, Any] = {
    "splits": {"train": 32, "val": 16, "test": 16, "unlabeled": 16},
    "overrides": ["train.epochs=1"],
}
TEACHER_TEMPLATE = CONFIGS_DIR / "ensembles" / "demo-teacher.yaml"  # how the students' teacher fuses
RECORD: dict[str, int] = {"seed": 2026, "images": 100}  # the fixed render the shipped AP is recorded on
TRAINED = ("yolo11n", "yolov8n", "ssdlite", "detr")  # the teacher ensemble's members, in fusion order
DISTILLED = ("detr-student", "yolo11n-student")
BASELINES = ("detr-student-nokd",)


class StepFailedError(RuntimeError):
    """A step's job exited with an error (its own output above says why)."""


def _digest(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()


class _Steps:
    """Runs steps once: a step whose record matches its inputs' fingerprint and whose outputs are intact is skipped."""

    def __init__(self, work: Path, dry_run: bool, only: Collection[str] | None = None) -> None:
        self.work, self.dry_run, self.table = work, dry_run, []
        self.only = None if only is None else set(only)

    def record_path(self, step: str) -> Path:
        return self.work / "steps" / f"{step}.json"

    def run(
        self,
        step: str,
        material: dict[str, Any],
        action: Callable[[str], Sequence[Path]],
        needs: dict[str, str | None] | None = None,
    ) -> str | None:
        """Run ``action(fingerprint)`` unless done; returns the digest of the step's outputs (its downstream input),
        or ``None`` while it is not done (left out by ``only``, or one of ``needs``, the upstream steps' digests by
        name, is ``None``). The fingerprint covers ``material`` and ``needs``."""
        from fusion import __version__
        from fusion.io import atomic_write_json

        needs = needs or {}
        pending = [name for name, digest in needs.items() if digest is None]
        if pending:
            if self.only is not None and step in self.only:
                raise StepFailedError(
                    f"step {step} needs its upstream steps ({', '.join(pending)}) done first"
                )
            print(f"[wait] {step}: upstream not done", flush=True)
            return None
        fingerprint = _digest({**material, **needs, "step": step, "version": __version__})
        path = self.record_path(step)
        record = json.loads(path.read_text()) if path.is_file() else None
        if record and record["fingerprint"] == fingerprint and _intact(record["outputs"]):
            print(f"[skip] {step}: done ({record['wall_s']:.0f} s when it ran)", flush=True)
            self.table.append((step, record["wall_s"], "skipped"))
            return _digest(record["outputs"])
        if self.only is not None and step not in self.only:
            print(f"[left] {step}: not selected", flush=True)
            return None
        if self.dry_run:
            print(f"[todo] {step}", flush=True)
            self.table.append((step, 0.0, "to do"))
            return fingerprint
        print(f"[run ] {step}", flush=True)
        start = time.perf_counter()
        outputs = action(fingerprint)
        wall = time.perf_counter() - start
        files = {str(p): sha256_file(p) for p in outputs}
        atomic_write_json(path, {"fingerprint": fingerprint, "outputs": files, "wall_s": round(wall, 1)})
        print(f"[done] {step}: {wall:.0f} s", flush=True)
        self.table.append((step, wall, "ran"))
        return _digest(files)


def _intact(outputs: dict[str, str]) -> bool:
    return all(Path(p).is_file() and sha256_file(p) == digest for p, digest in outputs.items())


def _job(args: list[str], step: str) -> None:
    """``python -m fusion <args>`` in its own process (a crash or a kill leaves this script's state alone)."""
    command = [sys.executable, "-m", "fusion", *args]
    print("  $ " + " ".join(command), flush=True)
    if subprocess.run(command, check=False).returncode != 0:
        raise StepFailedError(
            f"step {step}: `{' '.join(command[2:])}` failed (see its output above); rerun to resume"
        )


def _data_overrides(work: Path) -> list[str]:
    data = work / "data"
    return [
        f"data.train.annotations={data / 'train' / 'annotations.json'}",
        f"data.train.images={data / 'train' / 'images'}",
        f"data.val.annotations={data / 'val' / 'annotations.json'}",
        f"data.val.images={data / 'val' / 'images'}",
    ]


def _run_folder(work: Path, verb: str, name: str, fingerprint: str) -> Path | None:
    """The run folder to resume (``None``: start afresh); a folder of other inputs is moved aside, never deleted."""
    folder = work / verb / name
    started = work / "steps" / f"{verb}-{name}.started"
    resumable = (folder / "checkpoint.pt").is_file() or (
        folder / "ultralytics" / "weights" / "last.pt"
    ).is_file()
    if folder.exists() and started.is_file() and started.read_text() == fingerprint and resumable:
        return folder
    if folder.exists():
        n = 1
        while folder.with_name(f"{name}.stale-{n}").exists():
            n += 1
        folder.rename(folder.with_name(f"{name}.stale-{n}"))
    started.parent.mkdir(parents=True, exist_ok=True)
    started.write_text(fingerprint)
    return None


def _member_files(run: Path) -> list[Path]:
    """The files a run's ``weights/best.member.yaml`` names, and the member YAML itself."""
    import yaml

    member_yaml = run / "weights" / "best.member.yaml"
    if not member_yaml.is_file():
        raise StepFailedError(f"{run}: no weights/best.member.yaml after the job")
    member = yaml.safe_load(member_yaml.read_text())
    files = [Path(v) for v in member.values() if isinstance(v, str) and Path(v).suffix and Path(v).is_file()]
    files += [
        p.with_suffix(".yaml")
        for p in files
        if p.suffix == ".safetensors" and p.with_suffix(".yaml").is_file()
    ]
    return [member_yaml, *dict.fromkeys(files)]


def _train(
    work: Path, name: str, device: str | None, fingerprint: str, extra_overrides: Sequence[str] = ()
) -> list[Path]:
    run = _run_folder(work, "train", f"demo-{name}", fingerprint)
    if run is not None:
        _job(["train", "--resume", str(run)], f"train-{name}")
    else:
        config = CONFIGS_DIR / "train" / f"demo-{name}.yaml"
        extra = ["--device", device] if device else []
        _job(["train", "--config", str(config), "--project", str(work), "--name", f"demo-{name}", *extra,
              *_data_overrides(work), *extra_overrides], f"train-{name}")  # fmt: skip
    return _member_files(work / "train" / f"demo-{name}")


def _teacher_config(work: Path) -> Path:
    """``<work>/teacher.yaml``: the ensemble of the four trained members, fused as :data:`TEACHER_TEMPLATE` says.

    Each member is its run's model config (``conf``, ``imgsz``, ``score_thr`` ...) with the exported files of
    ``weights/best.member.yaml`` over it.
    """
    import yaml

    from fusion.io import atomic_write_yaml

    members, fused = [], _teacher_fusion()
    for name in TRAINED:
        run = work / "train" / f"demo-{name}"
        model = yaml.safe_load((run / "config.yaml").read_text())["model"]
        exported = yaml.safe_load((run / "weights" / "best.member.yaml").read_text())
        weight = {"weight": fused["weights"][name]} if name in fused["weights"] else {}
        members.append({**model, **exported, "name": name, **weight})
    config = {
        "name": "demo-teacher",
        "classes": "shapes",
        "device": "auto",
        "members": members,
        "fusion": fused["fusion"],
    }
    return atomic_write_yaml(work / "teacher.yaml", config)


def _teacher_fusion() -> dict[str, Any]:
    """How the teacher fuses the trained members: ``{"fusion": settings, "weights": {member: weight}}`` from the
    template :data:`TEACHER_TEMPLATE` (its members must be :data:`TRAINED`, in order)."""
    from fusion.config import load_yaml

    template = load_yaml(TEACHER_TEMPLATE)
    names = tuple(member["name"] for member in template["members"])
    if names != TRAINED:
        raise StepFailedError(
            f"{TEACHER_TEMPLATE}: members must be {list(TRAINED)} in this order, got {list(names)}"
        )
    weights = {m["name"]: m["weight"] for m in template["members"] if "weight" in m}
    return {"fusion": template["fusion"], "weights": weights}


def _distill(
    work: Path, name: str, device: str | None, fingerprint: str, extra_overrides: Sequence[str] = ()
) -> list[Path]:
    """``fusion distill`` (h-distillcmd) on configs/distill/demo-<name>.yaml, taught by ``<work>/teacher.yaml``.

    Assumes the command's shape of ``fusion train``: ``--config``, ``--project``, ``--name``, ``--device``,
    ``--resume RUN``, ``dotted=value`` overrides, and ``<project>/distill/<name>/weights/best.member.yaml``.
    """
    from fusion.cli import COMMAND_MODULES

    if "fusion.cli.distill" not in COMMAND_MODULES:
        raise StepFailedError(
            f"step distill-{name}: this install has no `fusion distill` command yet (the distillation-jobs issue); "
            "the trained members are ready, rerun once it is merged"
        )
    run = _run_folder(work, "distill", f"demo-{name}", fingerprint)
    if run is not None:
        _job(["distill", "--resume", str(run)], f"distill-{name}")
    else:
        config = CONFIGS_DIR / "distill" / f"demo-{name}.yaml"
        extra = ["--device", device] if device else []
        overrides = [
            f"teacher.ensemble={work / 'teacher.yaml'}",
            f"unlabeled={work / 'data' / 'unlabeled' / 'images'}",
        ]
        _job(["distill", "--config", str(config), "--project", str(work), "--name", f"demo-{name}", *extra,
              *overrides, *_data_overrides(work), *extra_overrides], f"distill-{name}")  # fmt: skip
    return _member_files(work / "distill" / f"demo-{name}")


def _package(assets: Path, sources: dict[str, Path], config: Path = DEMO_CONFIG) -> list[Path]:
    """Copy each member's files to ``assets/<member><suffixes>`` (fp16), check the demo config's names, manifest.

    Args:
        assets: The assets folder (its files are replaced).
        sources: ``{member name: run folder}`` (each with ``weights/best.member.yaml``).
        config: The demo config whose ``fusion/assets/models/`` files must all be produced.

    Returns:
        The packaged files (not the manifest).
    """
    assets.mkdir(parents=True, exist_ok=True)
    for old in assets.iterdir():
        if old.is_file():
            old.unlink()
    for member, run in sources.items():
        for file in _member_files(run)[1:]:
            suffixes = file.name[len(file.name.split(".")[0]) :]  # best.classes.yaml -> .classes.yaml
            target = assets / f"{member}{suffixes}"
            shutil.copyfile(file, target)
            if target.suffix == ".safetensors":
                half_safetensors(target)
    _, named = demo_config(assets, config)
    missing = [n for n in named if not (assets / n).is_file()]
    if missing:
        raise StepFailedError(f"package: {config} names {missing}, which no export produced")
    write_manifest(assets, produced_by="python -m fusion.demo.retrain")
    return sorted(p for p in assets.iterdir() if p.is_file() and p.name != MANIFEST)


def _shipped_sources(work: Path) -> dict[str, Path]:
    """``{member: run folder}`` of the members ``configs/ensembles/demo.yaml`` ships, in its order."""
    from fusion.config import load_yaml

    sources = {}
    for member in load_yaml(DEMO_CONFIG).get("members") or []:
        name = member["name"]
        if name not in (*TRAINED, *DISTILLED):
            raise StepFailedError(
                f"{DEMO_CONFIG}: member {name!r} is made by no step (known: {TRAINED + DISTILLED})"
            )
        sources[name] = work / ("train" if name in TRAINED else "distill") / f"demo-{name}"
    return sources


def _record(
    work: Path,
    assets: Path,
    wall: dict[str, float],
    render: dict[str, Any] = RENDER,
    baselines: Sequence[str] = BASELINES,
) -> list[Path]:
    """Run the demo on the fixed record render and write each AP into the manifest (with the no-KD baseline's)."""
    import yaml

    from fusion.demo.assets import read_manifest
    from fusion.demo.real import run_real_demo
    from fusion.scoring.score import score

    out = run_real_demo(RECORD["images"], RECORD["seed"], name="record", project=work, assets_dir=assets)
    metrics = json.loads((out / "metrics.json").read_text())
    aps = {name: entry["AP"] for name, entry in metrics["members"].items()} | {
        "fused": metrics["fused"]["AP"]
    }
    baseline_aps = {}
    for name in baselines:
        member = _member_files(work / "train" / f"demo-{name}")[0]
        config = {
            "name": name,
            "classes": "shapes",
            "device": "auto",
            "members": [yaml.safe_load(member.read_text())],
        }
        result = score(config, out / "data" / "test" / "annotations.json", out / "data" / "test" / "images",
                       name=name, root=work, resume=False, plots=False, verbose=False)  # fmt: skip
        baseline_aps[name] = result["members"][next(iter(result["members"]))]["AP"]
    recorded = {**RECORD, "image_size": RENDER["image_size"], "policy": metrics["policy"], "AP": aps,
                "baselines_AP": baseline_aps, "train_render": render, "wall_s": wall}  # fmt: skip
    files = read_manifest(assets)["files"]
    path = write_manifest(assets, recorded, produced_by="python -m fusion.demo.retrain")
    if read_manifest(assets)["files"] != files:
        raise StepFailedError(f"record: the files in {assets} changed while the demo ran; rerun")
    return [path]


def retrain(
    work: str | Path = "runs/demo-retrain",
    device: str | None = None,
    assets_dir: str | Path | None = None,
    dry_run: bool = False,
    smoke: bool = False,
    only: Collection[str] | None = None,
) -> dict[str, float]:
    """Run (or resume) every step; returns ``{step: wall seconds}`` of this call (skipped steps: their recorded time).

    ``only``: run just these steps (the others are used when done, left alone otherwise), so that independent steps
    can run side by side in separate processes, e.g. ``--only train-yolo11n`` beside ``--only train-detr``.

    Raises:
        StepFailedError: a job failed; rerunning resumes from where it stopped.
    """
    from fusion.synthetic import render_dataset

    work, assets = Path(work).resolve(), Path(assets_dir or ASSETS_DIR).resolve()
    if smoke and assets == ASSETS_DIR.resolve():
        raise ValueError("--smoke writes toy members: give --assets DIR (never the shipped folder)")
    steps = _Steps(work, dry_run, only)
    render_spec = {**RENDER, "splits": SMOKE["splits"]} if smoke else RENDER
    extra: list[str] = list(SMOKE["overrides"]) if smoke else []

    def render(_: str) -> list[Path]:
        render_dataset(work / "data", seed=render_spec["seed"], splits=render_spec["splits"],
                       image_size=render_spec["image_size"], progress=True)  # fmt: skip
        return [work / "data" / "manifest.json"]

    data = steps.run("render", {"render": render_spec}, render)
    made: dict[str, str | None] = {}
    for name in (*TRAINED, *BASELINES):
        config = CONFIGS_DIR / "train" / f"demo-{name}.yaml"
        material = {"config": config.read_text(), "device": device, "extra": extra}
        made[name] = steps.run(
            f"train-{name}", material, lambda fp, n=name: _train(work, n, device, fp, extra), {"data": data}
        )
    done = all(made[name] is not None for name in TRAINED)
    teacher = _digest({name: made[name] for name in TRAINED}) if done else None
    # Another teacher fusion makes other pseudo-labels (see _teacher_config).
    fusion = _teacher_fusion()
    for name in DISTILLED:
        config = CONFIGS_DIR / "distill" / f"demo-{name}.yaml"
        material = {"config": config.read_text(), "device": device, "extra": extra, "teacher_fusion": fusion}

        def distill(fp: str, n: str = name) -> list[Path]:
            _teacher_config(work)
            return _distill(work, n, device, fp, extra)

        made[name] = steps.run(f"distill-{name}", material, distill, {"data": data, "teacher": teacher})
    sources = _shipped_sources(work)
    shipped = {name: made[name] for name in sources}
    packaged = steps.run(
        "package", {"demo.yaml": DEMO_CONFIG.read_text()}, lambda _: _package(assets, sources), shipped
    )
    wall = {step: round(seconds, 1) for step, seconds, _ in steps.table}
    # A baseline not trained yet is left out of the record (which is made again once it is).
    baselines = {name: made[name] for name in BASELINES if made[name] is not None}
    steps.run(
        "record",
        {"record": RECORD},
        lambda _: _record(work, assets, wall, render_spec, list(baselines)),
        {"package": packaged, **baselines},
    )
    print("\nstep                        wall time   status")
    for step, seconds, status in steps.table:
        print(f"{step:<27} {seconds / 60:8.1f} min  {status}")
    if any(step == "package" and status == "ran" for step, _, status in steps.table):
        print(
            f"shipped files in {assets}: commit them (git add {assets}) and run pytest tests/fusion/test_cli_demo_shipped.py"
        )
    return {step: seconds for step, seconds, _ in steps.table}


def _split_steps(text: str | None) -> list[str] | None:
    return None if text is None else [step.strip() for step in text.split(",") if step.strip()]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m fusion.demo.retrain", description=__doc__.split("\n\n")[0].strip()
    )
    parser.add_argument(
        "--work", default="runs/demo-retrain", help="data and training runs (default runs/demo-retrain)"
    )
    parser.add_argument("--device", default=None, help="auto, cpu, cuda or cuda:N (default: each config's)")
    parser.add_argument("--assets", default=None, help="where the shipped files go (default: the package's)")
    parser.add_argument(
        "--only",
        default=None,
        help="comma-separated steps to run (e.g. train-yolo11n,train-yolov8n): independent steps side by side",
    )
    parser.add_argument("--dry-run", action="store_true", help="list the steps still to do, run nothing")
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="a few images and one epoch per job, into --assets DIR: checks the wiring",
    )
    args = parser.parse_args(argv)
    try:
        retrain(args.work, args.device, args.assets, args.dry_run, args.smoke, _split_steps(args.only))
    except (StepFailedError, ValueError, OSError) as exc:
        print(f"fusion demo --retrain: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
