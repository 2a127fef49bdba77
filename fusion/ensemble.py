"""The :class:`Ensemble`: several detectors, one call, one fused detection set per image.

Members are found by their config ``type`` in :data:`fusion.registry.DETECTORS`; the core never imports an
adapter. Images are converted once and shared by every member; member outputs stay on the ensemble's device and go
straight into the fusion policy (``fuse_batch``), with weights built from each member's ``weight`` and
``class_weights``. Test-time augmentation adds virtual members (see :mod:`fusion.tta`).

Calibrate members -> fuse -> calibrate the fused output is the ensemble's :class:`~fusion.pipeline.Pipeline`
(:attr:`Ensemble.pipeline`), the same object the scoring commands run column-wise. A member's ``calibrator`` (a
``calibrators.json`` from ``fusion calibrate``) maps its raw scores to calibrated ones before fusion, exactly once;
its TTA passes use the same calibrator. Scoring caches the
raw member outputs and calibrates them at fusion time, so a new calibrator needs no re-run of the models. The config's
``fused_calibrator`` then maps the fused scores (averaging calibrated scores does not give calibrated fused scores:
boxes several members agree on are right more often than their mean score says).
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from fusion.calibration.calibrators import Calibrator
from fusion.classes import ClassMap
from fusion.config import EnsembleConfigBase, load_ensemble_config
from fusion.detections import Detections
from fusion.detector import Detector, ImageBatch
from fusion.fuse import make_policy
from fusion.images import load_images
from fusion.pipeline import Calibration, Pipeline
from fusion.policy import FusionPolicy
from fusion.registry import DETECTORS
from fusion.tta import Augmentation, augmentations_from_config

__all__ = ["Ensemble", "available_devices", "resolve_device"]


def available_devices() -> list[str]:
    """The device names this machine accepts: ``auto``, ``cpu``, and ``cuda``/``cuda:N``/``mps`` when present."""
    names = ["auto", "cpu"]
    if torch.cuda.is_available():
        names += ["cuda"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        names.append("mps")
    return names


def resolve_device(device: str | torch.device, where: str = "device") -> torch.device:
    """``auto`` -> ``cuda`` when available, else ``cpu``; a device that is unknown or absent here is a ``ValueError``.

    Args:
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:N``, ``mps`` or a ``torch.device``.
        where: How to name the setting in the message (``--device``, ``device``).
    """
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    valid = ", ".join(available_devices())
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ValueError(f"{where} {str(device)[:40]!r} is not a device; devices here: {valid}") from None
    if resolved.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0 or (resolved.index is not None and resolved.index >= count):
            absent = "CUDA is not available" if count == 0 else f"there are {count} CUDA device(s)"
            raise ValueError(f"{where} {resolved} was asked for but {absent} here; devices here: {valid}")
    elif resolved.type == "mps":
        if "mps" not in valid:
            raise ValueError(
                f"{where} mps was asked for but MPS is not available here; devices here: {valid}"
            )
    elif resolved.type != "cpu":
        raise ValueError(f"{where} {resolved} is not supported; devices here: {valid}")
    return resolved


def _build_member(index: int, member: Any, class_map: ClassMap, device: torch.device) -> Detector:
    """The adapter of ``members[index]``; an unexpected failure of a third-party loader (a weights file that is not
    a checkpoint: ``IndexError``, ``UnpicklingError``, ``RuntimeError``, ...) becomes a ``ValueError`` naming the
    member, its type and the first line of the loader's message. Errors that already say what is wrong pass."""
    from fusion.registry import UnknownNameError

    try:
        return DETECTORS.get(member.type)(member, class_map, device)
    except (ValueError, OSError, UnknownNameError, KeyError):
        raise
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [""])[0][:300]
        raise ValueError(
            f"members[{index}] ({member.name!r}, type {member.type}): cannot be loaded: "
            f"{type(exc).__name__}: {first or 'no message'}"
        ) from exc


def _same_kind(exc: Exception, message: str) -> Exception:
    """``message`` as a FileNotFoundError or a ValueError, whichever ``exc`` is (some of their subclasses, e.g.
    ``UnicodeDecodeError``, cannot be built from a message alone)."""
    return FileNotFoundError(message) if isinstance(exc, FileNotFoundError) else ValueError(message)


