"""Shared pieces of the training and distillation benchmarks: data, child runs with wall-time budgets, scoring.

Every training in these benchmarks is a real ``fusion train`` (or ``fusion distill``) child process, so each table
row can print the command that produced it; the wall time is that process's. Trained members are scored on the
held-out ``test`` split through ``fusion.scoring.score`` (the path ``fusion score`` takes), as an ensemble of one.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]

__all__ = [
    "ROOT",
    "Child",
    "child_env",
    "ensure_data",
    "fusion_cli",
    "print_table",
    "read_jsonl",
    "resumable_run",
    "run_child",
    "score_member",
    "shown",
    "step_schedule",
    "trained_member",
]


def child_env(threads: int = 1, **extra: str) -> dict[str, str]:
    """Environment of a child run: this checkout importable, offline ultralytics, ``threads`` torch threads."""
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return {
        **os.environ,
        "PYTHONPATH": path,
        "YOLO_OFFLINE": "1",
        "MPLBACKEND": "Agg",
        "PYTHONUNBUFFERED": "1",
        "OMP_NUM_THREADS": str(threads),
        "MKL_NUM_THREADS": str(threads),
        **extra,
    }


def fusion_cli(*args: str) -> list[str]:
    """``python -m fusion ARGS`` with this interpreter (the console script may point at another checkout)."""
    return [sys.executable, "-m", "fusion", *args]


def shown(command: Sequence[str]) -> str:
    """A command as a user would type it (``python -m fusion`` shortened to ``fusion``)."""
    parts = list(command)
    if parts[:3] == [sys.executable, "-m", "fusion"]:
        parts = ["fusion", *parts[3:]]
    elif parts and parts[0] == sys.executable:
        parts = ["python", *parts[1:]]
    return shlex.join(parts)


@dataclass
class Child:
    """A finished (or stopped) child run.

    Attributes:
        returncode: Exit status (negative: killed by that signal).
        seconds: Wall time of the process.
        stopped: True when the wall-time budget ran out and the process was killed.
        log: The file holding its stdout and stderr.
    """

    returncode: int
    seconds: float
    stopped: bool
    log: Path
    command: list[str] = field(default_factory=list)

    def check(self) -> Child:
        """Raise with the end of the log when the run failed (a budget stop is not a failure)."""
        if self.returncode != 0 and not self.stopped:
            tail = self.log.read_text(errors="replace")[-3000:]
            raise RuntimeError(
                f"{shown(self.command)} failed ({self.returncode}); end of {self.log}:\n{tail}"
            )
        return self


def run_child(
    command: Sequence[str],
    log: str | Path,
    *,
    budget_s: float | None = None,
    threads: int = 1,
    env: Mapping[str, str] | None = None,
    on_tick: Any = None,
    cwd: str | Path | None = None,
) -> Child:
    """Run ``command`` (output appended to ``log``); kill its process group with SIGKILL after ``budget_s``.

    ``on_tick(elapsed_s)`` is called every few seconds while it runs (e.g. to record the time spent, so that a
    killed benchmark still knows how much of a budget its runs used).
    """
    log = Path(log)
    log.parent.mkdir(parents=True, exist_ok=True)
    environment = dict(env) if env is not None else child_env(threads)
    start = time.perf_counter()
    stopped = False
    with open(log, "ab") as handle:
        handle.write(f"\n$ {shown(command)}\n".encode())
        handle.flush()
        process = subprocess.Popen(
            list(command),
            stdout=handle,
            stderr=subprocess.STDOUT,
            env=environment,
            cwd=cwd,
            start_new_session=True,
        )
        while True:
            try:
                process.wait(timeout=2.0)
                break
            except subprocess.TimeoutExpired:
                elapsed = time.perf_counter() - start
                if on_tick is not None:
                    on_tick(elapsed)
                if budget_s is not None and elapsed >= budget_s:
                    stopped = True
                    os.killpg(process.pid, signal.SIGKILL)  # kill -9: the trainer resumes from its checkpoint
                    process.wait()
                    break
    return Child(process.returncode, time.perf_counter() - start, stopped, log, list(command))


def resumable_run(
    folder: Path,
    fresh: Sequence[str],
    log: Path,
    *,
    resume: bool,
    budget_s: float | None = None,
    threads: int = 1,
    env: Mapping[str, str] | None = None,
    verb: str = "train",
) -> dict[str, Any]:
    """Run ``fresh`` (a ``fusion train`` / ``distill`` command writing ``folder``), or continue ``folder`` with
    ``fusion <verb> --resume``.

    ``folder/bench.json`` records the command, the wall time used so far (``trained_s``, updated while the child
    runs, so a killed benchmark keeps it) and whether the run finished. With ``budget_s`` the child is killed once
    the run's total reaches it; a later call with ``resume`` continues it until the total does.

    Raises:
        FileExistsError: ``folder`` exists and ``resume`` is False.
    """
    import shutil

    from fusion.io import atomic_write_json

    path = folder / "bench.json"
    if folder.exists() and not resume:
        raise FileExistsError(f"{folder} exists: pass --resume to continue it, or choose another --out")
    state = json.loads(path.read_text()) if path.is_file() else {}
    # Killed before its first checkpoint (own-loop runs keep theirs under ultralytics/): nothing to continue.
    started = (folder / "checkpoint.pt").is_file() or (folder / "ultralytics").is_dir()
    if folder.exists() and not started and not state.get("finished"):
        shutil.rmtree(folder)
        state = {}
    if state.get("finished") or (budget_s is not None and state.get("trained_s", 0.0) >= budget_s):
        return state
    if state:
        command = fusion_cli(verb, "--resume", str(folder))
    else:
        command = list(fresh)
        state = {"command": shown(command), "trained_s": 0.0, "sessions": 0}
    used = float(state["trained_s"])
    state["sessions"] += 1

    def tick(elapsed: float) -> None:
        if folder.is_dir():
            atomic_write_json(path, {**state, "trained_s": used + elapsed})

    remaining = None if budget_s is None else budget_s - used
    child = run_child(command, log, budget_s=remaining, threads=threads, env=env, on_tick=tick)
    state["trained_s"] = used + child.seconds
    state["finished"] = child.returncode == 0 and not child.stopped
    state.pop("error", None)
    if not child.stopped and child.returncode != 0:
        state["error"] = child.log.read_text(errors="replace")[-1500:]
    if folder.is_dir():
        atomic_write_json(path, state)
    return state


def step_schedule(epochs: int) -> list[str]:
    """Overrides moving ``configs/train/detr.yaml``'s LR drop (epoch 40 of 50) to 80 % of ``epochs``."""
    drop = round(epochs * 0.8)
    return [f"train.milestones=[{drop}]" if 0 < drop < epochs else "train.milestones=[]"]


