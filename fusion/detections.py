"""The detections of one image: the type every module of the engine speaks.

Modelled on detectron2's ``Instances``: a small container whose fields always have equal lengths, that supports
boolean-mask and index selection, ``cat`` and device moves, and that refuses to be built from inconsistent data.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = ["Detections"]

_Index = int | slice | Tensor | Sequence[int] | np.ndarray


def _as_tensor(value: Any, dtype: torch.dtype, device: torch.device | str | None) -> Tensor:
    if isinstance(value, Tensor):
        return value.to(device=device or value.device, dtype=dtype)
    return torch.as_tensor(np.asarray(value), dtype=dtype, device=device)


class Detections:
    """Boxes, scores and labels of ONE image, plus optional per-box extras.

    Invariants (checked on construction, ``ValueError`` naming the field otherwise):

    * ``boxes``: float32 ``[N, 4]``, ``(x1, y1, x2, y2)`` in absolute pixels, finite, ``x2 >= x1`` and
      ``y2 >= y1`` (zero-area boxes are allowed). Boxes given as a float64 TENSOR stay float64 (saved results
      are read that way, so that fusing them is exact arithmetic on the file's decimal values).
    * ``scores``: ``[N]``, finite, of the boxes' dtype.
    * ``labels``: int64 ``[N]``, contiguous class indices of a :class:`~fusion.classes.ClassMap`.
    * ``extras``: ``dict[str, Tensor]`` whose tensors have ``N`` rows, e.g. ``extras["member"]`` (the member that
      produced each box) or ``extras["votes"]`` (distinct members in a fused cluster).
    * ``image_size``: optional ``(height, width)`` of the image the boxes are in.
    * Every tensor lives on the same device.

    Other inputs (lists, numpy arrays of any dtype, other tensor dtypes) are converted, float class ids included,
    since ultralytics hands those out. Pass ``check_values=False`` on hot paths whose inputs are already known
    to be valid: the shape checks still run, the value checks (which synchronise with a GPU) do not.

    Example:
        >>> d = Detections(boxes=[[0, 0, 10, 10], [5, 5, 8, 9]], scores=[0.9, 0.2], labels=[1, 3])
        >>> len(d[d.scores > 0.5])
        1
    """

    __slots__ = ("boxes", "extras", "image_size", "labels", "scores")

    def __init__(
        self,
        boxes: Any,
        scores: Any,
        labels: Any,
        image_size: tuple[int, int] | None = None,
        extras: Mapping[str, Any] | None = None,
        *,
        device: torch.device | str | None = None,
        check_values: bool = True,
    ) -> None:
        float_dtype = (
            torch.float64 if isinstance(boxes, Tensor) and boxes.dtype == torch.float64 else torch.float32
        )
        boxes = _as_tensor(boxes, float_dtype, device)
        device = boxes.device
        if boxes.ndim == 1 and boxes.numel() == 0:
            boxes = boxes.reshape(0, 4)
        self.boxes: Tensor = boxes
        self.scores: Tensor = _as_tensor(scores, float_dtype, device)
        self.labels: Tensor = _as_tensor(labels, torch.int64, device)
        self.image_size: tuple[int, int] | None = None
        if image_size is not None:
            height, width = (int(v) for v in image_size)
            if height <= 0 or width <= 0:
                raise ValueError(f"image_size must be a positive (height, width), got {tuple(image_size)}")
            self.image_size = (height, width)
        self.extras: dict[str, Tensor] = {}
        for key, value in (extras or {}).items():
            tensor = value if isinstance(value, Tensor) else torch.as_tensor(np.asarray(value))
            self.extras[key] = tensor.to(device)
        self._check_shapes()
        if check_values:
            self._check_values()

    # ------------------------------------------------------------------ validation
    def _check_shapes(self) -> None:
        if self.boxes.ndim != 2 or self.boxes.shape[1] != 4:
            raise ValueError(f"boxes must have shape [N, 4] (xyxy), got {list(self.boxes.shape)}")
        n = self.boxes.shape[0]
        for field in ("scores", "labels"):
            value = getattr(self, field)
            if value.ndim != 1 or value.shape[0] != n:
                raise ValueError(
                    f"{field} must have shape [{n}] to match boxes [{n}, 4], got {list(value.shape)}"
                )
        for key, value in self.extras.items():
            if value.ndim == 0 or value.shape[0] != n:
                raise ValueError(
                    f"extras[{key!r}] must have {n} rows to match boxes, got shape {list(value.shape)}"
                )

    def _check_values(self) -> None:
        if self.boxes.numel() == 0:
            return
        bad_box = ~torch.isfinite(self.boxes).all(dim=1)
        if bool(bad_box.any()):
            index = int(bad_box.nonzero()[0])
            raise ValueError(f"boxes[{index}] is not finite: {self.boxes[index].tolist()}")
        inverted = (self.boxes[:, 2] < self.boxes[:, 0]) | (self.boxes[:, 3] < self.boxes[:, 1])
        if bool(inverted.any()):
            index = int(inverted.nonzero()[0])
            raise ValueError(
                f"boxes[{index}] = {self.boxes[index].tolist()} is inverted: boxes are xyxy with x2 >= x1 and y2 >= y1"
            )
        bad_score = ~torch.isfinite(self.scores)
        if bool(bad_score.any()):
            index = int(bad_score.nonzero()[0])
            raise ValueError(f"scores[{index}] is not finite: {float(self.scores[index])}")

    # ------------------------------------------------------------------ construction
    @classmethod
    def empty(
        cls,
        image_size: tuple[int, int] | None = None,
        device: torch.device | str | None = None,
        extras: Iterable[str] | Mapping[str, torch.dtype] = (),
        dtype: torch.dtype = torch.float32,
    ) -> Detections:
        """No detections; ``extras`` names keys to create as empty tensors (int64, or the dtypes given); boxes and
        scores of ``dtype`` (float32, or float64 as saved results are read)."""
        dtypes = extras if isinstance(extras, Mapping) else dict.fromkeys(extras, torch.int64)
        return cls(
            torch.zeros((0, 4), dtype=dtype, device=device),
            torch.zeros(0, dtype=dtype, device=device),
            torch.zeros(0, dtype=torch.int64, device=device),
            image_size,
            {key: torch.zeros(0, dtype=dtype, device=device) for key, dtype in dtypes.items()},
            check_values=False,
        )

    @classmethod
    def cat(cls, items: Sequence[Detections]) -> Detections:
        """Concatenate detections of the same image; all must share device, image size and extras keys."""
        if len(items) == 0:
            raise ValueError("Detections.cat needs at least one Detections")
        first = items[0]
        for i, item in enumerate(items[1:], start=1):
            if item.extras.keys() != first.extras.keys():
                raise ValueError(
                    f"Detections.cat: items[{i}] has extras {sorted(item.extras)}, items[0] has {sorted(first.extras)}"
                )
            if (
                item.image_size is not None
                and first.image_size is not None
                and item.image_size != first.image_size
            ):
                raise ValueError(
                    f"Detections.cat: items[{i}] has image_size {item.image_size}, items[0] has {first.image_size}"
                )
            if item.device != first.device:
                raise ValueError(
                    f"Detections.cat: items[{i}] is on {item.device}, items[0] on {first.device}"
                )
        image_size = next((item.image_size for item in items if item.image_size is not None), None)
        return cls(
            torch.cat([d.boxes for d in items]),
            torch.cat([d.scores for d in items]),
            torch.cat([d.labels for d in items]),
            image_size,
            {key: torch.cat([d.extras[key] for d in items]) for key in first.extras},
            check_values=False,
        )

    def replace(self, **fields: Any) -> Detections:
        """A copy with some fields replaced (``boxes``, ``scores``, ``labels``, ``image_size``, ``extras``)."""
        values = {
            "boxes": self.boxes,
            "scores": self.scores,
            "labels": self.labels,
            "image_size": self.image_size,
            "extras": self.extras,
        }
        unknown = set(fields) - set(values)
        if unknown:
            raise TypeError(f"Detections.replace: unknown fields {sorted(unknown)}; known: {sorted(values)}")
        values.update(fields)
        return Detections(**values, check_values="boxes" in fields or "scores" in fields)

    def with_extras(self, **extras: Tensor) -> Detections:
        """A copy with extra per-box tensors added or replaced."""
        return Detections(
            self.boxes,
            self.scores,
            self.labels,
            self.image_size,
            {**self.extras, **extras},
            check_values=False,
        )

    # ------------------------------------------------------------------ selection and devices
    def __len__(self) -> int:
        return int(self.boxes.shape[0])

    def __getitem__(self, index: _Index) -> Detections:
        """Select by boolean mask ``[N]``, integer index tensor or list, slice or single int."""
        if isinstance(index, int):
            index = slice(index, index + 1 if index != -1 else None)
        elif not isinstance(index, slice | Tensor):
            index = torch.as_tensor(np.asarray(index), device=self.device)
            if index.numel() == 0:
                index = index.long()
        if isinstance(index, Tensor):
            if index.dtype == torch.bool and index.shape != (len(self),):
                raise IndexError(f"boolean mask must have shape [{len(self)}], got {list(index.shape)}")
            index = index.to(self.device)
        return Detections(
            self.boxes[index],
            self.scores[index],
            self.labels[index],
            self.image_size,
            {key: value[index] for key, value in self.extras.items()},
            check_values=False,
        )

    @property
    def device(self) -> torch.device:
        return self.boxes.device

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Detections:
        """The same detections on ``device`` (no copy when already there)."""
        return Detections(
            self.boxes.to(device, non_blocking=non_blocking),
            self.scores.to(device, non_blocking=non_blocking),
            self.labels.to(device, non_blocking=non_blocking),
            self.image_size,
            {key: value.to(device, non_blocking=non_blocking) for key, value in self.extras.items()},
            check_values=False,
        )

    def cpu(self) -> Detections:
        return self.to("cpu")

    def sort_by_score(self, descending: bool = True) -> Detections:
        """Reordered by score (stable, so ties keep their order)."""
        order = torch.sort(self.scores, descending=descending, stable=True).indices
        return self[order]

    def clip(self, image_size: tuple[int, int] | None = None) -> Detections:
        """Boxes clipped to ``[0, width] x [0, height]`` of ``image_size`` (default: ``self.image_size``)."""
        size = image_size or self.image_size
        if size is None:
            raise ValueError("Detections.clip needs an image_size: none given and none stored")
        height, width = size
        limits = torch.tensor([width, height, width, height], dtype=self.boxes.dtype, device=self.device)
        boxes = torch.minimum(self.boxes.clamp(min=0), limits)
        return Detections(boxes, self.scores, self.labels, tuple(size), self.extras, check_values=False)

    @property
    def areas(self) -> Tensor:
        """Box areas ``[N]`` in square pixels."""
        from fusion.boxes import box_area  # torchvision: not loaded by ``import fusion``

        return box_area(self.boxes)

    def numpy(self) -> dict[str, Any]:
        """Plain numpy arrays: ``{"boxes", "scores", "labels", "image_size", **extras}``."""
        out: dict[str, Any] = {
            "boxes": self.boxes.detach().cpu().numpy(),
            "scores": self.scores.detach().cpu().numpy(),
            "labels": self.labels.detach().cpu().numpy(),
            "image_size": self.image_size,
        }
        out.update({key: value.detach().cpu().numpy() for key, value in self.extras.items()})
        return out

    # ------------------------------------------------------------------ comparison
    def mismatch(self, other: object, atol: float = 0.0, rtol: float = 0.0) -> str | None:
        """The first difference from ``other`` in words, or None when they are equal.

        Equal means: both :class:`Detections`, same length, ``image_size``, device, extras keys, and for every
        tensor (boxes, scores, labels, each extra) the same dtype and values. Floating-point tensors may differ by
        ``atol + rtol * |other|`` (exact by default, NaN never equal); integer and bool tensors must be identical.
        """
        if not isinstance(other, Detections):
            return f"other is a {type(other).__name__}, not Detections"
        if len(self) != len(other):
            return f"{len(self)} detections vs {len(other)}"
        if self.image_size != other.image_size:
            return f"image_size {self.image_size} vs {other.image_size}"
        if self.device != other.device:
            return f"device {self.device} vs {other.device}"
        if self.extras.keys() != other.extras.keys():
            return f"extras {sorted(self.extras)} vs {sorted(other.extras)}"
        fields = {"boxes": self.boxes, "scores": self.scores, "labels": self.labels}
        fields.update({f"extras[{key!r}]": value for key, value in self.extras.items()})
        theirs = {"boxes": other.boxes, "scores": other.scores, "labels": other.labels}
        theirs.update({f"extras[{key!r}]": value for key, value in other.extras.items()})
        for name, mine in fields.items():
            other_value = theirs[name]
            if mine.dtype != other_value.dtype or mine.shape != other_value.shape:
                return f"{name}: {mine.dtype} {list(mine.shape)} vs {other_value.dtype} {list(other_value.shape)}"
            if mine.is_floating_point() and (atol or rtol):
                same = torch.isclose(mine, other_value, rtol=rtol, atol=atol)
            else:
                same = mine == other_value
            if not bool(same.all()):
                row = int((~same).nonzero()[0, 0])
                return f"{name}[{row}]: {mine[row].tolist()} vs {other_value[row].tolist()}"
        return None

    def equal(self, other: object, atol: float = 0.0, rtol: float = 0.0) -> bool:
        """Whether ``other`` holds the same detections (see :meth:`mismatch`; floats within ``atol``/``rtol``)."""
        return self.mismatch(other, atol, rtol) is None

    def __eq__(self, other: object) -> bool:
        """Exact equality of every field (dtypes included); see :meth:`mismatch` for the first difference."""
        if not isinstance(other, Detections):
            return NotImplemented
        return self.mismatch(other) is None

    # Mutable containers of tensors compare by value, so they cannot be hashed (as lists cannot).
    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        extras = f", extras={sorted(self.extras)}" if self.extras else ""
        size = f", image_size={self.image_size}" if self.image_size else ""
        return f"Detections(n={len(self)}{size}, device={self.device}{extras})"
