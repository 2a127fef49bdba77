"""Input checking, flattening of ``per_image[i][m]`` into one batch, weights handling, and output assembly.

Every policy starts from :func:`flatten`: the detections of all images and members are concatenated once into flat
float64 tensors (float64 so that IoU comparisons against the threshold agree with ensemble-boxes, which works in
float64), tagged with their image and member index, so the policies can work on all images at once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from fusion.detections import Detections

__all__ = ["Batch", "assemble", "flatten", "group_keys"]


@dataclass
class Batch:
    """All boxes of a ``fuse_batch`` call, flat.

    Attributes:
        boxes: float64 ``[N, 4]`` xyxy pixels.
        scores: float64 ``[N]`` raw member scores.
        labels: int64 ``[N]``.
        image: int64 ``[N]`` image index of each box.
        member: int64 ``[N]`` member index of each box.
        weight: float64 ``[N]`` the weight of each box's member (for the box's label when weights are per class).
        table: float64 ``[M, C]`` weights (``[M, 1]`` when weights are per member only).
        n_images: Number of images ``I``.
        n_members: Number of members ``M``.
        image_sizes: ``image_size`` of each image (first one given by a member), or None.
        device: Where the inputs live; all work happens there.
        out_dtype: dtype of the fused boxes and scores: float64 when any input is float64, else float32.
    """

    boxes: Tensor
    scores: Tensor
    labels: Tensor
    image: Tensor
    member: Tensor
    weight: Tensor
    table: Tensor
    n_images: int
    n_members: int
    image_sizes: list[tuple[int, int] | None]
    device: torch.device
    per_class: bool = False
    out_dtype: torch.dtype = torch.float32

    def __len__(self) -> int:
        return int(self.boxes.shape[0])

    def class_weights(self, labels: Tensor) -> Tensor:
        """Member weights for each of ``labels`` ``[K]``: float64 ``[K, M]``."""
        if not self.per_class:
            return self.table[:, 0].expand(labels.shape[0], -1)
        return self.table[:, labels].T

    def select(self, mask: Tensor) -> Batch:
        """The boxes where ``mask`` ``[N]`` is True (images, members and weights unchanged)."""
        return Batch(
            self.boxes[mask],
            self.scores[mask],
            self.labels[mask],
            self.image[mask],
            self.member[mask],
            self.weight[mask],
            self.table,
            self.n_images,
            self.n_members,
            self.image_sizes,
            self.device,
            self.per_class,
            self.out_dtype,
        )

    def total_weights(self, labels: Tensor) -> Tensor:
        """``Σ_m w_m`` for each of ``labels`` ``[K]``, float64 ``[K]``, summed by numpy as ensemble-boxes sums it
        (``weights.sum()``), so that scores divided by it agree with ensemble-boxes to the last bit."""
        totals = torch.from_numpy(self.table.cpu().numpy().sum(axis=0)).to(self.device)
        return totals[labels] if self.per_class else totals[0].expand(labels.shape[0])


def _weights_table(
    weights: list[float] | list[list[float]] | None, n_members: int, device: torch.device
) -> Tensor:
    if weights is None:
        return torch.ones((n_members, 1), dtype=torch.float64, device=device)
    if len(weights) != n_members:
        raise ValueError(
            f"weights has {len(weights)} entries but {n_members} members were given: one weight per member"
        )
    if len(weights) > 0 and isinstance(weights[0], list):
        lengths = {len(row) for row in weights}  # type: ignore[arg-type]
        if len(lengths) != 1:
            raise ValueError(
                f"per-class weights [M][C] must have the same C for every member, got lengths {lengths}"
            )
        table = torch.tensor(weights, dtype=torch.float64, device=device)
    else:
        table = torch.tensor(weights, dtype=torch.float64, device=device).reshape(n_members, 1)
    if table.numel() and not bool(torch.isfinite(table).all()):
        raise ValueError(f"weights must be finite, got {weights}")
    if table.numel() and bool((table < 0).any()):
        member = int((table < 0).nonzero()[0, 0])
        raise ValueError(f"weights must be >= 0, member {member} has a negative weight: {weights[member]}")
    return table


def flatten(
    per_image: Sequence[Sequence[Detections]], weights: list[float] | list[list[float]] | None
) -> Batch:
    """Check ``per_image[i][m]`` and concatenate it into a :class:`Batch`.

    Raises:
        ValueError: images with different numbers of members, weights that do not match the members (count,
            negative, per-class table too narrow for a label), all-zero weights, members on different devices or
            with different image sizes, non-finite or inverted boxes, non-finite or negative scores.
    """
    if len(per_image) == 0:
        return _empty_batch(weights)
    n_members, device, image_sizes = _check_members(per_image)
    table = _weights_table(weights, n_members, device)
    if float(table.sum()) <= 0:
        raise ValueError(f"weights must not all be zero, got {weights}")

    flat = [det for members in per_image for det in members]
    counts = torch.tensor([len(det) for det in flat], device=device)
    boxes = torch.cat([det.boxes for det in flat]).to(torch.float64)
    scores = torch.cat([det.scores for det in flat]).to(torch.float64)
    labels = torch.cat([det.labels for det in flat])
    slot = torch.repeat_interleave(torch.arange(len(flat), device=device), counts)
    image = slot // n_members
    member = slot % n_members
    per_class = weights is not None and len(weights) > 0 and isinstance(weights[0], list)
    _check_values(boxes, scores, labels, image, member, table if per_class else None)
    weight = table[member, labels] if per_class else table[member, 0]
    wide = any(det.boxes.dtype == torch.float64 for det in flat)
    return Batch(
        boxes,
        scores,
        labels,
        image,
        member,
        weight,
        table,
        len(per_image),
        n_members,
        image_sizes,
        device,
        per_class,
        torch.float64 if wide else torch.float32,
    )


def _empty_batch(weights: list[float] | list[list[float]] | None) -> Batch:
    """The batch of no images (on the CPU); the weights are still checked."""
    table = _weights_table(weights, len(weights) if weights is not None else 0, torch.device("cpu"))
    empty = torch.zeros(0, dtype=torch.float64)
    return Batch(
        empty.reshape(0, 4),
        empty,
        empty.long(),
        empty.long(),
        empty.long(),
        empty,
        table,
        0,
        0,
        [],
        empty.device,
    )


def _check_members(
    per_image: Sequence[Sequence[Detections]],
) -> tuple[int, torch.device, list[tuple[int, int] | None]]:
    """Check that every image has the same members, all :class:`Detections` on one device, and that the members
    of an image agree on its size.

    Returns:
        The number of members, their device, and each image's ``image_size`` (the first one a member gives).
    """
    n_members = len(per_image[0])
    if n_members == 0:
        raise ValueError("per_image[0] has no members: give one Detections per member (possibly empty)")
    image_sizes: list[tuple[int, int] | None] = []
    device = None
    for i, members in enumerate(per_image):
        if len(members) != n_members:
            raise ValueError(
                f"per_image[{i}] has {len(members)} members but per_image[0] has {n_members}: every image needs "
                "one Detections per member"
            )
        size = None
        for m, det in enumerate(members):
            if not isinstance(det, Detections):
                raise ValueError(f"per_image[{i}][{m}] is a {type(det).__name__}, expected Detections")
            if device is None:
                device = det.device
            elif det.device != device:
                raise ValueError(f"per_image[{i}][{m}] is on {det.device}, other members on {device}")
            if det.image_size is not None:
                if size is not None and det.image_size != size:
                    raise ValueError(
                        f"per_image[{i}][{m}] has image_size {det.image_size}, an earlier member of that image {size}"
                    )
                size = det.image_size
        image_sizes.append(size)
    assert device is not None
    return n_members, device, image_sizes


def _check_values(
    boxes: Tensor, scores: Tensor, labels: Tensor, image: Tensor, member: Tensor, table: Tensor | None
) -> None:
    if boxes.shape[0] == 0:
        return
    problems = (
        (~torch.isfinite(boxes).all(dim=1), "has a non-finite box"),
        (
            (boxes[:, 2] < boxes[:, 0]) | (boxes[:, 3] < boxes[:, 1]),
            "has an inverted box (need x2 >= x1, y2 >= y1)",
        ),
        (~torch.isfinite(scores), "has a non-finite score"),
        (scores < 0, "has a negative score (fusion needs scores >= 0)"),
        (labels < 0, "has a negative label"),
    )
    bad_any = torch.stack([bad.any() for bad, _ in problems]).tolist()
    for (bad, what), found in zip(problems, bad_any):
        if found:
            j = int(bad.nonzero()[0])
            # the box's index inside its member's Detections
            first = int(((image == image[j]) & (member == member[j])).nonzero()[0])
            raise ValueError(
                f"per_image[{int(image[j])}][{int(member[j])}] {what} at index {j - first}: "
                f"box {boxes[j].tolist()}, score {float(scores[j])}"
            )
    if table is not None and int(labels.max()) >= table.shape[1]:
        raise ValueError(
            f"per-class weights cover {table.shape[1]} classes but a box has label {int(labels.max())}: "
            "give weights [M][C] with C > every label"
        )


def group_keys(batch: Batch, class_agnostic: bool) -> Tensor:
    """int64 ``[N]`` key of each box's fusion group: (image, label), or the image when class-agnostic."""
    if class_agnostic or len(batch) == 0:
        return batch.image.clone()
    n_labels = int(batch.labels.max()) + 1
    return batch.image * n_labels + batch.labels