def ensure_data(
    folder: str | Path, counts: Mapping[str, int], size: int = 128, seed: int = 0, workers: int = 0
) -> dict[str, tuple[Path, Path]]:
    """The rendered shapes dataset with these split ``counts`` under ``folder`` (rendered once, then reused).

    Image ``i`` of a split does not depend on the split's size, so small smoke sets are prefixes of large ones.
    """
    from fusion.synthetic.render import render_dataset

    name = f"shapes{size}-s{seed}-" + "-".join(f"{k}{v}" for k, v in counts.items() if v)
    return render_dataset(
        Path(folder) / name, seed=seed, splits=dict(counts), image_size=size, workers=workers
    )


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Records of a JSON-lines file; a torn last line (from a kill) is skipped."""
    path = Path(path)
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def trained_member(folder: str | Path, name: str | None = None) -> dict[str, Any]:
    """The member config of a trained run: its config's ``model`` section under ``weights/best.member.yaml``.

    The exported YAML names the weights; the training config keeps the inference settings the plugin may not
    export (e.g. an ultralytics member's ``conf: 0.001``: without it the member would be scored at 0.25).
    """
    import yaml

    folder = Path(folder)
    model = yaml.safe_load((folder / "config.yaml").read_text())["model"]
    exported = yaml.safe_load((folder / "weights" / "best.member.yaml").read_text())
    if exported.get("type") == "ultralytics":
        model.pop("model", None)  # the architecture YAML trained from; the export names the trained one
    return {**model, **exported, **({"name": name} if name else {})}


def score_member(
    member: str | Path | Mapping[str, Any],
    classes: str | Path,
    split: tuple[Path, Path],
    root: str | Path,
    *,
    device: str = "cpu",
    batch_size: int = 16,
) -> dict[str, float]:
    """COCO stats of one member config (e.g. ``runs/train/<name>/weights/best.member.yaml``) on ``split``.

    Scored through :func:`fusion.scoring.score.score` as an ensemble of one member (no fusion effect: an NMS at
    IoU 0.99 over one member's boxes), as ``fusion score`` would score it.
    """
    import yaml

    from fusion.scoring.score import score

    fields = dict(member) if isinstance(member, Mapping) else yaml.safe_load(Path(member).read_text())
    name = str(fields.get("name", "member"))
    config = {
        "name": f"score-{name}",
        "classes": str(classes),
        "device": device,
        "batch_size": batch_size,
        "members": [fields],
        "fusion": {"type": "nms", "iou_thr": 0.99},
    }
    metrics = score(
        config, split[0], split[1], root=root, plots=False, verbose=False, num_workers=0, resume=False
    )
    assert metrics is not None
    return {k: float(v) for k, v in metrics["members"][name].items() if isinstance(v, int | float)}


def print_table(
    title: str, header: Sequence[str], rows: Sequence[Sequence[Any]], notes: Sequence[str] = ()
) -> None:
    """A plain-text table: ``title``, a header, rows (floats with 4 digits), then notes."""
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [
        max(len(str(h)), *(len(r[i]) for r in cells)) if cells else len(str(h)) for i, h in enumerate(header)
    ]
    print(f"\n{title}")
    print("  ".join(str(h).ljust(w) for h, w in zip(header, widths)))
    print("  ".join("-" * w for w in widths))
    for row in cells:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)))
    for note in notes:
        print(f"  {note}")


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 100 else f"{value:.1f}"
    return "-" if value is None else str(value)
