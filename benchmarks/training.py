"""Training benchmarks (issue 14) on the rendered shapes: tables selected by flags, each row with its command.

    python benchmarks/training.py --step                       # (a) DETR step: ours vs transformers' (CPU)
    python benchmarks/training.py --step --step-devices cpu cuda --step-archs small r50   # + GPU fp32/bf16 rows
    python benchmarks/training.py --fast --minutes 60          # (b) fast-DETR ablation, 60 min per variant
    python benchmarks/training.py --fast --minutes 60 --resume # ... continued in a later session
    python benchmarks/training.py --members                    # (c) YOLO11n, YOLOv8n, Faster R-CNN by fusion train
    python benchmarks/training.py --ddp                        # (d) torchrun 2 gloo processes vs 1, images/s

Data: ``--data DIR`` (a ``fusion render`` folder with train/val/test) or rendered here under ``--out`` with
``--train/--val/--test`` images (default 4000/500/500, the hand measurements' size; rendered once, reused).
APs are COCO AP on the held-out ``test`` split, scored by ``fusion.scoring.score`` (what ``fusion score`` runs).
Runs and logs go under ``--out`` (default ``runs/bench/training``); ``--resume`` continues runs found there.
``--resume`` finds runs by name only: other data (``--data``, split sizes) need another ``--out``.
Timing numbers on a shared CPU are noisy: the step table alternates ours and the reference round by round.
"""

from __future__ import annotations

import argparse
import shutil
import socket
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (
    ROOT,
    child_env,
    ensure_data,
    fusion_cli,
    print_table,
    read_jsonl,
    resumable_run,
    score_member,
    step_schedule,
    trained_member,
)

#: member name -> its training config (table c)
MEMBERS: dict[str, str] = {
    "yolo11n": "configs/train/yolo11n-shapes.yaml",
    "yolov8n": "configs/train/yolov8n-shapes.yaml",
    "frcnn": "configs/train/torchvision.yaml",
}


def data_overrides(data: dict[str, tuple[Path, Path]]) -> list[str]:
    """``fusion train`` overrides pointing a config at the benchmark's train and val splits."""
    out = []
    for split in ("train", "val"):
        annotations, images = data[split]
        out += [f"data.{split}.annotations={annotations}", f"data.{split}.images={images}"]
    return out


def members_table(
    data: dict[str, tuple[Path, Path]], out: Path, names: list[str], epochs: dict[str, int], args: Any
) -> None:
    """(c) Each member trained by ``fusion train`` for its epochs: wall time and AP on the test split."""
    rows, notes = [], []
    project = out / "members"
    for name in names:
        overrides = [
            *data_overrides(data),
            f"name={name}",
            f"train.epochs={epochs[name]}",
            f"device={args.device}",
        ]
        if name == "frcnn":
            overrides += ["data.workers=0", f"train.batch_size={args.tv_batch}"]
        fresh = fusion_cli(
            "train", "--config", str(ROOT / MEMBERS[name]), "--project", str(project), *overrides
        )
        folder = project / "train" / name
        state = resumable_run(
            folder, fresh, out / "logs" / f"{name}.log", resume=args.resume, threads=args.threads
        )
        if "error" in state:
            notes.append(f"{name}: failed; see {out / 'logs' / (name + '.log')}")
            continue
        own = _own_validation(folder)
        try:
            stats = score_member(
                trained_member(folder), folder / "classes.yaml", data["test"], out / "score",
                device=args.device,
            )  # fmt: skip
        except Exception as error:  # a row that cannot be scored must not hide the others
            notes.append(f"{name}: scoring the trained member failed: {str(error).strip().splitlines()[-1]}")
            stats = {"AP": None, "AP50": None}
        rows.append([name, epochs[name], state["trained_s"] / 60, stats["AP"], stats["AP50"], own])
        notes.append(f"{name}: {state['command']}")
    print_table(
        f"(c) members trained by fusion train on {image_count(data['train'][0])} train images, "
        f"AP on the test split ({data['test'][0]}), {args.device}, {args.threads} torch thread(s)",
        ["member", "epochs", "wall min", "AP", "AP50", "own val AP"],
        rows,
        ["reference (issue 14, by hand, 1 core): YOLO11n AP 0.668 in 4 epochs / 10 min on 4,000 images; "
         "YOLOv8n 0.669; Faster R-CNN mobilenet ~0.06 after 10 min", *notes],
    )  # fmt: skip


