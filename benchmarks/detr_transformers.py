"""Our DETR's twin in Hugging Face ``transformers``: the independent yardstick of the parity test and benchmark.

``transformers.DetrForObjectDetection`` is a separate implementation of the same architecture (its own module
tree and names, its own ResNet). :func:`transformers_state_dict` renames our state dict into its layout — the
mapping below is ours, worked out from the two models' key listings — and :func:`transformers_twin` builds
their model (non-timm ResNet backbone, random init, nothing downloaded) with our weights loaded strictly.

Used by ``tests/detectors/detr/test_detr_transformers.py`` (equal outputs) and ``benchmarks/detr_variants.py``
(speed). Needs the ``[dev]`` extra (``transformers``).
"""

from __future__ import annotations

import re
from typing import Any

import torch
from torch import Tensor

__all__ = ["transformers_config", "transformers_state_dict", "transformers_twin"]

# ResNet depth and block kind of each backbone we support (torchvision's definitions).
_RESNETS: dict[str, tuple[list[int], str]] = {
    "resnet18": ([2, 2, 2, 2], "basic"),
    "resnet34": ([3, 4, 6, 3], "basic"),
    "resnet50": ([3, 4, 6, 3], "bottleneck"),
    "resnet101": ([3, 4, 23, 3], "bottleneck"),
}

# Whole-name renames outside the ResNet and the attention projections (ours -> theirs), applied in order.
_RENAMES: list[tuple[str, str]] = [
    (r"^input_proj\.", "model.input_projection."),
    (r"^query_embed\.", "model.query_position_embeddings."),
    (r"^class_embed\.", "class_labels_classifier."),
    (r"^bbox_embed\.", "bbox_predictor."),
    (r"^transformer\.decoder\.norm\.", "model.decoder.layernorm."),
    (r"^transformer\.(encoder|decoder)\.layers\.", r"model.\1.layers."),
    (r"\.linear1\.", ".mlp.fc1."),
    (r"\.linear2\.", ".mlp.fc2."),
    (r"\.multihead_attn\.", ".encoder_attn."),
    (r"\.out_proj\.", ".o_proj."),
]
# Post-norm layer norms: ours are numbered by position, theirs named after the sub-layer they follow.
_ENCODER_NORMS = {"norm1": "self_attn_layer_norm", "norm2": "final_layer_norm"}
_DECODER_NORMS = {
    "norm1": "self_attn_layer_norm",
    "norm2": "encoder_attn_layer_norm",
    "norm3": "final_layer_norm",
}
_BACKBONE = "model.backbone.model."


def _backbone_key(rest: str) -> str:
    """``body.<torchvision ResNet key>`` -> their ResNet key (stem = embedder, layer<s> = stage s-1)."""
    stem = re.match(r"^(conv1|bn1)\.(.+)$", rest)
    if stem:
        part = "convolution" if stem[1] == "conv1" else "normalization"
        return f"{_BACKBONE}embedder.embedder.{part}.{stem[2]}"
    block = re.match(r"^layer(\d)\.(\d+)\.(.+)$", rest)
    if block is None:
        raise KeyError(f"no transformers name for backbone key {rest!r}")
    stage, index, tail = int(block[1]) - 1, block[2], block[3]
    prefix = f"{_BACKBONE}encoder.stages.{stage}.layers.{index}."
    # torchvision numbers a block's convs conv1..3 / bn1..3; theirs are layer.0..2 (convolution, normalization).
    conv = re.match(r"^(conv|bn)(\d)\.(.+)$", tail)
    if conv:
        part = "convolution" if conv[1] == "conv" else "normalization"
        return f"{prefix}layer.{int(conv[2]) - 1}.{part}.{conv[3]}"
    shortcut = re.match(r"^downsample\.([01])\.(.+)$", tail)
    if shortcut:
        part = "convolution" if shortcut[1] == "0" else "normalization"
        return f"{prefix}shortcut.{part}.{shortcut[2]}"
    raise KeyError(f"no transformers name for backbone key {rest!r}")


def _rename(key: str) -> str:
    if key.startswith("backbone.0.body."):
        return _backbone_key(key[len("backbone.0.body.") :])
    for pattern, replacement in _RENAMES:
        key = re.sub(pattern, replacement, key)
    layer = re.match(r"^model\.(encoder|decoder)\.layers\.\d+\.(norm\d)\.", key)
    if layer:
        norms = _ENCODER_NORMS if layer[1] == "encoder" else _DECODER_NORMS
        key = key.replace(f".{layer[2]}.", f".{norms[layer[2]]}.", 1)
    return key


def transformers_state_dict(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Our DETR state dict (official layout) -> ``DetrForObjectDetection``'s.

    Each packed attention projection ``in_proj_{weight,bias}`` ``[3E, ...]`` is split into their
    ``{q,k,v}_proj``; frozen batch-norm buffers keep their names; everything else is a rename.

    Raises:
        KeyError: a key with no counterpart (e.g. a layout this mapping does not know).
    """
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        packed = re.match(r"^(.+)\.in_proj_(weight|bias)$", key)
        if packed:
            base = _rename(f"{packed[1]}.placeholder")[: -len("placeholder")]
            for name, chunk in zip(("q_proj", "k_proj", "v_proj"), value.chunk(3, dim=0)):
                out[f"{base}{name}.{packed[2]}"] = chunk.clone()
        else:
            out[_rename(key)] = value
    return out


def transformers_config(config: Any) -> Any:
    """A ``transformers.DetrConfig`` with our :class:`~detectors.detr.model.DetrConfig`'s architecture."""
    from transformers import DetrConfig, ResNetConfig

    if config.backbone not in _RESNETS:
        raise ValueError(f"no transformers ResNet for backbone {config.backbone!r}")
    if config.dilation:
        raise ValueError("transformers' non-timm DETR backbone has no dilated (DC5) variant")
    if config.head_dim not in (None, config.d_model // config.num_heads):
        raise ValueError(f"transformers' DETR needs head_dim = d_model / num_heads, got {config.head_dim}")
    depths, kind = _RESNETS[config.backbone]
    width = 1 if kind == "basic" else 4
    resnet = ResNetConfig(
        embedding_size=64,
        hidden_sizes=[64 * width, 128 * width, 256 * width, 512 * width],
        depths=depths,
        layer_type=kind,
        out_features=["stage4"],
    )
    return DetrConfig(
        use_timm_backbone=False,
        backbone_config=resnet,
        use_pretrained_backbone=False,
        num_labels=config.num_classes,
        num_queries=config.num_queries,
        d_model=config.d_model,
        encoder_layers=config.enc_layers,
        decoder_layers=config.dec_layers,
        encoder_attention_heads=config.num_heads,
        decoder_attention_heads=config.num_heads,
        encoder_ffn_dim=config.dim_feedforward,
        decoder_ffn_dim=config.dim_feedforward,
        dropout=config.dropout,
        attention_dropout=config.dropout,
        activation_dropout=0.0,
        auxiliary_loss=config.aux_loss,
    )


def transformers_twin(model: torch.nn.Module) -> torch.nn.Module:
    """``DetrForObjectDetection`` with ``model``'s architecture and weights (loaded strictly), in eval mode.

    Call it as ``twin(pixel_values=images, pixel_mask=~mask)`` (theirs: 1 = valid pixel; ours: True = padding).
    """
    from transformers import DetrForObjectDetection

    twin = DetrForObjectDetection(transformers_config(model.config))
    twin.load_state_dict(transformers_state_dict(model.state_dict()), strict=True)
    return twin.eval()
