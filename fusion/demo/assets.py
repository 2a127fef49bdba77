"""The demo's shipped members: files under ``fusion/assets/models/``, checked against ``MANIFEST.json``.

``configs/ensembles/demo.yaml`` names every member file as ``fusion/assets/models/<file>``. :func:`demo_config`
replaces that prefix with the assets folder in use (the installed package's, or a test's temporary one), so the
config loads from any working directory. Before a model is built, :func:`verify_assets` checks every file the
manifest lists (present, same size, same SHA-256) and that every file the config names is listed: a file that is
missing, changed or unlisted is refused with one line saying which and how to produce the shipped files.

``MANIFEST.json``::

    {"format": 1,
     "files": {"yolo11n.safetensors": {"sha256": "<hex>", "bytes": 5_400_000}, ...},
     "recorded": {"seed": 7, "images": 64, "image_size": 128, "policy": {...}, "AP": {"yolo11n": 0.61, ..., "fused": 0.66}},
     "produced_by": "python -m fusion.demo.retrain"}

``recorded`` holds the AP that ``tests/fusion/test_cli_demo_shipped.py`` checks the shipped weights against.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fusion.classes import CONFIGS_DIR
from fusion.io import sha256_file

__all__ = [
    "ASSETS_DIR",
    "ASSET_PREFIX",
    "DEMO_CONFIG",
    "MANIFEST",
    "MAX_TOTAL_BYTES",
    "AssetMismatchError",
    "AssetMissingError",
    "demo_config",
    "half_safetensors",
    "read_manifest",
    "verify_assets",
    "write_manifest",
]

ASSETS_DIR = Path(__file__).resolve().parent.parent / "assets" / "models"
ASSET_PREFIX = "fusion/assets/models/"
DEMO_CONFIG = CONFIGS_DIR / "ensembles" / "demo.yaml"
MANIFEST = "MANIFEST.json"
MAX_TOTAL_BYTES = 30 * 1024 * 1024  # the shipped weights' budget (package data every install carries)

_HOW = (
    "produce the shipped members with `fusion demo --retrain` (= `python -m fusion.demo.retrain`, CPU hours), "
    "or run `fusion demo --simulated` (simulated members, no networks)"
)


class AssetMissingError(FileNotFoundError):
    """A shipped member file (or the manifest) is not there."""


class AssetMismatchError(ValueError):
    """A shipped member file differs from the manifest (SHA-256 or size), or the config names an unlisted file."""


def _resolve(value: Any, assets_dir: Path) -> Any:
    if isinstance(value, str) and value.startswith(ASSET_PREFIX):
        return str(assets_dir / value[len(ASSET_PREFIX) :])
    return value


def demo_config(
    assets_dir: str | Path = ASSETS_DIR, config: str | Path | Mapping[str, Any] = DEMO_CONFIG
) -> tuple[dict[str, Any], list[str]]:
    """The demo ensemble config with its asset paths pointing into ``assets_dir``.

    Returns:
        ``(config mapping, asset file names the members name)``; the mapping loads with
        :func:`fusion.config.load_ensemble_config` / ``Ensemble.from_config``.
    """
    from fusion.config import load_yaml

    assets_dir = Path(assets_dir).resolve()
    data = dict(config) if isinstance(config, Mapping) else load_yaml(config)
    named: list[str] = []
    members = []
    for member in data.get("members") or []:
        if not isinstance(member, Mapping):
            members.append(member)
            continue
        named += [
            v[len(ASSET_PREFIX) :]
            for v in member.values()
            if isinstance(v, str) and v.startswith(ASSET_PREFIX)
        ]
        members.append({key: _resolve(value, assets_dir) for key, value in member.items()})
    data["members"] = members
    for key in ("classes", "fused_calibrator"):
        if key in data:
            data[key] = _resolve(data[key], assets_dir)
    return data, named


def read_manifest(assets_dir: str | Path = ASSETS_DIR) -> dict[str, Any]:
    """The assets folder's ``MANIFEST.json``.

    Raises:
        AssetMissingError: no manifest (the shipped members were never produced).
        AssetMismatchError: a manifest without a ``files`` mapping.
    """
    import json

    path = Path(assets_dir) / MANIFEST
    if not path.is_file():
        raise AssetMissingError(f"the demo's shipped members are missing ({path} does not exist): {_HOW}")
    manifest = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
        raise AssetMismatchError(f"{path}: expected a mapping with a 'files' mapping; {_HOW}")
    return manifest


def verify_assets(
    assets_dir: str | Path = ASSETS_DIR, named: list[str] | tuple[str, ...] = ()
) -> dict[str, Any]:
    """Check every file of the manifest (present, size, SHA-256) and that every ``named`` file is listed.

    Returns:
        The manifest.

    Raises:
        AssetMissingError: the manifest or a listed file is missing (the message says how to produce them).
        AssetMismatchError: a file whose SHA-256 or size differs from the manifest, or a named file not listed.
    """
    assets_dir = Path(assets_dir)
    manifest = read_manifest(assets_dir)
    files = manifest["files"]
    for name in named:
        if name not in files:
            raise AssetMismatchError(
                f"the demo config names {ASSET_PREFIX}{name}, which {assets_dir / MANIFEST} does not list; {_HOW}"
            )
    for name, entry in sorted(files.items()):
        path = assets_dir / name
        if not path.is_file():
            raise AssetMissingError(f"the demo's shipped member file {path} is missing: {_HOW}")
        size = path.stat().st_size
        if size != entry.get("bytes", size) or sha256_file(path) != entry.get("sha256"):
            raise AssetMismatchError(
                f"{path} does not match {MANIFEST} (SHA-256 {entry.get('sha256')}, {entry.get('bytes')} bytes): "
                f"the file was changed or damaged; restore it (git checkout / reinstall) or {_HOW}"
            )
    return manifest


def half_safetensors(path: str | Path) -> Path:
    """Rewrite a ``.safetensors`` file with its floating-point tensors in fp16 (halves the shipped size).

    Loading is unchanged: ``load_state_dict`` copies each tensor into the fp32 model's parameter, casting it.
    Overflow is clamped to fp16's range (as ultralytics does for its own checkpoints).
    """
    from safetensors import safe_open
    from safetensors.torch import save

    from fusion.io import atomic_write_bytes

    path = Path(path)
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata() or {}
        state = {}
        for key in handle.keys():  # noqa: SIM118 (safe_open is not iterable)
            tensor = handle.get_tensor(key)
            if tensor.is_floating_point():
                limit = 65504.0
                tensor = tensor.clamp(-limit, limit).half()
            state[key] = tensor.contiguous()
    return atomic_write_bytes(path, save(state, metadata={**metadata, "dtype": "fp16"}))


def write_manifest(
    assets_dir: str | Path,
    recorded: Mapping[str, Any] | None = None,
    produced_by: str = "",
    max_bytes: int | None = MAX_TOTAL_BYTES,
) -> Path:
    """Write ``MANIFEST.json`` listing every other file of ``assets_dir`` with its SHA-256 and size.

    Raises:
        ValueError: the files together exceed ``max_bytes`` (default :data:`MAX_TOTAL_BYTES`).
    """
    from fusion.io import atomic_write_json

    assets_dir = Path(assets_dir)
    paths = sorted(p for p in assets_dir.iterdir() if p.is_file() and p.name != MANIFEST)
    files = {p.name: {"sha256": sha256_file(p), "bytes": p.stat().st_size} for p in paths}
    total = sum(entry["bytes"] for entry in files.values())
    if max_bytes is not None and total > max_bytes:
        raise ValueError(
            f"{assets_dir}: the shipped files total {total / 2**20:.1f} MiB, over the "
            f"{max_bytes / 2**20:.0f} MiB budget; use smaller members or fp16 weights"
        )
    manifest = {"format": 1, "files": files, "recorded": dict(recorded or {}), "produced_by": produced_by}
    return atomic_write_json(assets_dir / MANIFEST, manifest)
