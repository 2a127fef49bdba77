"""Ensemble configs: YAML validated by pydantic, ``dotted.path=value`` overrides, errors that name the YAML path.

The config shape::

    name: tiny
    classes: coco80              # a shipped class list name, or a path
    device: auto                 # auto | cpu | cuda | cuda:N
    members:
      - {name: frcnn, type: torchvision, model: fasterrcnn_mobilenet_v3_large_320_fpn, weights: null, weight: 1.0}
      - {name: yolo, type: ultralytics, model: yolo11n.yaml, classes: coco80, weight: 1.0}  # a .yaml has no names
    fusion: {type: wbf, iou_thr: 0.55, skip_box_thr: 0.0, conf_type: avg}

``members[*]`` and ``fusion`` are discriminated unions on ``type``: each registered detector and policy contributes
its own pydantic model (``Detector.Config``, ``FusionPolicy.Params``), so a field of a torchvision member is checked
by the torchvision adapter's rules. Only the plug-ins a config names are imported.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, field_validator

from fusion.io import MAX_YAML_NODES, read_text_file, shorten
from fusion.io import parse_yaml as _parse_yaml
from fusion.registry import DETECTORS, POLICIES, Registry, UnknownNameError

__all__ = [
    "MAX_YAML_NODES",
    "ConfigError",
    "EnsembleConfigBase",
    "TTAConfig",
    "apply_overrides",
    "load_ensemble_config",
    "load_yaml",
    "parse_yaml",
    "read_config_source",
    "shorten",
]


class ConfigError(ValueError):
    """A config that does not validate; the message names the file and the YAML path of every bad field."""


class TTAConfig(BaseModel):
    """Test-time augmentation: each augmentation runs every member again as a virtual member."""

    model_config = ConfigDict(extra="forbid")

    hflip: bool = False
    scales: list[Annotated[float, Field(gt=0)]] = Field(default_factory=list)


class EnsembleConfigBase(BaseModel):
    """Fields of an ensemble config besides ``members`` and ``fusion`` (which are added per config).

    ``fused_calibrator`` names a ``calibrators.json`` (from ``fusion calibrate``) whose ``fused`` entry maps the
    fused scores after fusion; members' own calibrators are set per member (``members[i].calibrator``).
    """

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9_.\-]+$")
    classes: str = "coco80"
    device: str = "auto"
    batch_size: int = Field(4, ge=1)
    autocast: Literal["fp16", "bf16"] | None = None
    tta: TTAConfig = Field(default_factory=TTAConfig)
    fused_calibrator: str | None = None

    @field_validator("device")
    @classmethod
    def _check_device(cls, value: str) -> str:
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?|mps", value):
            raise ValueError(f"device must be auto, cpu, cuda, cuda:N or mps, got {shorten(value, 40)}")
        return value


def parse_yaml(text: str, where: str) -> Any:
    """:func:`fusion.io.parse_yaml` (bounded ``yaml.safe_load``, one-line errors naming ``where``) raising
    :class:`ConfigError`."""
    return _parse_yaml(text, where, error=ConfigError)


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping (``yaml.safe_load``: configs are data, never code; aliases bounded)."""
    path = Path(path)
    data = parse_yaml(read_text_file(path, "config file"), str(path))
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def _parse_path(dotted: str) -> list[str | int]:
    parts: list[str | int] = []
    for token in re.findall(r"[^.\[\]]+", dotted):
        parts.append(int(token) if token.lstrip("-").isdigit() else token)
    if not parts:
        raise ConfigError(f"override {shorten(dotted)}: empty path")
    return parts


