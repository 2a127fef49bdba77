"""The facebookresearch/detr checkpoint layout (state-dict key -> shape), written from the official code's rules.

Independent of ``detectors.detr``: it spells out the official module tree by hand —
``DETR.__init__`` (transformer, class_embed, bbox_embed = MLP(256, 256, 4, 3), query_embed = Embedding(100, 256),
input_proj = Conv2d(2048, 256, 1), backbone = Joiner(Backbone, PositionEmbeddingSine)), ``Backbone`` =
``IntermediateLayerGetter(torchvision resnet, {"layer4": "0"})`` stored as ``backbone.0.body`` with
``FrozenBatchNorm2d`` (buffers weight, bias, running_mean, running_var; no num_batches_tracked), the
post-norm ``Transformer`` (encoder without final norm, decoder with ``norm``), layers built from
``nn.MultiheadAttention`` (in_proj_weight [3E, E], in_proj_bias [3E], out_proj.weight [E, E], out_proj.bias [E]).

Run ``python tests/detectors/detr/official_layout.py`` to regenerate ``data/official_detr_layout.json``.
"""

from __future__ import annotations

import json
from pathlib import Path

DATA = Path(__file__).parent / "data" / "official_detr_layout.json"
BLOCKS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}


def _attn(prefix: str, e: int) -> dict[str, list[int]]:
    return {
        f"{prefix}.in_proj_weight": [3 * e, e],
        f"{prefix}.in_proj_bias": [3 * e],
        f"{prefix}.out_proj.weight": [e, e],
        f"{prefix}.out_proj.bias": [e],
    }


def _linear(prefix: str, n_in: int, n_out: int) -> dict[str, list[int]]:
    return {f"{prefix}.weight": [n_out, n_in], f"{prefix}.bias": [n_out]}


def _norm(prefix: str, n: int) -> dict[str, list[int]]:
    return {f"{prefix}.weight": [n], f"{prefix}.bias": [n]}


def _frozen_bn(prefix: str, n: int) -> dict[str, list[int]]:
    return {f"{prefix}.{b}": [n] for b in ("weight", "bias", "running_mean", "running_var")}


def official_layout(
    depth: int, num_classes: int = 91, queries: int = 100, d: int = 256, ff: int = 2048
) -> dict:
    """Key -> shape of the official DETR-R``depth`` checkpoint's ``model`` state dict."""
    out: dict[str, list[int]] = {}
    for i in range(6):
        p = f"transformer.encoder.layers.{i}"
        out |= _attn(f"{p}.self_attn", d) | _linear(f"{p}.linear1", d, ff) | _linear(f"{p}.linear2", ff, d)
        out |= _norm(f"{p}.norm1", d) | _norm(f"{p}.norm2", d)
    for i in range(6):
        p = f"transformer.decoder.layers.{i}"
        out |= _attn(f"{p}.self_attn", d) | _attn(f"{p}.multihead_attn", d)
        out |= _linear(f"{p}.linear1", d, ff) | _linear(f"{p}.linear2", ff, d)
        out |= _norm(f"{p}.norm1", d) | _norm(f"{p}.norm2", d) | _norm(f"{p}.norm3", d)
    out |= _norm("transformer.decoder.norm", d)
    out |= _linear("class_embed", d, num_classes + 1)
    out |= _linear("bbox_embed.layers.0", d, d) | _linear("bbox_embed.layers.1", d, d)
    out |= _linear("bbox_embed.layers.2", d, 4)
    out["query_embed.weight"] = [queries, d]
    out["input_proj.weight"] = [d, 2048, 1, 1]
    out["input_proj.bias"] = [d]
    body = "backbone.0.body"
    out[f"{body}.conv1.weight"] = [64, 3, 7, 7]
    out |= _frozen_bn(f"{body}.bn1", 64)
    inplanes = 64
    for layer, blocks in enumerate(BLOCKS[depth], start=1):
        planes = 64 * 2 ** (layer - 1)
        for b in range(blocks):
            p = f"{body}.layer{layer}.{b}"
            out[f"{p}.conv1.weight"] = [planes, inplanes, 1, 1]
            out |= _frozen_bn(f"{p}.bn1", planes)
            out[f"{p}.conv2.weight"] = [planes, planes, 3, 3]
            out |= _frozen_bn(f"{p}.bn2", planes)
            out[f"{p}.conv3.weight"] = [4 * planes, planes, 1, 1]
            out |= _frozen_bn(f"{p}.bn3", 4 * planes)
            if b == 0:
                out[f"{p}.downsample.0.weight"] = [4 * planes, inplanes, 1, 1]
                out |= _frozen_bn(f"{p}.downsample.1", 4 * planes)
            inplanes = 4 * planes
    return out


def all_layouts() -> dict[str, dict[str, list[int]]]:
    """The four official COCO models (DC5 only changes strides, not parameters)."""
    return {
        "detr_resnet50": official_layout(50),
        "detr_resnet101": official_layout(101),
        "detr_resnet50_dc5": official_layout(50),
        "detr_resnet101_dc5": official_layout(101),
    }


if __name__ == "__main__":
    DATA.parent.mkdir(exist_ok=True)
    DATA.write_text(json.dumps(all_layouts(), indent=1) + "\n")
    print(f"wrote {DATA}")
