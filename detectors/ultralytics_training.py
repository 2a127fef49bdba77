"""Training ultralytics YOLO members with ultralytics' own trainer, offline, resumable, exported as safetensors.

:class:`UltralyticsTrainable` is an own-loop :class:`~fusion.training.Trainable`: ``fit(job)`` converts the job's
COCO data to a YOLO folder (:mod:`fusion.training.yolo_dataset`), then runs ultralytics' ``DetectionTrainer`` in
a child process. The child is what makes the run private and offline: ultralytics reads ``YOLO_CONFIG_DIR`` (its
``settings.json``, integrations, font) once, at import, so the child gets a config folder inside the run folder,
``YOLO_OFFLINE=1`` and a bundled font before it imports ultralytics; the parent's settings are never touched.

Run folder (``job.out_dir``)::

    yolo_data/               the YOLO-format dataset (reused on resume)
    ultralytics_config/      the child's YOLO_CONFIG_DIR
    ultralytics/             ultralytics' save_dir: weights/{last,best}.pt, results.csv, args.yaml, train.log,
                             weights/{last,best}.safetensors and weights/model.yaml written as training goes
    weights/best.{safetensors,yaml}, weights/last.{safetensors,yaml}   the exported member (after fit)
    metrics.jsonl            ultralytics' results.csv, one JSON object per epoch
    fit.json                 what fit() returned (a finished run returns it again on resume)

Checkpoints are written atomically (ultralytics writes them in place): a ``kill -9`` leaves the previous epoch's
``last.pt``, from which ``resume`` continues. Resuming reads that ``last.pt`` with ultralytics' own loader (a
pickle, the only format its resume has); it is the run's own file, never a downloaded one. Exported members are
safetensors + YAML and load through :func:`load_safetensors_model` without unpickling anything.

The exported tensors are exactly those of ultralytics' ``best.pt``: the EMA weights in fp16 (ultralytics stores
every checkpoint in fp16); they load into an fp32 model, as ultralytics loads its own checkpoints.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from fusion.io import atomic_write_json, atomic_write_text
from fusion.training.trainable import ExternalTrainJob, Trainable
from fusion.training.yolo_dataset import YoloSplit, write_yolo_dataset

__all__ = ["UltralyticsTrainable", "load_safetensors_model", "save_safetensors_model"]

# Settings of the plugin itself; every other key of `options` is an ultralytics training argument.
OWN_OPTIONS = {"threads", "link", "pseudo_labels", "pseudo_threshold", "ground_truth", "stream"}
# Set from the job (or by the plugin) and never taken from `options`.
MANAGED = {
    "model",
    "data",
    "epochs",
    "batch",
    "imgsz",
    "seed",
    "device",
    "project",
    "name",
    "exist_ok",
    "resume",
}
DEFAULTS = {
    "optimizer": "AdamW",  # 'auto' switches to MuSGD on long runs (10-17 s/step on a CPU)
    "lr0": 0.002,
    "warmup_epochs": 0.5,  # ultralytics' 3 epochs of warmup eat a short run
    "plots": False,  # plotting fetches a font
    "amp": False,  # the AMP check downloads a model on CUDA
    "deterministic": True,
    "workers": 0,  # ultralytics forces 0 on CPU anyway
    "val": True,
    "verbose": True,
}


def _ultralytics_arguments() -> set[str]:
    """The training arguments ultralytics knows (its ``cfg/default.yaml``), read without importing it."""
    import importlib.util

    spec = importlib.util.find_spec("ultralytics")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("ultralytics is not installed (pip install ultralytics)")
    default = Path(next(iter(spec.submodule_search_locations))) / "cfg" / "default.yaml"
    return set(yaml.safe_load(default.read_text(encoding="utf-8")))


def _device_arg(device: str) -> str:
    """``cpu`` / ``cuda`` / ``cuda:N`` -> ultralytics' ``device`` argument (``cpu`` / ``0`` / ``N``)."""
    if device == "cpu":
        return "cpu"
    if device == "cuda":
        return "0"
    if device.startswith("cuda:") and device[5:].isdigit():
        return device[5:]
    raise ValueError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {device!r}")


