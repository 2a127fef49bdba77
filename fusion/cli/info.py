"""``fusion list`` and ``fusion check``: what is registered, and what this machine can run."""

from __future__ import annotations

import argparse
import importlib
import os
import platform
from pathlib import Path

__all__ = ["add_parser", "environment_report"]


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    listing = subparsers.add_parser("list", help="list registered policies or detectors")
    listing.add_argument("what", choices=["policies", "detectors"])
    listing.set_defaults(run=_run_list)
    check = subparsers.add_parser("check", help="versions, devices, weight caches and offline readiness")
    check.set_defaults(run=_run_check)


def _run_list(args: argparse.Namespace) -> int:
    from fusion.registry import DETECTORS, POLICIES

    registry = POLICIES if args.what == "policies" else DETECTORS
    for name in registry.names():
        obj = registry.get(name)
        summary = (obj.__doc__ or "").strip().splitlines()[0] if obj.__doc__ else ""
        print(f"{name:<14} {summary}")
    return 0


def _version(module: str) -> str:
    try:
        return str(importlib.import_module(module).__version__)
    except ImportError:
        return "not installed"
    except AttributeError:
        return "installed"


def _default_backend() -> str:
    from fusion.coco.evaluate import available_backends

    found = available_backends()
    return f"{found[0]} (auto; installed: {', '.join(found)})" if found else "none installed"


def environment_report() -> dict[str, object]:
    """Versions of the key packages, devices, weight-cache folders and whether runs can be fully offline."""
    import torch

    torch_home = Path(os.environ.get("TORCH_HOME", Path.home() / ".cache" / "torch"))
    hub_checkpoints = torch_home / "hub" / "checkpoints"
    yolo_dir = Path(os.environ.get("YOLO_CONFIG_DIR", Path.home() / ".config" / "Ultralytics"))
    devices = ["cpu"] + [
        f"cuda:{i} ({torch.cuda.get_device_name(i)})" for i in range(torch.cuda.device_count())
    ]
    font = yolo_dir / "Arial.ttf"
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": _version("torchvision"),
        "ultralytics": _version("ultralytics"),
        "ensemble_boxes": _version("ensemble_boxes"),
        "pycocotools": _version("pycocotools"),
        "faster_coco_eval": _version("faster_coco_eval"),
        "hotcoco": _version("hotcoco"),
        "evaluation_backend": _default_backend(),
        "devices": devices,
        "torchvision_weights_dir": str(hub_checkpoints),
        "torchvision_weights_cached": sorted(p.name for p in hub_checkpoints.glob("*.pth"))
        if hub_checkpoints.exists()
        else [],
        "ultralytics_settings_dir": str(yolo_dir),
        "offline": {
            "YOLO_OFFLINE": os.environ.get("YOLO_OFFLINE", "unset"),
            "ultralytics_font_present": font.exists(),
        },
    }


def _run_check(args: argparse.Namespace) -> int:
    report = environment_report()
    width = max(len(k) for k in report)
    for key, value in report.items():
        if isinstance(value, list):
            value = ", ".join(value) if value else "(none)"
        elif isinstance(value, dict):
            value = ", ".join(f"{k}={v}" for k, v in value.items())
        print(f"{key:<{width}}  {value}")
    return 0
