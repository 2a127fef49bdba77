"""The contract every fusion policy implements, and the parameters they share.

A policy merges the detections of several ensemble members on the same image into one detection set. Policies live
in the top-level ``policies`` package and are found by name through :data:`fusion.registry.POLICIES`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict

from fusion.detections import Detections

__all__ = ["FusionPolicy", "PolicyParams"]


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


class FusionPolicy(ABC):
    """A fusion policy: ``fuse_batch(per_image) -> list[Detections]``.

    Input ``per_image[i][m]`` is the :class:`Detections` of member ``m`` on image ``i`` in pixel xyxy coordinates;
    every image has the same number of members ``M``. Output: one :class:`Detections` per image, sorted by score
    (descending), with ``extras["votes"]`` (int64) = number of distinct members in each fused cluster.
    """

    name: ClassVar[str]
    Params: ClassVar[type[PolicyParams]]

    def __init__(self, params: PolicyParams | None = None, **kwargs: Any) -> None:
        if params is None:
            params = self.Params(type=self.name, **kwargs)
        elif kwargs:
            params = params.model_copy(update=kwargs)
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