# ---------------------------------------------------------------------------------------------- safetensors files
def member_yaml(cfg: Mapping[str, Any], names: list[str]) -> dict[str, Any]:
    """The model YAML to export: the architecture as built (``nc``, ``scale``, layers) plus the class names."""
    out = {k: v for k, v in cfg.items() if k not in ("yaml_file", "names")}
    if len(names) != out.get("nc"):
        raise ValueError(f"{len(names)} class names for a model with nc={out.get('nc')}")
    return {**out, "names": list(names)}


def save_safetensors_model(
    model: nn.Module, names: list[str], out_dir: str | Path, stem: str
) -> dict[str, Any]:
    """Write a DetectionModel as ``<stem>.safetensors`` (fp16, as ultralytics stores it) + ``<stem>.yaml``.

    Returns:
        The member-config fields that load them back (paths relative to ``out_dir``).
    """
    from safetensors.torch import save

    from fusion.io import atomic_write_bytes

    out_dir = Path(out_dir)
    state = {  # the tensors of ultralytics' checkpoint: fp16, overflow clamped
        k: (v.detach().half().nan_to_num() if v.is_floating_point() else v.detach()).contiguous().cpu()
        for k, v in model.state_dict().items()
    }
    note = "fp16 EMA weights as in ultralytics' checkpoints; load into an fp32 DetectionModel built from the YAML"
    atomic_write_bytes(out_dir / f"{stem}.safetensors", save(state, metadata={"format": "pt", "note": note}))
    atomic_write_text(
        out_dir / f"{stem}.yaml", yaml.safe_dump(member_yaml(model.yaml, names), sort_keys=False)
    )
    return {"type": "ultralytics", "model": f"{stem}.yaml", "weights": f"{stem}.safetensors"}


def build_exported_model(model_yaml: str | Path) -> nn.Module:
    """The DetectionModel an exported YAML describes (random weights), its ``names`` set from the YAML.

    The YAML is read with ``yaml.safe_load`` and passed to ultralytics as a dict: ultralytics would otherwise
    guess the model scale from the FILE NAME (``best.yaml`` has none, so it would build the first scale).

    Raises:
        ValueError: a YAML without ``nc``/``backbone``/``head``.
        FileNotFoundError: a missing file.
    """
    from detectors.ultralytics_detector import import_ultralytics

    model_yaml = Path(model_yaml)
    if not model_yaml.is_file():
        raise FileNotFoundError(f"ultralytics member file {model_yaml} does not exist")
    cfg = yaml.safe_load(model_yaml.read_text(encoding="utf-8"))
    if not isinstance(cfg, dict) or not {"nc", "backbone", "head"} <= set(cfg):
        raise ValueError(f"{model_yaml}: a model YAML needs 'nc', 'backbone' and 'head'")
    names = cfg.pop("names", None) or [str(i) for i in range(cfg["nc"])]
    import_ultralytics()
    from ultralytics.nn.tasks import DetectionModel

    model = DetectionModel(cfg, ch=int(cfg.get("channels", 3)), nc=int(cfg["nc"]), verbose=False)
    model.names = dict(enumerate(names))
    return model


def load_safetensors_model(
    model_yaml: str | Path, weights: str | Path, device: str | torch.device = "cpu"
) -> nn.Module:
    """Build a DetectionModel from its exported YAML and load its safetensors weights strictly (no pickle).

    Returns:
        The fp32 model in eval mode on ``device``, ``names`` set from the YAML.

    Raises:
        ValueError: a YAML without ``nc``/``backbone``/``head``, or weights that do not fit the architecture.
        FileNotFoundError: a missing file.
    """
    from safetensors.torch import load_file

    weights = Path(weights)
    if not weights.is_file():
        raise FileNotFoundError(f"ultralytics member file {weights} does not exist")
    model = build_exported_model(model_yaml)
    try:
        model.load_state_dict(load_file(weights), strict=True)
    except RuntimeError as exc:
        raise ValueError(f"{weights} does not fit the model of {model_yaml}: {exc}") from None
    return model.float().eval().to(device)


