"""``fuse`` and ``fuse_batch``: merge ensemble members' detections with a policy chosen by name."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from fusion.detections import Detections
from fusion.policy import FusionPolicy, PolicyParams, build_params
from fusion.registry import POLICIES

__all__ = ["fuse", "fuse_batch", "make_policy"]


def make_policy(
    policy: str | Mapping[str, Any] | PolicyParams | FusionPolicy = "wbf", **params: Any
) -> FusionPolicy:
    """Build a policy from a registered name, a ``{"type": name, ...}`` mapping, validated params or an instance.

    Raises:
        UnknownNameError: the policy name is not registered (the message names the closest one).
        PolicyParamsError (a ``ValueError``): a parameter is unknown (the message lists the known ones), out of
            range, or ``type`` names another policy than ``policy``.
    """
    if isinstance(policy, FusionPolicy):
        return policy if not params else type(policy)(policy.params, **params)
    if isinstance(policy, PolicyParams):
        return POLICIES.get(policy.type)(policy, **params)
    if isinstance(policy, Mapping):
        params = {**{k: v for k, v in policy.items() if k != "type"}, **params}
        policy = policy.get("type", "wbf")
    cls = POLICIES.get(str(policy))
    return cls(build_params(cls.Params, cls.name, params))


def fuse(per_member: Sequence[Detections], policy: Any = "wbf", **params: Any) -> Detections:
    """Fuse the members' detections of ONE image.

    Args:
        per_member: One :class:`Detections` per member, pixel xyxy boxes.
        policy: A registered policy name (``fusion list policies``), a mapping with ``type``, or a policy.
        **params: The policy's parameters, e.g. ``weights=[2, 1], iou_thr=0.6``.

    Returns:
        The fused detections, sorted by score, with ``extras["votes"]``.
    """
    return make_policy(policy, **params).fuse(per_member)


def fuse_batch(
    per_image: Sequence[Sequence[Detections]], policy: Any = "wbf", **params: Any
) -> list[Detections]:
    """Fuse many images at once (``per_image[i][m]``); equals ``[fuse(x) for x in per_image]``, but batched."""
    return make_policy(policy, **params).fuse_batch(per_image)