class Ensemble:
    """Run ensemble members on images and fuse their detections.

    Args:
        config: A validated ensemble config (:func:`fusion.config.load_ensemble_config`).
        device: Overrides ``config.device`` (``auto``: CUDA when available).

    Attributes:
        members: The real members, in config order.
        member_names: The names of the (virtual) members fused, in fusion order: for each member, its plain pass
            then one ``<name>@<augmentation>`` per TTA augmentation (``@hflip``, ``@x1.5``, ...).
        class_map: The ensemble vocabulary; every output label is one of its contiguous indices.
        policy: The fusion policy, weights included.
        pipeline: Calibrate members -> fuse (``policy``) -> calibrate the fused output, on the member outputs.

    Example:
        >>> ens = Ensemble.from_config("configs/ensembles/tiny.yaml")
        >>> fused = ens.predict(["a.jpg", "b.jpg"])       # one Detections per image
    """

    def __init__(self, config: EnsembleConfigBase, device: str | torch.device | None = None) -> None:
        self.config = config
        self.device = resolve_device(device if device is not None else config.device)
        self.class_map = ClassMap.load(config.classes)
        self.autocast_dtype: torch.dtype | None = None
        if config.autocast is not None:
            if self.device.type == "cuda":
                self.autocast_dtype = torch.float16 if config.autocast == "fp16" else torch.bfloat16
            else:
                warnings.warn(
                    f"autocast {config.autocast} is ignored on {self.device}: it applies on CUDA only",
                    stacklevel=2,
                )
        self.members: list[Detector] = [
            _build_member(index, member, self.class_map, self.device)
            for index, member in enumerate(config.members)  # type: ignore[attr-defined]
        ]
        self.augmentations: list[Augmentation] = augmentations_from_config(config.tta)
        self._passes: list[tuple[int, Augmentation | None]] = []
        for index, member in enumerate(self.members):
            self._passes.append((index, None))
            if getattr(member, "supports_tta", True):
                self._passes.extend((index, aug) for aug in self.augmentations)
        self.member_names = [
            self.members[i].name + ("" if aug is None else f"@{aug.name}") for i, aug in self._passes
        ]
        self.policy: FusionPolicy = make_policy(config.fusion, weights=self.fusion_weights())  # type: ignore[attr-defined]
        self.calibrators: dict[str, Calibrator] = self._load_calibrators()
        fused = self._load_fused_calibration()
        self.fused_calibrator: Calibrator | None = fused.fused
        self.pipeline = Pipeline(
            self.policy,
            Calibration(
                self.calibrators,
                tuple(self.class_map.names),
                self.fused_calibrator,
                sources=self.calibrator_files,
                fused_fit=fused.fused_fit,
            ),
            self.class_map,
        )
        self.pipeline.check_fused_fit(f"fused_calibrator {config.fused_calibrator}")

    @classmethod
    def from_config(
        cls,
        source: str | Path | Mapping[str, Any] | EnsembleConfigBase,
        overrides: Sequence[str] = (),
        device: str | torch.device | None = None,
    ) -> Ensemble:
        """Build from a YAML path, a shipped config name, a mapping or a loaded config, with ``dotted=value`` overrides."""
        if isinstance(source, EnsembleConfigBase):
            if overrides:
                source = source.model_dump(mode="json")
            else:
                return cls(source, device)
        return cls(load_ensemble_config(source, overrides), device)

    # ------------------------------------------------------------------ weights
    def fusion_weights(self) -> list[float] | list[list[float]] | None:
        """Per virtual member weights ``[M]``, or ``[M][C]`` when any member has ``class_weights``; None if all 1.

        Raises:
            ValueError: a ``class_weights`` key that is not a class of the ensemble vocabulary.
        """
        configs = [self.members[index].config for index, _ in self._passes]
        return member_fusion_weights(
            [c.name for c in configs],
            [c.weight for c in configs],
            [c.class_weights for c in configs],
            self.class_map,
        )

    def _load_calibrators(self) -> dict[str, Calibrator]:
        """``{virtual member name: calibrator}`` for the members whose config names a ``calibrator`` file."""
        from fusion.calibration.sets import load_member_calibrator

        loaded: dict[int, Calibrator] = {}
        for index, member in enumerate(self.members):
            path = member.config.calibrator
            if path is None:
                continue
            try:
                loaded[index] = load_member_calibrator(path, member.name, self.class_map.names)
            except (ValueError, OSError) as exc:
                raise _same_kind(exc, f"members[{index}].calibrator ({member.name!r}): {exc}") from None
        return {name: loaded[i] for name, (i, _) in zip(self.member_names, self._passes) if i in loaded}

    def _load_fused_calibration(self) -> Calibration:
        """The ``fused_calibrator`` file's fused entry and what it was fitted under (empty without one)."""
        path = self.config.fused_calibrator
        if path is None:
            return Calibration()
        try:
            found = Calibration.from_file(path, members=False, class_names=self.class_map.names)
            if found.fused is None:
                raise ValueError(
                    f"{path}: has no fused calibrator (refit with `fusion calibrate`, which fits one unless --no-fused)"
                )
        except (ValueError, OSError) as exc:
            raise _same_kind(exc, f"fused_calibrator: {exc}") from None
        return found

    @property
    def calibrator_files(self) -> dict[str, str]:
        """``{virtual member name: calibrator file}`` of the members that are calibrated."""
        return {
            name: str(self.members[i].config.calibrator)
            for name, (i, _) in zip(self.member_names, self._passes)
            if name in self.calibrators
        } | ({"fused": str(self.config.fused_calibrator)} if self.fused_calibrator is not None else {})

    # ------------------------------------------------------------------ the four steps
    def load(self, images: Any, image_ids: Sequence[int | str] | None = None) -> ImageBatch:
        """Images (paths, PIL, HWC uint8 numpy, CHW tensors; one or a list) -> an :class:`ImageBatch` on the device."""
        return load_images(images, self.device, image_ids)

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type="cuda", dtype=self.autocast_dtype)

    def run_members(self, batch: ImageBatch, names: Sequence[str] | None = None) -> list[list[Detections]]:
        """Every (virtual) member on ``batch``: ``out[m][i]``, boxes in each original image's pixels, on the device.

        Args:
            batch: The images.
            names: Only these virtual members (in :attr:`member_names` order), e.g. to redo one member's lost cache;
                default all.
        """
        wanted = [
            (name, index, aug)
            for name, (index, aug) in zip(self.member_names, self._passes)
            if names is None or name in names
        ]
        needed = {aug.name for _, _, aug in wanted if aug is not None}
        augmented = {aug.name: aug.apply(batch) for aug in self.augmentations if aug.name in needed}
        sizes = batch.sizes
        out: list[list[Detections]] = []
        with self._autocast():
            for _, index, aug in wanted:
                member = self.members[index]
                if aug is None:
                    out.append(member.predict(batch))
                else:
                    out.append(aug.invert(member.predict(augmented[aug.name]), sizes))
        for (name, _, _), dets in zip(wanted, out):
            if len(dets) != len(batch):
                raise RuntimeError(f"member {name!r} returned {len(dets)} detections for {len(batch)} images")
        return out

    def calibrate(self, per_member: Sequence[Sequence[Detections]]) -> list[list[Detections]]:
        """Apply each member's calibrator to its detections ``per_member[m][i]`` (in :attr:`member_names` order).

        Exactly once: rows are marked ``extras["calibrated"]`` and marked rows are left alone, so calibrating
        twice changes nothing. Without calibrators the input is returned as it is.
        """
        named = self.pipeline.calibrate(self._named(per_member))
        return [named[name] for name in self.member_names]

    def calibrate_fused(self, fused: Sequence[Detections]) -> list[Detections]:
        """The fused output's scores through ``fused_calibrator`` (re-sorted by score); unchanged without one."""
        return self.pipeline.calibrate_fused(fused)

    def fuse(self, per_member: Sequence[Sequence[Detections]]) -> list[Detections]:
        """Fuse ``per_member[m][i]`` into one :class:`Detections` per image (the policy's ``fuse_batch``)."""
        return self.pipeline.fuse(self._named(per_member))

    def _named(self, per_member: Sequence[Sequence[Detections]]) -> dict[str, Sequence[Detections]]:
        if len(per_member) != len(self.member_names):
            raise ValueError(
                f"{len(per_member)} members' detections given; this ensemble fuses {len(self.member_names)}: "
                f"{self.member_names}"
            )
        return dict(zip(self.member_names, per_member))

    def predict_batch(self, batch: ImageBatch) -> list[Detections]:
        """Fused detections of one loaded batch: the members, then :attr:`pipeline` (what :meth:`predict` runs)."""
        return self.pipeline(self._named(self.run_members(batch)))

    # ------------------------------------------------------------------ public API
    def _chunks(self, images: Any, image_ids: Sequence[int | str] | None) -> Iterator[ImageBatch]:
        if isinstance(images, ImageBatch):
            items: list[Any] = [images]
        elif isinstance(images, list | tuple) or (isinstance(images, Tensor) and images.ndim == 4):
            items = list(images)
        else:
            items = [images]
        if image_ids is not None and len(image_ids) != len(items):
            raise ValueError(f"{len(items)} images but {len(image_ids)} image_ids")
        if len(items) == 1 and isinstance(items[0], ImageBatch):
            batch = items[0]
            for start in range(0, len(batch), self.config.batch_size):
                stop = start + self.config.batch_size
                images_ = [im.to(self.device) for im in batch.images[start:stop]]
                yield ImageBatch(images_, batch.image_ids[start:stop], batch.paths[start:stop])
            return
        ids = list(image_ids) if image_ids is not None else list(range(len(items)))
        for start in range(0, len(items), self.config.batch_size):
            stop = start + self.config.batch_size
            yield self.load(items[start:stop], ids[start:stop])

    def predict(self, images: Any, image_ids: Sequence[int | str] | None = None) -> list[Detections]:
        """Fused detections of every image.

        Args:
            images: One image or a list (paths, PIL images, HWC uint8 RGB numpy arrays, CHW tensors), a
                ``[B, 3, H, W]`` tensor, or an :class:`ImageBatch`. Lists are processed ``batch_size`` at a time.
            image_ids: One id per image (what ``predictions`` members match records by); default: positions.

        Returns:
            One :class:`Detections` per image, on the ensemble's device: pixel xyxy boxes of that image, labels in
            the ensemble vocabulary, sorted by score, with the policy's ``extras`` (e.g. ``votes``).
        """
        fused: list[Detections] = []
        for batch in self._chunks(images, image_ids):
            fused.extend(self.predict_batch(batch))
        return fused

    def predict_members(
        self, images: Any, image_ids: Sequence[int | str] | None = None, calibrated: bool = True
    ) -> dict[str, list[Detections]]:
        """Each (virtual) member's own detections: ``{member name: one Detections per image}``, before fusion.

        Keys are :attr:`member_names` in fusion order (TTA passes appear as ``<name>@<augmentation>``, boxes
        already mapped back to the original images). With ``calibrated`` (default) scores are what fusion sees:
        after each member's calibrator; ``calibrated=False`` gives the raw scores.
        """
        out: dict[str, list[Detections]] = {name: [] for name in self.member_names}
        for batch in self._chunks(images, image_ids):
            outputs = self.run_members(batch)
            for name, dets in zip(self.member_names, self.calibrate(outputs) if calibrated else outputs):
                out[name].extend(dets)
        return out

    def __repr__(self) -> str:
        return f"Ensemble({self.config.name!r}, members={self.member_names}, device={self.device}, policy={self.policy!r})"


def member_fusion_weights(
    names: Sequence[str],
    weights: Sequence[float],
    class_weights: Sequence[Mapping[str, float] | None],
    class_map: ClassMap,
) -> list[float] | list[list[float]] | None:
    """Fusion weights of members from their ``weight`` and ``class_weights`` config fields.

    Returns:
        ``[M]`` weights, or ``[M][C]`` (``C = len(class_map)``) when any member has ``class_weights``; None if all 1.

    Raises:
        ValueError: a negative class weight, or a ``class_weights`` key that is not a class of ``class_map``.
    """
    rows = []
    for name, weight, per_class in zip(names, weights, class_weights):
        row = [weight] * len(class_map)
        for cls_name, value in (per_class or {}).items():
            if value < 0:
                raise ValueError(f"member {name!r}: class_weights[{cls_name!r}] = {value} must be >= 0")
            try:
                row[class_map.index(cls_name)] = weight * value
            except KeyError as exc:
                raise ValueError(f"member {name!r}: class_weights: {exc.args[0]}") from None
        rows.append(row)
    if any(per_class for per_class in class_weights):
        return rows
    flat = [float(w) for w in weights]
    return None if all(w == 1.0 for w in flat) else flat