# ---------------------------------------------------------------------------------------------- the trainable
class UltralyticsTrainable(Trainable):
    """An ultralytics YOLO model trained by ultralytics' trainer through :meth:`fit`.

    Args:
        model: The model YAML to build and train from scratch (``yolo11n.yaml``, ``yolov8s.yaml``, a path);
            ``nc`` is set to the job's number of classes.
        device: ``cpu``, ``cuda`` or ``cuda:N`` (the job's device wins when it gives one).
    """

    owns_loop = True

    def __init__(self, model: str, device: str | torch.device = "cpu") -> None:
        name = Path(model).name.lower()
        if Path(model).suffix not in (".yaml", ".yml"):
            raise ValueError(
                f"ultralytics training builds the model from a model YAML (e.g. yolo11n.yaml), got {model!r}"
            )
        if "rtdetr" in name:
            raise ValueError(
                f"{model!r}: training RT-DETR members is not supported, only YOLO detection models"
            )
        self.model_spec = model
        self.device = str(device)
        self.save_dir: Path | None = None  # ultralytics' save_dir once fit() has run

    def fit(self, job: ExternalTrainJob) -> dict[str, Any]:
        """Train (or resume, or return a finished run's results); returns metrics and the member fields.

        Returns:
            ``{"metrics": ultralytics' final validation of best.pt (its own keys, e.g. "metrics/mAP50-95(B)"),
            "epochs": completed epochs, "wall_s": seconds of this call, "dataset": per-split label counts,
            "member": {"type", "model", "weights", "imgsz"} of weights/best.* (paths relative to job.out_dir)}``.

        Raises:
            ValueError: bad options (unknown ultralytics argument, a managed one, bad device), or an error the
                trainer raised for bad input (its message is kept).
            FileExistsError: ``job.out_dir`` holds a run and ``job.resume`` is False.
            RuntimeError: the trainer process failed (the end of its log is in the message).
        """
        start = time.perf_counter()
        out = Path(job.out_dir).resolve()
        save_dir, result_file = out / "ultralytics", out / "fit.json"
        self.save_dir = save_dir
        if job.resume and result_file.is_file():
            return json.loads(result_file.read_text())
        last = save_dir / "weights" / "last.pt"
        if not job.resume and (last.exists() or result_file.exists()):
            raise FileExistsError(
                f"{out} already holds an ultralytics run; resume it or choose another folder"
            )
        options = dict(job.options)
        own = {k: options.pop(k) for k in list(options) if k in OWN_OPTIONS}
        self._check_options(options)
        dataset = self._dataset(job, out, own)
        overrides = {
            **DEFAULTS,
            "nbs": job.batch_size,  # no gradient accumulation towards ultralytics' nominal batch of 64
            **options,
            "model": self.model_spec,
            "data": str(dataset.data_yaml),
            "epochs": job.epochs,
            "batch": job.batch_size,
            "imgsz": job.image_size,
            "seed": job.seed,
            "device": _device_arg(job.device or self.device),
            "project": str(out),
            "name": save_dir.name,
            "exist_ok": True,
        }
        progress = _read_json(save_dir / "progress.json")
        mode = "fresh"
        if job.resume and progress.get("finished"):
            mode = "finish"  # every epoch is saved; only ultralytics' final validation is missing
        elif job.resume and last.exists():
            mode = "resume"
        spec = {
            "mode": mode,
            "overrides": overrides,
            "threads": int(own.get("threads", torch.get_num_threads())),
        }
        (save_dir / "final.json").unlink(missing_ok=True)
        if mode == "fresh":
            (save_dir / "progress.json").unlink(missing_ok=True)
        _run_child(spec, out, stream=bool(own.get("stream", True)))
        child = json.loads((save_dir / "final.json").read_text())
        _write_metrics_jsonl(save_dir / "results.csv", out / "metrics.jsonl")
        weights = out / "weights"
        member = self.export(weights, "best")
        self.export(weights, "last", which="last")
        result = {
            "metrics": child["metrics"],
            "epochs": child["epochs"],
            "wall_s": time.perf_counter() - start,
            "dataset": {k: vars(v) for k, v in dataset.summaries.items()},
            "member": {
                **member,
                "model": f"weights/{member['model']}",
                "weights": f"weights/{member['weights']}",
                "imgsz": job.image_size,  # predict at the size it was trained and validated at
            },
        }
        atomic_write_json(result_file, result)
        return result

    def export(self, out_dir: Path, stem: str, which: str = "best") -> dict[str, Any]:
        """Write ``<stem>.safetensors`` + ``<stem>.yaml`` of the run's ``best`` (or ``last``) weights.

        Returns:
            ``{"type": "ultralytics", "model": "<stem>.yaml", "weights": "<stem>.safetensors"}``.
        """
        from fusion.io import atomic_write_bytes

        if self.save_dir is None:
            raise RuntimeError("export() needs a trained run: call fit() first")
        source = self.save_dir / "weights"
        if which not in ("best", "last") or not (source / f"{which}.safetensors").is_file():
            raise FileNotFoundError(f"no {which!r} weights in {source}")
        out_dir = Path(out_dir)
        atomic_write_bytes(out_dir / f"{stem}.safetensors", (source / f"{which}.safetensors").read_bytes())
        atomic_write_text(out_dir / f"{stem}.yaml", (source / "model.yaml").read_text())
        return {"type": "ultralytics", "model": f"{stem}.yaml", "weights": f"{stem}.safetensors"}

    @staticmethod
    def _check_options(options: Mapping[str, Any]) -> None:
        managed = sorted(set(options) & MANAGED)
        if managed:
            raise ValueError(f"options {managed} are set from the training job, not from options")
        unknown = sorted(set(options) - _ultralytics_arguments())
        if unknown:
            raise ValueError(
                f"options {unknown} are neither ultralytics training arguments nor this plugin's {sorted(OWN_OPTIONS)}"
            )

    @staticmethod
    def _dataset(job: ExternalTrainJob, out: Path, own: Mapping[str, Any]) -> Any:
        train = YoloSplit(
            job.train_annotations,
            job.train_images,
            pseudo_labels=own.get("pseudo_labels"),
            score_threshold=float(own.get("pseudo_threshold", 0.0)),
            ground_truth=bool(own.get("ground_truth", True)),
        )
        val = YoloSplit(job.val_annotations, job.val_images)
        return write_yolo_dataset(
            out / "yolo_data", job.class_names, {"train": train, "val": val}, own.get("link", "hardlink")
        )


