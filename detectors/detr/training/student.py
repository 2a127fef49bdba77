"""Cut a smaller DETR out of a trained one: keep chosen layers, prune heads and FFN units, transfer the weights.

What is kept (a :class:`StudentPlan`):

* **Layers**: the listed encoder and decoder layers (an int ``k`` means the first ``k``). Keeping the FIRST
  decoder layers gives a working detector at once: DETR's auxiliary losses train every decoder layer's
  ``decoder.norm(output)`` to feed the shared heads.
* **Heads** (per attention module): a data-free magnitude score of how much each head can contribute to the
  module's output, ``importance(h) = ||W_v[h]||_F · ||W_o[:, h]||_F`` — the value projection rows of head ``h``
  times the output projection columns that read them. The ``num_heads`` highest-scoring heads are kept, in
  their original order (so a plan keeping all heads is the identity).
* **FFN units** (per layer): ``importance(j) = ||W_1[j, :]||_2 · ||W_2[:, j]||_2``, top ``dim_feedforward`` kept.
* **Backbone**: copied when the student uses the teacher's backbone; a different backbone (e.g. resnet18) and
  the ``input_proj`` reading it start fresh (load ImageNet weights separately, then distill).

Everything else (norms, ``query_embed``, ``class_embed``, ``bbox_embed``, ``decoder.norm``) is copied as is.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from ..model import DETR, build_detr
from ..transformer import MultiheadAttention

__all__ = ["StudentPlan", "build_student", "ffn_importance", "head_importance", "plan_student"]


@dataclass
class StudentPlan:
    """Which parts of the teacher the student keeps.

    Attributes:
        encoder_layers / decoder_layers: Teacher layer indices kept, in order.
        heads: ``{attention module name in the TEACHER: kept head indices}`` (all attention modules of kept layers).
        ffn_units: ``{FFN layer prefix in the TEACHER: kept hidden-unit indices}``.
        num_heads / dim_feedforward / backbone: The student's architecture.
    """

    encoder_layers: list[int]
    decoder_layers: list[int]
    num_heads: int
    dim_feedforward: int
    backbone: str
    heads: dict[str, list[int]] = field(default_factory=dict)
    ffn_units: dict[str, list[int]] = field(default_factory=dict)


def head_importance(attn: MultiheadAttention) -> Tensor:
    """``[H]``: ``||W_v[h]||_F · ||W_o[:, h]||_F`` of every head (see the module docstring)."""
    inner, d = attn.num_heads * attn.head_dim, attn.head_dim
    w_v = attn.in_proj_weight[2 * inner :].detach().view(attn.num_heads, d, -1)
    w_o = attn.out_proj.weight.detach().view(-1, attn.num_heads, d)
    return w_v.flatten(1).norm(dim=1) * w_o.transpose(0, 1).flatten(1).norm(dim=1)


def ffn_importance(linear1: torch.nn.Linear, linear2: torch.nn.Linear) -> Tensor:
    """``[F]``: ``||W_1[j]|| · ||W_2[:, j]||`` of every hidden unit."""
    return linear1.weight.detach().norm(dim=1) * linear2.weight.detach().norm(dim=0)


def _top(scores: Tensor, k: int) -> list[int]:
    return sorted(torch.topk(scores, k).indices.tolist())


def _layers(spec: int | Sequence[int], total: int, what: str) -> list[int]:
    layers = list(range(spec)) if isinstance(spec, int) else [int(i) for i in spec]
    if not layers and what == "decoder":
        raise ValueError("a student needs at least one decoder layer")
    bad = [i for i in layers if not 0 <= i < total]
    if bad or len(set(layers)) != len(layers) or layers != sorted(layers):
        raise ValueError(f"{what}_layers must be distinct increasing indices in 0..{total - 1}, got {layers}")
    return layers


def plan_student(
    teacher: DETR,
    encoder_layers: int | Sequence[int] = 4,
    decoder_layers: int | Sequence[int] = 3,
    num_heads: int | None = None,
    dim_feedforward: int | None = None,
    backbone: str | None = None,
) -> StudentPlan:
    """Decide what a student keeps (defaults: first 4 encoder / first 3 decoder layers, all heads and units)."""
    cfg = teacher.config
    if cfg.deformable:
        raise ValueError(
            "cutting keeps layers, heads and FFN units of the dense DETR layout; this teacher is deformable "
            "(e.g. detr_fast_r18): give the student as `model:` (any DETR config) with `pairing: hungarian`"
        )
    heads = cfg.num_heads if num_heads is None else num_heads
    ffn = cfg.dim_feedforward if dim_feedforward is None else dim_feedforward
    if not 1 <= heads <= cfg.num_heads:
        raise ValueError(f"num_heads must be in 1..{cfg.num_heads} (the teacher's), got {heads}")
    if not 1 <= ffn <= cfg.dim_feedforward:
        raise ValueError(f"dim_feedforward must be in 1..{cfg.dim_feedforward} (the teacher's), got {ffn}")
    plan = StudentPlan(
        _layers(encoder_layers, cfg.enc_layers, "encoder"),
        _layers(decoder_layers, cfg.dec_layers, "decoder"),
        heads,
        ffn,
        backbone or cfg.backbone,
    )
    for kind, kept, attns in (
        ("encoder", plan.encoder_layers, ("self_attn",)),
        ("decoder", plan.decoder_layers, ("self_attn", "multihead_attn")),
    ):
        for i in kept:
            layer = getattr(teacher.transformer, kind).layers[i]
            prefix = f"transformer.{kind}.layers.{i}"
            for name in attns:
                plan.heads[f"{prefix}.{name}"] = _top(head_importance(getattr(layer, name)), heads)
            plan.ffn_units[prefix] = _top(ffn_importance(layer.linear1, layer.linear2), ffn)
    return plan


def _attn_rows(kept: list[int], head_dim: int, inner: int) -> Tensor:
    """Rows of ``in_proj_weight`` (q, k, v blocks) belonging to the kept heads."""
    per_head = torch.cat([torch.arange(h * head_dim, (h + 1) * head_dim) for h in kept])
    return torch.cat([per_head + block * inner for block in range(3)])


@torch.no_grad()
def build_student(teacher: DETR, plan: StudentPlan | None = None, **plan_kwargs: object) -> DETR:
    """A student DETR holding the teacher's kept weights exactly (see :func:`plan_student` for ``plan_kwargs``)."""
    plan = plan or plan_student(teacher, **plan_kwargs)  # type: ignore[arg-type]
    cfg = teacher.config
    head_dim = cfg.head_dim or cfg.d_model // cfg.num_heads
    student_cfg = dataclasses.replace(
        cfg,
        enc_layers=len(plan.encoder_layers),
        dec_layers=len(plan.decoder_layers),
        num_heads=plan.num_heads,
        head_dim=None if plan.num_heads * head_dim == cfg.d_model else head_dim,
        dim_feedforward=plan.dim_feedforward,
        backbone=plan.backbone,
    )
    student = build_detr(student_cfg)
    source = teacher.state_dict()
    target = student.state_dict()
    inner = cfg.num_heads * head_dim
    new: dict[str, Tensor] = {}
    renames = {
        f"transformer.encoder.layers.{t}.": f"transformer.encoder.layers.{s}."
        for s, t in enumerate(plan.encoder_layers)
    }
    renames |= {
        f"transformer.decoder.layers.{t}.": f"transformer.decoder.layers.{s}."
        for s, t in enumerate(plan.decoder_layers)
    }
    for key, value in source.items():
        if key.startswith(("transformer.encoder.layers.", "transformer.decoder.layers.")):
            prefix = ".".join(key.split(".")[:4]) + "."
            if prefix not in renames:
                continue  # a dropped layer
            module, param = key[len(prefix) :].rsplit(".", 1)
            layer_prefix = prefix[:-1]
            if module in ("self_attn", "multihead_attn"):
                rows = _attn_rows(plan.heads[f"{layer_prefix}.{module}"], head_dim, inner)
                value = value[rows]
            elif module == "self_attn.out_proj" or module == "multihead_attn.out_proj":
                if param == "weight":
                    cols = _attn_rows(plan.heads[f"{layer_prefix}.{module.split('.')[0]}"], head_dim, inner)
                    value = value[:, cols[: len(cols) // 3]]
            elif module == "linear1":
                value = value[plan.ffn_units[layer_prefix]]
            elif module == "linear2" and param == "weight":
                value = value[:, plan.ffn_units[layer_prefix]]
            key = renames[prefix] + key[len(prefix) :]
        elif plan.backbone != cfg.backbone and key.startswith(("backbone.", "input_proj.")):
            continue  # a different backbone: keep the student's fresh weights
        new[key] = value.clone()
    for key, value in new.items():
        if target[key].shape != value.shape:
            raise RuntimeError(
                f"student transfer: {key} has shape {list(value.shape)}, expected {list(target[key].shape)}"
            )
    missing = set(target) - set(new)
    expected_missing = (
        {k for k in target if k.startswith(("backbone.", "input_proj."))}
        if plan.backbone != cfg.backbone
        else set()
    )
    if missing != expected_missing:
        raise RuntimeError(f"student transfer left {sorted(missing - expected_missing)[:5]} uninitialised")
    student.load_state_dict(new, strict=False)
    return student