def apply_overrides(data: Mapping[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Apply ``dotted.path=value`` overrides (``fusion.iou_thr=0.6``, ``members.1.weight=2``, ``members[1].weight=2``).

    Values are parsed as YAML scalars or flow collections (``0.6``, ``null``, ``[1, 2]``). Returns a new dict.

    Raises:
        ConfigError: malformed override, or a path whose parent does not exist.
    """
    result = copy.deepcopy(dict(data))
    for override in overrides:
        key, sep, raw = override.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {shorten(override)} must look like dotted.path=value")
        path = _parse_path(key.strip())
        override = shorten(override)[1:-1]  # what the messages below echo
        value = parse_yaml(raw, f"override {key.strip()}={shorten(raw)}") if raw.strip() else None
        node: Any = result
        for depth, part in enumerate(path[:-1]):
            where = _format_path(path[: depth + 1])
            if isinstance(part, int):
                if not isinstance(node, list) or not -len(node) <= part < len(node):
                    raise ConfigError(f"override {override!r}: {where} does not exist")
                node = node[part]
            else:
                if not isinstance(node, dict):
                    raise ConfigError(f"override {override!r}: {_format_path(path[:depth])} is not a mapping")
                # A section left to its defaults (e.g. `tta`) is created; validation rejects unknown keys.
                node = node.setdefault(part, {})
        last = path[-1]
        if isinstance(last, int):
            if not isinstance(node, list) or not -len(node) <= last < len(node):
                raise ConfigError(f"override {override!r}: {_format_path(path)} does not exist")
        elif not isinstance(node, dict):
            raise ConfigError(f"override {override!r}: {_format_path(path[:-1])} is not a mapping")
        node[last] = value
    return result


def _format_path(loc: Sequence[str | int]) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "<root>"


def _plugin_union(registry: Registry[Any], attr: str, tags: set[str]) -> Any:
    models = [getattr(registry.get(tag), attr) for tag in sorted(tags)]
    if len(models) == 1:
        return models[0]
    return Annotated[Union[tuple(models)], Field(discriminator="type")]  # noqa: UP007 (runtime-built union)


def _check_types(data: Mapping[str, Any], source: str) -> tuple[set[str], set[str]]:
    """Check every ``type`` names a registered plug-in before pydantic sees it, for a precise message."""
    problems = []
    member_types: set[str] = set()
    members = data.get("members")
    if isinstance(members, list):
        for index, member in enumerate(members):
            if not isinstance(member, dict):
                problems.append(f"members[{index}]: expected a mapping, got {shorten(member)}")
            elif "type" not in member:
                problems.append(f"members[{index}].type: missing; one of {', '.join(DETECTORS.names())}")
            else:
                try:
                    DETECTORS.get(str(member["type"]))
                    member_types.add(str(member["type"]))
                except UnknownNameError as exc:
                    problems.append(f"members[{index}].type: {str(exc)[:300]}")
    policy_types: set[str] = set()
    fusion = data.get("fusion")
    if isinstance(fusion, dict):
        try:
            POLICIES.get(str(fusion.get("type", "wbf")))
            policy_types.add(str(fusion.get("type", "wbf")))
        except UnknownNameError as exc:
            problems.append(f"fusion.type: {str(exc)[:300]}")
    else:
        problems.append(
            f"fusion: expected a policy name or a mapping {{type: ..., ...}}, got {shorten(fusion)}"
        )
    if problems:
        raise ConfigError(f"{source}: invalid ensemble config:\n  " + "\n  ".join(problems))
    return member_types, policy_types


def _format_errors(error: ValidationError, tags: set[str], source: str) -> str:
    lines = []
    for item in error.errors():
        # Discriminated unions add the tag to the location (members.1.torchvision.model); users wrote members[1].model.
        loc = [
            part
            for i, part in enumerate(item["loc"])
            if not (i > 0 and part in tags and isinstance(part, str))
        ]
        got = (
            f" (got {shorten(item['input'])})"
            if item["type"] not in ("missing",)
            and not isinstance(item["input"], dict)
            and shorten(item["input"]) not in item["msg"]
            else ""
        )
        message = item["msg"].removeprefix("Value error, ")
        lines.append(f"{_format_path(loc)[:200]}: {message[:300]}{got}")
    return f"{source}: invalid ensemble config:\n  " + "\n  ".join(lines)


def read_config_source(
    source: str | Path | Mapping[str, Any], kind: str, overrides: Sequence[str] = ()
) -> tuple[dict[str, Any], str]:
    """A config's data with ``overrides`` applied, and where it came from (for messages).

    Args:
        source: A mapping, a YAML path, or the name of a shipped config (``configs/<kind>/<name>.yaml``).
        kind: The shipped configs' folder (``ensembles``, ``train``, ``distill``).
        overrides: ``dotted.path=value`` strings.
    """
    if isinstance(source, Mapping):
        data, where = dict(source), "<config>"
    else:
        path = Path(source)
        if not path.exists() and not path.suffix:
            from fusion.classes import CONFIGS_DIR

            path = CONFIGS_DIR / kind / f"{source}.yaml"
        data, where = load_yaml(path), str(path)
    return apply_overrides(data, overrides), where


def load_ensemble_config(
    source: str | Path | Mapping[str, Any], overrides: Sequence[str] = ()
) -> EnsembleConfigBase:
    """Load, override and validate an ensemble config.

    Args:
        source: A YAML path, a shipped config name (``configs/ensembles/<name>.yaml``) or a mapping.
        overrides: ``dotted.path=value`` strings applied before validation.

    Returns:
        A validated config model with ``members`` (one adapter ``Config`` per member) and ``fusion`` (policy Params).

    Raises:
        ConfigError: any invalid field; the message names the source and the YAML path of each problem.
    """
    data, where = read_config_source(source, "ensembles", overrides)
    data.setdefault("fusion", {"type": "wbf"})
    if isinstance(data["fusion"], str):  # `fusion: nms` is shorthand for `fusion: {type: nms}`
        data["fusion"] = {"type": data["fusion"]}
    if isinstance(data["fusion"], dict):
        data["fusion"].setdefault("type", "wbf")
    member_types, policy_types = _check_types(data, where)
    model = create_model(
        "EnsembleConfig",
        __base__=EnsembleConfigBase,
        members=(list[_plugin_union(DETECTORS, "Config", member_types)] if member_types else list[Any], ...),
        fusion=(_plugin_union(POLICIES, "Params", policy_types), ...),
    )
    try:
        config = model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_errors(exc, member_types | policy_types, where)) from None
    members = config.members  # type: ignore[attr-defined]
    if not members:
        raise ConfigError(f"{where}: members: an ensemble needs at least one member")
    seen: dict[str, int] = {}
    for index, member in enumerate(members):
        if member.name in seen:
            raise ConfigError(
                f"{where}: members[{index}].name: {member.name!r} is already used by members[{seen[member.name]}]"
            )
        seen[member.name] = index
    if config.fusion.weights is not None:  # type: ignore[attr-defined]
        raise ConfigError(
            f"{where}: fusion.weights: set each member's `weight` (and `class_weights`) instead"
        )
    weights = [member.weight for member in members]
    if not any(weight > 0 for weight in weights):
        raise ConfigError(
            f"{where}: members[*].weight: every member weight is 0; give at least one a weight > 0"
        )
    try:
        config.fusion.check_members(weights, "fusion")  # type: ignore[attr-defined]
    except ValueError as error:
        raise ConfigError(f"{where}: {error}") from None
    return config