def assemble(
    batch: Batch,
    image: Tensor,
    boxes: Tensor,
    scores: Tensor,
    labels: Tensor,
    votes: Tensor,
    tiebreak: Tensor,
) -> list[Detections]:
    """Split fused results ``[K]`` (image index, boxes xyxy, scores, labels, votes) into one sorted
    :class:`Detections` per image, carrying each image's ``image_size``.

    Order: score descending; equal scores by ``tiebreak`` ascending (int64 ``[K]``: the flat batch index of each
    result's first box, so member order, then each member's input order).
    """
    order = torch.sort(tiebreak, stable=True).indices
    order = order[torch.sort(scores[order], descending=True, stable=True).indices]
    order = order[torch.sort(image[order], stable=True).indices]
    counts = (
        torch.bincount(image, minlength=batch.n_images).tolist() if image.numel() else [0] * batch.n_images
    )
    parts = zip(
        torch.split(boxes[order].to(batch.out_dtype), counts),
        torch.split(scores[order].to(batch.out_dtype), counts),
        torch.split(labels[order], counts),
        torch.split(votes[order].to(torch.int64), counts),
    )
    return [
        Detections(b, s, l, size, {"votes": v}, check_values=False)
        for (b, s, l, v), size in zip(parts, batch.image_sizes)
    ]
