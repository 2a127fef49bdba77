"""The contract every fusion policy implements, and the parameters they share.

A policy merges the detections of several ensemble members on the same image into one detection set. Policies live
in the top-level ``policies`` package and are found by name through :data:`fusion.registry.POLICIES`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, ValidationError

from fusion.detections import Detections

__all__ = ["FusionPolicy", "PolicyParams", "PolicyParamsError", "build_params"]


class PolicyParamsError(ValueError):
    """Policy parameters that do not validate: unknown names (the message lists the known ones), values out of
    range, or a ``type`` that names another policy."""


class PolicyParams(BaseModel):
    """Parameters common to all policies; each policy subclasses this with ``type: Literal["<name>"]``.

    Attributes:
        type: The registered policy name (the discriminator in ensemble configs).
        weights: Per-member weights ``[M]``, or per-member x per-class weights ``[M][C]``; ``None`` = all 1.
            Negative weights are an error.
        class_agnostic: Fuse boxes of different labels together (the fused label is the label of the
            highest-scoring box of the cluster); default False fuses within each label.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: str
    weights: list[float] | list[list[float]] | None = None
    class_agnostic: bool = False

    def check_members(self, member_weights: Sequence[float], where: str = "fusion") -> None:
        """Refuse parameters that cannot work with these members (called at ensemble config validation).

        Args:
            member_weights: The fusion weight of each member, in member order.
            where: Where the parameters come from, for the message.

        Raises:
            PolicyParamsError: a parameter that no output could satisfy with these members (none by default).
        """


def build_params(cls: type[PolicyParams], name: str, values: Mapping[str, Any]) -> PolicyParams:
    """``cls(type=name, **values)`` with one clear message for every problem.

    Raises:
        PolicyParamsError: ``type`` naming another policy, unknown parameters (listing the known ones), or values
            of the wrong type or out of range (naming parameter, constraint and value).
    """
    if "type" in values and values["type"] != name:
        raise PolicyParamsError(
            f"policy {name!r}: parameter type={values['type']!r} names another policy; choose the policy by its "
            f"name instead of passing type"
        )
    try:
        return cls(**{**values, "type": name})
    except ValidationError as error:
        known = ", ".join(k for k in cls.model_fields if k != "type")
        problems: dict[str, list[str]] = {}  # parameter -> what is wrong (a union gives one line per member)
        for item in error.errors():
            field = str(item["loc"][0]) if item["loc"] else "?"
            if item["type"] == "extra_forbidden":
                problems[field] = [f"unknown parameter {field!r} (known: {known})"]
            else:
                problems.setdefault(field, []).append(item["msg"])
        lines = [
            text[0]
            if text[0].startswith("unknown")
            else f"{field}={values.get(field)!r}: " + " or ".join(text)
            for field, text in problems.items()
        ]
        raise PolicyParamsError(f"policy {name!r}: " + "; ".join(lines)) from None


class FusionPolicy(ABC):
    """A fusion policy: ``fuse_batch(per_image) -> list[Detections]``.

    Input ``per_image[i][m]`` is the :class:`Detections` of member ``m`` on image ``i`` in pixel xyxy coordinates;
    every image has the same number of members ``M``. Output: one :class:`Detections` per image, sorted by score
    (descending), with ``extras["votes"]`` (int64) = number of distinct members in each fused cluster.

    Tie rule (every policy): boxes are ranked by ``score * weight`` descending, and equal values keep the input
    order -- the lower member index first, then the member's earlier box -- as if the earlier box scored a hair
    higher; fused detections with equal scores come out in the order of their first boxes. ensemble-boxes leaves
    ties to numpy's unstable sort, so parity with it is claimed on inputs without tied scores only.
    """

    name: ClassVar[str]
    Params: ClassVar[type[PolicyParams]]

    def __init__(self, params: PolicyParams | None = None, **kwargs: Any) -> None:
        if params is None:
            params = build_params(self.Params, self.name, kwargs)
        elif kwargs:  # validated again as a whole: an update must not slip past the ranges
            params = build_params(self.Params, self.name, {**params.model_dump(exclude={"type"}), **kwargs})
        self.params = params

    @abstractmethod
    def fuse_batch(self, per_image: Sequence[Sequence[Detections]]) -> list[Detections]:
        """Fuse every image; ``per_image[i][m]`` -> one fused :class:`Detections` per image."""

    def fuse(self, per_member: Sequence[Detections]) -> Detections:
        """Fuse one image: one :class:`Detections` per member -> the fused :class:`Detections`."""
        return self.fuse_batch([per_member])[0]

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in self.params.model_dump(exclude={"type"}).items())
        return f"{type(self).__name__}({fields})"
