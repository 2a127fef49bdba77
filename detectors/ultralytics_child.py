"""The child process of :mod:`detectors.ultralytics_training`: ultralytics' trainer, run with a private
``YOLO_CONFIG_DIR``, ``YOLO_OFFLINE=1`` and a bundled font that the parent sets before ultralytics is imported.

``python -m detectors.ultralytics_child <spec.json>`` trains (``fresh``), continues from ``last.pt`` (``resume``)
or only runs the final validation of a run whose epochs were all saved (``finish``), then writes ``final.json``
beside the spec (or ``error.json`` with the exception's type and message).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import torch
import yaml

from detectors.ultralytics_training import member_yaml, save_safetensors_model
from fusion.io import atomic_write_json, atomic_write_text

__all__: list[str] = []

INTEGRATIONS = ("clearml", "comet", "dvc", "mlflow", "raytune", "tensorboard", "wandb")


def _trainer_class(threads: int) -> type:
    """ultralytics' DetectionTrainer with atomic checkpoints, safetensors beside them, and a finished marker."""
    import ultralytics.engine.trainer as engine
    from ultralytics.models.yolo.detect import DetectionTrainer
    from ultralytics.utils import torch_utils

    torch_utils.NUM_THREADS = threads  # ultralytics resets torch's threads to this when it selects the CPU
    strip = engine.strip_optimizer

    def atomic_strip(f: Any, s: str = "", updates: Any = None) -> Any:
        # ultralytics rewrites last.pt/best.pt in place at the end; a kill then must not leave half a file.
        target = Path(s or f)
        tmp = target.with_name(f".{target.name}.tmp")
        result = strip(f, s=str(tmp), updates=updates)
        os.replace(tmp, target)
        return result

    engine.strip_optimizer = atomic_strip

    class AtomicTrainer(DetectionTrainer):
        def save_model(self) -> bool:
            last, best = self.last, self.best
            self.last, self.best = last.with_name(".last.pt.tmp"), best.with_name(".best.pt.tmp")
            for stale in (self.last, self.best):  # left by a killed run; only a fresh one may replace best.pt
                stale.unlink(missing_ok=True)
            try:
                saved = super().save_model()
            finally:
                tmp_last, tmp_best, self.last, self.best = self.last, self.best, last, best
            ema = torch_utils.unwrap_model(self.ema.ema)
            names = [self.data["names"][i] for i in range(len(self.data["names"]))]
            weights = Path(self.wdir)
            if not (weights / "model.yaml").exists():
                atomic_write_text(
                    weights / "model.yaml", yaml.safe_dump(member_yaml(ema.yaml, names), sort_keys=False)
                )
            if tmp_best.exists():
                os.replace(tmp_best, best)
                save_safetensors_model(ema, names, weights, "best")
            save_safetensors_model(ema, names, weights, "last")
            if tmp_last.exists():
                os.replace(tmp_last, last)
            return saved

        def resume_training(self, ckpt: Any) -> None:
            super().resume_training(ckpt)
            # Rows of epochs after the checkpoint (killed between results.csv and last.pt) are trained again.
            if self.resume and self.csv.exists():
                head, *rows = self.csv.read_text().splitlines(keepends=True)
                kept = [row for row in rows if float(row.split(",")[0]) <= self.start_epoch]
                atomic_write_text(self.csv, "".join([head, *kept]))

        def final_eval(self) -> None:
            # Every epoch is saved once the loop has ended: a run killed from here on only needs the validation.
            atomic_write_json(
                Path(self.save_dir) / "progress.json", {"finished": True, "epochs": self.epoch + 1}
            )
            super().final_eval()

    return AtomicTrainer


def _finish(spec: dict[str, Any], save_dir: Path) -> dict[str, Any]:
    """ultralytics' final validation of best.pt, for a run killed after its last epoch was saved."""
    from ultralytics.models.yolo.detect import DetectionValidator

    overrides = spec["overrides"]
    # The trainer's own validation settings: its arguments, and the doubled batch and rectangular batches of
    # its validation loader (a validator built alone would letterbox to squares: other numbers).
    args = {**overrides, "batch": 2 * overrides["batch"], "rect": True, "mode": "val", "plots": False}
    metrics = DetectionValidator(save_dir=save_dir, args=args)(model=str(save_dir / "weights" / "best.pt"))
    metrics.pop("fitness", None)
    return metrics


def _child_main(spec_path: Path) -> None:
    """The child process: train, resume or finish the run described by ``spec_path``; write final.json."""
    spec = json.loads(spec_path.read_text())
    save_dir = spec_path.parent
    torch.set_num_threads(spec["threads"])
    try:
        from detectors.ultralytics_detector import import_ultralytics

        import_ultralytics()
        from ultralytics.utils import SETTINGS

        # The settings file is this run's own (YOLO_CONFIG_DIR): no analytics, no experiment-tracker callbacks
        # (ultralytics enables ClearML, Comet, DVC, MLflow and Ray Tune by default when they are installed).
        SETTINGS.update({k: False for k in ("sync", *INTEGRATIONS)})
        if spec["mode"] == "finish":
            metrics = _finish(spec, save_dir)
        else:
            overrides = dict(spec["overrides"])
            if spec["mode"] == "resume":
                last = str(save_dir / "weights" / "last.pt")
                overrides |= {"model": last, "resume": last}
            trainer = _trainer_class(spec["threads"])(overrides=overrides)
            trainer.train()
            metrics = dict(trainer.metrics)
        progress = json.loads((save_dir / "progress.json").read_text())
        result = {"metrics": {k: float(v) for k, v in metrics.items()}, "epochs": progress.get("epochs")}
        atomic_write_json(save_dir / "final.json", result)
    except Exception as exc:
        atomic_write_json(save_dir / "error.json", {"type": type(exc).__name__, "message": str(exc)})
        raise


if __name__ == "__main__":
    _child_main(Path(sys.argv[1]))
