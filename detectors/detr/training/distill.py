"""Teacher -> student knowledge distillation of DETR: class, box and encoder-feature terms on paired queries.

A student query learns from ONE teacher query:

* ``pairing: identity``: the same query index. Right when the student was cut from the teacher
  (:func:`~detectors.detr.training.student.build_student` keeps ``query_embed``, so query ``j`` of both starts
  as the same slot).
* ``pairing: hungarian`` (default; any student): a one-to-one assignment of student to teacher queries (all of
  them, background included, as DETRDistill does) minimising the :class:`HungarianMatcher` cost with the
  teacher's class probabilities as soft targets: ``w_class·(−p_s·p_t) + w_bbox·L1 + w_giou·(−GIoU)``
  (``p·p`` over object classes; with a one-hot ``p_t`` it is the matcher's ``−p_s[label]``).

Terms (names of the returned losses, already multiplied by their weight):

* ``kd_class``: softmax models: ``T²·KL(softmax(t/T) ‖ softmax(s/T))`` over all ``num_classes + 1`` logits
  (no-object included); sigmoid models: ``T²·Σ_c KL(Bern(σ(t_c/T)) ‖ Bern(σ(s_c/T)))`` (the BCE to the teacher's
  probabilities minus their entropy: the same gradient, and 0 when the student equals the teacher).
  Mean over paired queries.
* ``kd_bbox`` / ``kd_giou``: L1 and ``1 − GIoU`` of normalised cxcywh boxes, each pair weighted by the teacher's
  foreground probability (``1 − p(no-object)``, or the best sigmoid class) so that background queries' boxes
  do not dominate (DETRDistill); weighted mean.
* ``kd_<term>_<i>`` for decoder layer ``i`` when ``aux > 0`` (weight ``aux`` × the term's): student layer
  ``i`` learns from teacher layer ``i`` (both models' first layers, as a student cut from the first decoder
  layers holds them), for ``i`` below both models' last layer; the last layers always pair.
* ``kd_feature``: MSE between the student's encoder memory (through a learned 1x1 adapter when the widths
  differ) and the teacher's, over non-padding positions.

Settings (the ``weights`` mapping, unknown keys refused by name): ``gt`` (student's set loss on ground truth,
1), ``class`` (1), ``bbox`` (5), ``giou`` (2), ``feature`` (0 = off), ``aux`` (1), ``temperature`` (1),
``pairing`` (``hungarian``). A weight of 0 skips its term (no loss, no gradient).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import Tensor, nn
from torchvision.ops import box_convert, generalized_box_iou, generalized_box_iou_loss

from .matcher import HungarianMatcher

__all__ = [
    "DetrDistiller",
    "KDSettings",
    "box_kd",
    "capture_memory",
    "class_kd",
    "feature_kd",
    "pair_queries",
]

_PAIRINGS = ("identity", "hungarian")


@dataclass(frozen=True)
class KDSettings:
    """Weights and options of DETR distillation (see the module docstring; ``cls`` is the ``class`` key)."""

    gt: float = 1.0
    cls: float = 1.0
    bbox: float = 5.0
    giou: float = 2.0
    feature: float = 0.0
    aux: float = 1.0
    temperature: float = 1.0
    pairing: str = "hungarian"

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], where: str = "distill") -> KDSettings:
        """From config keys (``class`` for :attr:`cls`); unknown keys and bad values raise naming ``where``."""
        known = ["gt", "class", "bbox", "giou", "feature", "aux", "temperature", "pairing"]
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise ValueError(f"{where}: unknown distillation settings {unknown}; known: {known}")
        renamed = {("cls" if k == "class" else k): v for k, v in data.items()}
        for key, value in renamed.items():
            if key == "pairing":
                if value not in _PAIRINGS:
                    raise ValueError(f"{where}.pairing must be one of {list(_PAIRINGS)}, got {value!r}")
                continue
            name = "class" if key == "cls" else key
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                raise ValueError(f"{where}.{name} must be a finite number, got {value!r}")
            if value < 0 or (key == "temperature" and value == 0):
                raise ValueError(
                    f"{where}.{name} must be {'> 0' if key == 'temperature' else '>= 0'}, got {value}"
                )
        return cls(**{k: (v if k == "pairing" else float(v)) for k, v in renamed.items()})


def class_kd(student: Tensor, teacher: Tensor, classification: str, temperature: float = 1.0) -> Tensor:
    """Class-distribution KD of paired queries, mean over pairs (0 when ``student == teacher``).

    Args:
        student / teacher: Logits ``[N, K]`` of paired queries (teacher detached).
        classification: ``softmax`` (``K`` includes no-object) or ``sigmoid`` (independent classes).
        temperature: ``T``; the loss is scaled by ``T²`` so its gradient keeps its size (Hinton et al.).
    """
    if student.shape[0] == 0:
        return student.sum() * 0.0
    s, t = student.float() / temperature, teacher.float() / temperature
    if classification == "softmax":
        kl = F.kl_div(s.log_softmax(-1), t.log_softmax(-1), reduction="none", log_target=True)
    elif classification == "sigmoid":
        p = t.sigmoid()
        kl = p * (F.logsigmoid(t) - F.logsigmoid(s)) + (1 - p) * (F.logsigmoid(-t) - F.logsigmoid(-s))
    else:
        raise ValueError(f"classification must be 'softmax' or 'sigmoid', got {classification!r}")
    return kl.sum(-1).mean() * temperature**2


def foreground(logits: Tensor, classification: str) -> Tensor:
    """``[..., K]`` logits -> ``[...]`` probability that the query holds an object."""
    if classification == "softmax":
        return 1 - logits.float().softmax(-1)[..., -1]
    return logits.float().sigmoid().amax(-1)


def box_kd(student: Tensor, teacher: Tensor, weight: Tensor) -> tuple[Tensor, Tensor]:
    """Weighted mean L1 (summed over the 4 coordinates) and ``1 − GIoU`` of paired normalised cxcywh boxes.

    Args:
        student / teacher: ``[N, 4]`` boxes; ``weight``: ``[N]`` non-negative pair weights.
    """
    s, t = student.float(), teacher.float()
    total = weight.sum().clamp_min(torch.finfo(torch.float32).tiny)
    l1 = (F.l1_loss(s, t, reduction="none").sum(-1) * weight).sum() / total
    # eps far below float32 resolution: equal boxes give exactly 0 (the default 1e-7 would not).
    giou = generalized_box_iou_loss(
        box_convert(s, "cxcywh", "xyxy"), box_convert(t, "cxcywh", "xyxy"), eps=1e-30
    )
    return l1, (giou * weight).sum() / total


def feature_kd(student: Tensor, teacher: Tensor, valid: Tensor | None) -> Tensor:
    """MSE over valid positions and channels: ``student``/``teacher`` ``[B, S, d]``, ``valid`` bool ``[B, S]``."""
    if student.shape != teacher.shape:
        raise ValueError(
            f"feature imitation needs memories of the same shape, student {list(student.shape)} vs teacher "
            f"{list(teacher.shape)} (same backbone stride and feature levels)"
        )
    sq = (student.float() - teacher.float()).pow(2).mean(-1)
    if valid is None:
        return sq.mean()
    return (sq * valid).sum() / valid.sum().clamp_min(1)


@torch.no_grad()
def pair_queries(
    student: Mapping[str, Tensor],
    teacher: Mapping[str, Tensor],
    classification: str,
    matcher: HungarianMatcher,
) -> list[tuple[Tensor, Tensor]]:
    """Per image ``(student query indices, teacher query indices)`` of the Hungarian soft-target pairing.

    Args:
        student / teacher: ``{"pred_logits" [B, Q, K], "pred_boxes" [B, Q, 4]}`` (Q may differ).
        classification: ``softmax`` or ``sigmoid``.
        matcher: Its ``cost_class`` / ``cost_bbox`` / ``cost_giou`` weigh the cost.
    """
    batch = student["pred_logits"].shape[0]
    p_s, p_t = (_object_probs(out["pred_logits"], classification) for out in (student, teacher))
    b_s, b_t = student["pred_boxes"].float(), teacher["pred_boxes"].float()
    cost = matcher.cost_class * -(p_s @ p_t.transpose(1, 2)) + matcher.cost_bbox * torch.cdist(b_s, b_t, p=1)
    pairs = []
    for image in range(batch):  # GIoU per image: [Qs, Qt], not the [B·Qs, B·Qt] of all images
        giou = generalized_box_iou(
            box_convert(b_s[image], "cxcywh", "xyxy"), box_convert(b_t[image], "cxcywh", "xyxy")
        )
        rows, cols = linear_sum_assignment((cost[image] - matcher.cost_giou * giou).cpu().numpy())
        pairs.append((torch.as_tensor(rows, dtype=torch.int64), torch.as_tensor(cols, dtype=torch.int64)))
    return pairs


def _object_probs(logits: Tensor, classification: str) -> Tensor:
    """``[B, Q, C]`` probabilities of the object classes (softmax without its no-object column, or sigmoid)."""
    if classification == "softmax":
        return logits.float().softmax(-1)[..., :-1]
    return logits.float().sigmoid()


@contextlib.contextmanager
def capture_memory(model: nn.Module, enabled: bool = True) -> Iterator[dict[str, Tensor | None]]:
    """Record the encoder memory ``[B, S, d]`` and its padding mask of the forward passes inside the block.

    The memory is the last encoder layer's output; ``valid`` is ``~key_padding_mask`` (the bool ``[B, S]``
    input of that layer) or None without padding. Works for every encoder whose layers take the memory
    first and a bool key padding mask among their inputs (dense and deformable DETR).
    """
    record: dict[str, Tensor | None] = {}
    if not enabled:
        yield record
        return
    encoder = model.transformer.encoder
    layers = getattr(encoder, "layers", encoder)
    if len(layers) == 0:
        raise ValueError("feature imitation needs an encoder layer (enc_layers >= 1)")

    def hook(_module: nn.Module, args: tuple[Any, ...], output: Tensor) -> None:
        shape = tuple(output.shape[:2])
        masks = [
            a for a in args if isinstance(a, Tensor) and a.dtype == torch.bool and tuple(a.shape) == shape
        ]
        record["memory"] = output
        record["valid"] = ~masks[0] if masks else None

    handle = layers[-1].register_forward_hook(hook)
    try:
        yield record
    finally:
        handle.remove()


class DetrDistiller(nn.Module):
    """The KD terms of a student's outputs against a teacher's (weighted; see the module docstring).

    Args:
        settings: Weights and options.
        classification: ``softmax`` or ``sigmoid`` (student and teacher must agree).
        matcher: Cost weights of Hungarian pairing.
        student_width / teacher_width: Encoder widths; the 1x1 adapter exists only when feature imitation is
            on and they differ (its parameters then train with the student).
    """

    def __init__(
        self,
        settings: KDSettings,
        classification: str,
        matcher: HungarianMatcher,
        student_width: int,
        teacher_width: int,
    ) -> None:
        super().__init__()
        self.settings, self.classification, self.matcher = settings, classification, matcher
        self.adapter: nn.Module = (
            nn.Linear(student_width, teacher_width)
            if settings.feature > 0 and student_width != teacher_width
            else nn.Identity()
        )

    def forward(
        self,
        student: Mapping[str, Any],
        teacher: Mapping[str, Any],
        student_memory: Mapping[str, Tensor | None] | None = None,
        teacher_memory: Mapping[str, Tensor | None] | None = None,
    ) -> dict[str, Tensor]:
        """Weighted KD losses ``kd_class``, ``kd_bbox``, ``kd_giou`` (+ ``_<i>`` per earlier layer), ``kd_feature``."""
        cfg = self.settings
        losses: dict[str, Tensor] = {}
        for suffix, s_out, t_out, scale in self._layer_pairs(student, teacher):
            for name, value in self._layer_terms(s_out, t_out).items():
                losses[f"{name}{suffix}"] = value * scale
        if cfg.feature > 0:
            if not student_memory or not teacher_memory:
                raise ValueError("feature imitation is on but no encoder memory was captured")
            adapted = self.adapter(student_memory["memory"])
            losses["kd_feature"] = cfg.feature * feature_kd(
                adapted, teacher_memory["memory"], teacher_memory["valid"]
            )
        return losses

    def _layer_pairs(
        self, student: Mapping[str, Any], teacher: Mapping[str, Any]
    ) -> list[tuple[str, Mapping[str, Tensor], Mapping[str, Tensor], float]]:
        pairs: list[tuple[str, Mapping[str, Tensor], Mapping[str, Tensor], float]] = [
            ("", student, teacher, 1.0)
        ]
        if self.settings.aux > 0:
            aux_s: Sequence[Mapping[str, Tensor]] = student.get("aux_outputs", [])
            aux_t: Sequence[Mapping[str, Tensor]] = teacher.get("aux_outputs", [])
            pairs += [(f"_{i}", s, t, self.settings.aux) for i, (s, t) in enumerate(zip(aux_s, aux_t))]
        return pairs

    def _layer_terms(self, student: Mapping[str, Tensor], teacher: Mapping[str, Tensor]) -> dict[str, Tensor]:
        cfg = self.settings
        if not any(w > 0 for w in (cfg.cls, cfg.bbox, cfg.giou)):
            return {}
        s_logits, t_logits = student["pred_logits"], teacher["pred_logits"].detach()
        if s_logits.shape[-1] != t_logits.shape[-1]:
            raise ValueError(
                f"student has {s_logits.shape[-1]} class logits but the teacher {t_logits.shape[-1]}: "
                "distill between models of the same vocabulary and classification"
            )
        b, i_s, i_t = self._pairs(student, teacher)
        terms: dict[str, Tensor] = {}
        if cfg.cls > 0:
            terms["kd_class"] = cfg.cls * class_kd(
                s_logits[b, i_s], t_logits[b, i_t], self.classification, cfg.temperature
            )
        if cfg.bbox > 0 or cfg.giou > 0:
            weight = foreground(t_logits[b, i_t], self.classification)
            l1, giou = box_kd(student["pred_boxes"][b, i_s], teacher["pred_boxes"].detach()[b, i_t], weight)
            if cfg.bbox > 0:
                terms["kd_bbox"] = cfg.bbox * l1
            if cfg.giou > 0:
                terms["kd_giou"] = cfg.giou * giou
        return terms

    def _pairs(
        self, student: Mapping[str, Tensor], teacher: Mapping[str, Tensor]
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Flat ``(image, student query, teacher query)`` indices of every pair, on the outputs' device."""
        device = student["pred_logits"].device
        batch, q_s = student["pred_logits"].shape[:2]
        q_t = teacher["pred_logits"].shape[1]
        if self.settings.pairing == "identity":
            if q_s != q_t:
                raise ValueError(
                    f"pairing 'identity' needs as many student queries as teacher queries ({q_s} vs {q_t}); "
                    "use pairing 'hungarian'"
                )
            b = torch.arange(batch, device=device).repeat_interleave(q_s)
            q = torch.arange(q_s, device=device).repeat(batch)
            return b, q, q
        pairs = pair_queries(student, teacher, self.classification, self.matcher)
        b = torch.cat([torch.full_like(src, i) for i, (src, _) in enumerate(pairs)]).to(device)
        return b, torch.cat([s for s, _ in pairs]).to(device), torch.cat([t for _, t in pairs]).to(device)