def _write_metrics_jsonl(results_csv: Path, target: Path) -> None:
    """ultralytics' results.csv (one row per epoch) as the run's metrics.jsonl (one JSON object per epoch)."""
    if not results_csv.is_file():
        return
    head, *rows = results_csv.read_text().splitlines()
    keys = [k.strip() for k in head.split(",")]
    records = [dict(zip(keys, (float(v) for v in row.split(",")))) for row in rows if row.strip()]
    for record in records:
        record["epoch"] = int(record["epoch"])
    atomic_write_text(target, "".join(json.dumps(r) + "\n" for r in records))


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.is_file() else {}


# ---------------------------------------------------------------------------------------------- the child process
def _die_with_parent() -> None:
    """In the child before exec: get SIGKILL when the parent dies (Linux), so a killed run leaves no orphan."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _run_child(spec: dict[str, Any], out: Path, stream: bool) -> None:
    """Run the trainer in ``python -m detectors.ultralytics_child``; its output goes to ultralytics/train.log."""
    config_dir = out / "ultralytics_config"
    log_path = out / "ultralytics" / "train.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    spec_path = atomic_write_json(out / "ultralytics" / "spec.json", spec)
    (out / "ultralytics" / "error.json").unlink(missing_ok=True)
    package_root = str(Path(__file__).resolve().parent.parent)
    env = {
        **os.environ,
        "YOLO_CONFIG_DIR": str(config_dir),
        "YOLO_OFFLINE": "1",
        "MPLBACKEND": "Agg",
        "PYTHONPATH": os.pathsep.join([package_root, os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
        "PYTHONUNBUFFERED": "1",
    }
    command = [sys.executable, "-m", "detectors.ultralytics_child", str(spec_path)]
    preexec = _die_with_parent if sys.platform.startswith("linux") else None
    with open(log_path, "ab") as log:
        child = subprocess.Popen(
            command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, preexec_fn=preexec
        )
        assert child.stdout is not None
        for line in iter(child.stdout.readline, b""):
            log.write(line)
            log.flush()
            if stream:
                sys.stderr.buffer.write(line)
                sys.stderr.flush()
        code = child.wait()
    if code == 0:
        return
    error = _read_json(out / "ultralytics" / "error.json")
    kinds = {"ValueError": ValueError, "FileNotFoundError": FileNotFoundError, "SyntaxError": ValueError}
    if error.get("type") in kinds:
        raise kinds[error["type"]](f"ultralytics training: {error['message']}")
    tail = log_path.read_text(errors="replace")[-3000:]
    raise RuntimeError(f"ultralytics training failed (exit code {code}); end of {log_path}:\n{tail}")