def _own_validation(folder: Path) -> float | None:
    """The trainer's own last validation AP (ultralytics' mAP50-95 on val; ours: the last eval record)."""
    import json

    fit = folder / "fit.json"
    if fit.is_file():
        return json.loads(fit.read_text())["metrics"].get("metrics/mAP50-95(B)")
    evals = [r for r in read_jsonl(folder / "metrics.jsonl") if r.get("kind") == "eval"]
    return evals[-1]["stats"]["AP"] if evals else None


def image_count(annotations: Path) -> int:
    """Images listed in a COCO annotation file."""
    import json

    return len(json.loads(Path(annotations).read_text())["images"])


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _images_per_second(metrics: Path, batch: int, skip: int) -> tuple[float, int]:
    """Global images/s between the ``skip``-th logged step and the last one (start-up and warm-up excluded)."""
    steps = [r for r in read_jsonl(metrics) if r.get("kind") == "step"]
    if len(steps) <= skip + 1:
        raise RuntimeError(
            f"{metrics}: {len(steps)} logged steps; need more than {skip + 1} (more --ddp-steps)"
        )
    first, last = steps[skip], steps[-1]
    return (last["step"] - first["step"]) * batch / (last["time"] - first["time"]), len(steps)


def _first_images(annotations: Path, count: int, dest: Path) -> Path:
    """A COCO file of the first ``count`` images of ``annotations`` and their boxes (``annotations`` if fewer)."""
    from fusion.coco.annotations import load_annotations
    from fusion.io import atomic_write_json

    gt = load_annotations(annotations)
    if len(gt) <= count:
        return annotations
    return atomic_write_json(dest, gt.subset(gt.image_ids[:count]).dataset)


def ddp_table(data: dict[str, tuple[Path, Path]], out: Path, args: Any) -> None:
    """(d) The same job under ``torchrun`` with 2 gloo processes and with 1 process: global images/s."""
    # One epoch of the first ddp_steps x ddp_batch training images: the trainer counts in epochs, and a whole
    # epoch of the full split would be hundreds of steps where --ddp-steps asks for a few.
    wanted = args.ddp_steps * args.ddp_batch
    subset = _first_images(data["train"][0], wanted, out / "ddp" / f"train-first-{wanted}.json")
    data = {**data, "train": (subset, data["train"][1])}
    epochs = max(1, -(-wanted // image_count(subset)))
    rows, notes = [], []
    for ranks in (1, 2):
        name = f"ddp{ranks}"
        overrides = [*data_overrides(data), f"name={name}", f"train.batch_size={args.ddp_batch}",
                     f"train.epochs={epochs}", "train.log_every=1", "train.eval_every=0", "data.workers=0",
                     "device=cpu", "train.checkpoint_every=100000", *step_schedule(epochs)]  # fmt: skip
        train = [
            "-m",
            "fusion",
            "train",
            "--config",
            str(ROOT / args.ddp_config),
            "--project",
            str(out / "ddp"),
        ]
        launcher = [
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            str(ranks),
            "--master_port",
            str(_free_port()),
        ]
        command = [sys.executable, *launcher, *train, *overrides]
        env = child_env(1, FUSION_DIST_BACKEND="gloo", CUDA_VISIBLE_DEVICES="")
        folder = out / "ddp" / "train" / name
        shutil.rmtree(
            folder, ignore_errors=True
        )  # a short measurement: always a fresh run with this launcher
        state = resumable_run(folder, command, out / "logs" / f"{name}.log", resume=False, env=env)
        if "error" in state:
            notes.append(f"{name}: failed; see {out / 'logs' / (name + '.log')}")
            continue
        rate, logged = _images_per_second(folder / "metrics.jsonl", args.ddp_batch, skip=2)
        rows.append([ranks, args.ddp_batch, logged, rate, state["trained_s"]])
        notes.append(f"{ranks} process(es): {state['command']}")
    if len(rows) == 2:
        notes.insert(
            0, f"speed-up 2 vs 1: {rows[1][3] / rows[0][3]:.2f}x (global batch equal; 1 torch thread a rank)"
        )
    print_table(
        f"(d) DDP: torchrun --nproc_per_node N -m fusion train ({args.ddp_config}), gloo on CPU",
        ["ranks", "global batch", "steps", "images/s", "wall s"],
        rows,
        ["images/s from metrics.jsonl step times after 2 warm-up steps (start-up excluded)", *notes],
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    tables = parser.add_argument_group("tables (at least one)")
    tables.add_argument("--step", action="store_true", help="(a) DETR training step vs transformers'")
    tables.add_argument("--fast", action="store_true", help="(b) fast-DETR ablation at a wall-time budget")
    tables.add_argument("--members", action="store_true", help="(c) YOLO and torchvision members")
    tables.add_argument("--ddp", action="store_true", help="(d) 2 gloo processes vs 1")
    parser.add_argument("--out", type=Path, default=ROOT / "runs/bench/training")
    parser.add_argument("--data", type=Path, default=None, help="a fusion render folder (train/val/test)")
    parser.add_argument("--train", type=int, default=4000)
    parser.add_argument("--val", type=int, default=500)
    parser.add_argument("--test", type=int, default=500)
    parser.add_argument("--render-workers", type=int, default=0, help="processes rendering the data (once)")
    parser.add_argument(
        "--resume", action="store_true", help="continue the runs found under --out (by run name)"
    )
    parser.add_argument("--device", default="cpu", help="device of trainings (b, c) and scoring")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process (default 1)")
    parser.add_argument("--workers", type=int, default=0, help="DataLoader workers of the DETR runs (b)")
    step = parser.add_argument_group("(a) step")
    step.add_argument(
        "--step-archs", nargs="+", default=["small"], help="small (configs/train/detr.yaml) | r50"
    )
    step.add_argument("--step-devices", nargs="+", default=["cpu"], help="cpu and/or cuda (fp32 + bf16 rows)")
    step.add_argument("--step-batch", type=int, default=8, help="images per step on CPU")
    step.add_argument("--gpu-batch", type=int, default=32, help="images per step on CUDA")
    step.add_argument("--reps", type=int, default=5, help="alternating timed rounds")
    fast = parser.add_argument_group("(b) fast DETR")
    fast.add_argument("--minutes", type=float, default=60.0, help="training wall time per variant")
    fast.add_argument("--variants", nargs="+", default=None, help="names from _fast_ablation.VARIANTS")
    fast.add_argument("--fast-batch", type=int, default=16)
    fast.add_argument(
        "--checkpoint-every", type=int, default=50, help="steps (the kill at the budget loses less)"
    )
    members = parser.add_argument_group("(c) members")
    members.add_argument("--member-names", nargs="+", default=list(MEMBERS), choices=list(MEMBERS))
    members.add_argument("--yolo-epochs", type=int, default=4)
    members.add_argument("--tv-epochs", type=int, default=4)
    members.add_argument("--tv-batch", type=int, default=8)
    ddp = parser.add_argument_group("(d) DDP")
    ddp.add_argument("--ddp-config", default="configs/train/detr.yaml")
    ddp.add_argument("--ddp-batch", type=int, default=8, help="global batch (split over the ranks)")
    ddp.add_argument("--ddp-steps", type=int, default=20)
    args = parser.parse_args(argv)
    if not (args.step or args.fast or args.members or args.ddp):
        parser.error("choose at least one table: --step, --fast, --members, --ddp")
    return args


def load_data(args: argparse.Namespace) -> dict[str, tuple[Path, Path]]:
    """The benchmark's splits: ``--data`` as rendered by ``fusion render``, or rendered here once."""
    if args.data is not None:
        splits = {
            s: (args.data / s / "annotations.json", args.data / s / "images")
            for s in ("train", "val", "test")
        }
        missing = [str(a) for a, _ in splits.values() if not a.is_file()]
        if missing:
            raise FileNotFoundError(
                f"--data {args.data}: missing {missing} (fusion render --train/--val/--test)"
            )
        return splits
    counts = {"train": args.train, "val": args.val, "test": args.test}
    return ensure_data(args.out / "data", counts, workers=args.render_workers)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    try:
        run(args)
    except (FileExistsError, FileNotFoundError) as error:
        sys.exit(f"training.py: error: {error}")


def run(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    data = load_data(args)
    if args.step:
        from _detr_step import step_table

        step_table(
            data["train"], args.step_archs, args.step_devices, args.step_batch, args.gpu_batch, args.reps
        )
    if args.fast:
        from _fast_ablation import ablation_table

        ablation_table(
            data, args.out, args.minutes, args.variants, batch=args.fast_batch, checkpoint_every=args.checkpoint_every,
            resume=args.resume, device=args.device, threads=args.threads, workers=args.workers,
        )  # fmt: skip
    if args.members:
        epochs = {"yolo11n": args.yolo_epochs, "yolov8n": args.yolo_epochs, "frcnn": args.tv_epochs}
        members_table(data, args.out, args.member_names, epochs, args)
    if args.ddp:
        ddp_table(data, args.out, args)


if __name__ == "__main__":
    main()
