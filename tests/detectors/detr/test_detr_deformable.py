"""Deformable attention against transformers' implementation and hand-derived values; the fast DETR's contract."""

from __future__ import annotations

import pytest
import torch
from torchvision.ops import box_convert

from detectors.detr import DetrConfig, build_detr, load_checkpoint, nested_batch, save_checkpoint
from detectors.detr.backbone import Backbone
from detectors.detr.deformable import MSDeformAttn, ms_deform_attn
from detectors.detr.deformable_transformer import inverse_sigmoid, pixel_centres, valid_ratios
from detectors.detr.denoising import block_attention_mask, denoising_queries
from detectors.detr.position_encoding import PositionEmbeddingSine, box_sine_embed

SHAPES = [(6, 8), (3, 4), (2, 2)]


def _random_inputs(seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    batch, heads, dim, queries, points = 2, 4, 5, 7, 3
    total = sum(h * w for h, w in SHAPES)
    value = torch.randn(batch, total, heads, dim, generator=g, dtype=torch.float64)
    # Some locations outside [0, 1]: they must read zeros exactly as the reference does.
    locations = torch.rand(batch, queries, heads, len(SHAPES), points, 2, generator=g, dtype=torch.float64)
    locations = locations * 1.4 - 0.2
    weights = torch.rand(batch, queries, heads, len(SHAPES), points, generator=g, dtype=torch.float64)
    return value, locations, weights


@pytest.mark.parametrize("seed", range(3))
def test_core_equals_transformers_multi_scale_deformable_attention(seed: int) -> None:
    modeling = pytest.importorskip(
        "transformers.models.deformable_detr.modeling_deformable_detr", reason="dev extra: transformers"
    )
    value, locations, weights = _random_inputs(seed)
    shapes = torch.tensor(SHAPES)
    starts = torch.cat((shapes.new_zeros(1), shapes.prod(1).cumsum(0)[:-1]))
    expected = modeling.MultiScaleDeformableAttention()(value, shapes, SHAPES, starts, locations, weights, 64)
    ours = ms_deform_attn(value, SHAPES, locations, weights)
    assert ours.shape == (2, 7, 4 * 5)
    torch.testing.assert_close(ours, expected, rtol=1e-12, atol=1e-12)


def _identity_attention(levels: int, points: int, dim: int = 4) -> MSDeformAttn:
    attn = MSDeformAttn(dim, levels, num_heads=1, num_points=points).double()
    with torch.no_grad():
        for proj in (attn.value_proj, attn.output_proj):
            proj.weight.copy_(torch.eye(dim))
            proj.bias.zero_()
        attn.sampling_offsets.bias.zero_()  # weights are zero: offsets = bias
    return attn


def test_point_reference_at_pixel_centres_reads_those_pixels() -> None:
    """Zero offsets, equal weights: the output is the mean over levels of the pixel under the reference point."""
    attn = _identity_attention(levels=2, points=1)
    shapes = [(4, 4), (2, 2)]
    value = torch.randn(1, 20, 4, dtype=torch.float64)
    # Level 0 pixel (row 1, col 2) centre = ((2 + .5) / 4, (1 + .5) / 4); level 1 pixel (0, 1) = (.75, .25).
    reference = torch.tensor([[[[0.625, 0.375], [0.75, 0.25]]]], dtype=torch.float64)
    out = attn(torch.zeros(1, 1, 4, dtype=torch.float64), reference, value, shapes)
    expected = (value[0, 1 * 4 + 2] + value[0, 16 + 0 * 2 + 1]) / 2
    torch.testing.assert_close(out[0, 0], expected, rtol=1e-12, atol=1e-12)


def test_box_reference_offsets_scale_with_the_box() -> None:
    """With a box reference, offset (P, 0) of point P lands on the box's right edge: cx + w/2."""
    attn = _identity_attention(levels=1, points=2)
    with torch.no_grad():
        attn.sampling_offsets.bias.copy_(torch.tensor([0.0, 0.0, 2.0, 0.0]))  # point 0 at centre, 1 at edge
        attn.attention_weights.bias.copy_(torch.tensor([-50.0, 50.0]))  # all weight on point 1
    value = torch.randn(1, 16, 4, dtype=torch.float64)
    box = torch.tensor([[[[0.375, 0.625, 0.5, 0.2]]]], dtype=torch.float64)  # right edge x = .625: column 2
    out = attn(torch.zeros(1, 1, 4, dtype=torch.float64), box, value, [(4, 4)])
    torch.testing.assert_close(out[0, 0], value[0, 2 * 4 + 2], rtol=1e-12, atol=1e-12)


def test_padded_values_contribute_nothing() -> None:
    torch.manual_seed(0)
    attn = MSDeformAttn(8, 1, num_heads=2, num_points=4).double()
    value = torch.randn(1, 16, 8, dtype=torch.float64)
    pad = torch.zeros(1, 4, 4, dtype=torch.bool)
    pad[:, :, 3] = True
    query = torch.randn(1, 5, 8, dtype=torch.float64)
    reference = torch.rand(1, 5, 1, 2, dtype=torch.float64)
    out = attn(query, reference, value, [(4, 4)], pad.flatten(1))
    changed = value.clone()
    changed[:, pad.flatten()] = 1e3
    torch.testing.assert_close(attn(query, reference, changed, [(4, 4)], pad.flatten(1)), out)
    assert not torch.allclose(attn(query, reference, changed, [(4, 4)]), out)  # unmasked, they do differ


def test_initial_offsets_point_along_each_heads_direction() -> None:
    attn = MSDeformAttn(16, num_levels=2, num_heads=4, num_points=2)
    bias = attn.sampling_offsets.bias.view(4, 2, 2, 2)
    # Head h at angle 2πh/4: (1, 0), (0, 1), (-1, 0), (0, -1); point p at (p + 1) times that, on every level.
    directions = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]])
    expected = directions[:, None, None, :] * torch.tensor([1.0, 2.0])[None, None, :, None]
    torch.testing.assert_close(bias, expected.expand(-1, 2, -1, -1), rtol=0, atol=1e-6)


def test_valid_ratios_and_pixel_centres_hand_values() -> None:
    mask = torch.zeros(1, 4, 4, dtype=torch.bool)
    mask[:, :, 2:] = True  # valid width 2 of 4
    mask[:, 3:, :] = True  # valid height 3 of 4
    ratios = valid_ratios([mask])
    torch.testing.assert_close(ratios, torch.tensor([[[0.5, 0.75]]]))
    centres = pixel_centres([(4, 4)], ratios)
    # Pixel (row 0, col 1): x = 1.5 / 4 / 0.5 = 0.75 of the valid width, y = 0.5 / 4 / 0.75 = 1/6.
    torch.testing.assert_close(centres[0, 1], torch.tensor([0.75, 1 / 6]))


def test_box_sine_embed_matches_the_position_encoding_of_one_axis() -> None:
    coords = torch.tensor([[0.25, 0.8]])
    embed = box_sine_embed(coords, 8)
    assert embed.shape == (1, 16)
    # PositionEmbeddingSine on a 1×4 row (no padding): x of column 0 is 1/4·2π, as 0.25 here.
    pos = PositionEmbeddingSine(8)(torch.zeros(1, 1, 4, dtype=torch.bool))
    torch.testing.assert_close(embed[0, :8], pos[0, 8:, 0, 0], rtol=1e-6, atol=1e-6)
    assert torch.allclose(embed[0, 8], torch.tensor(0.8 * 2 * torch.pi).sin())


def test_inverse_sigmoid_inverts_and_stays_finite() -> None:
    x = torch.tensor([0.0, 0.1, 0.5, 0.9, 1.0])
    y = inverse_sigmoid(x)
    assert torch.isfinite(y).all()
    torch.testing.assert_close(y[1:4].sigmoid(), x[1:4])


def test_layer3_backbone_drops_layer4_and_returns_strides_8_16() -> None:
    full = Backbone("resnet18")
    light = Backbone("resnet18", return_layers=(2, 3))
    assert not any(k.startswith("layer4") for k in light.state_dict())
    full_params = sum(p.numel() for p in full.parameters())
    light_params = sum(p.numel() for p in light.parameters())
    assert round(light_params / full_params, 2) == 0.25  # layer4 holds 3/4 of ResNet-18
    levels = light.levels(torch.zeros(1, 3, 64, 96), torch.zeros(1, 64, 96, dtype=torch.bool))
    assert [tuple(f.shape) for f, _ in levels] == [(1, 128, 8, 12), (1, 256, 4, 6)]
    assert light.level_channels == [128, 256]


def test_batch_norm_backbone_trains_every_stage_and_learns_its_statistics() -> None:
    official = Backbone("resnet18", return_layers=(2, 3))
    scratch = Backbone("resnet18", return_layers=(2, 3), norm="batch")
    frozen = {n.split(".")[0] for n, p in official.body.named_parameters() if not p.requires_grad}
    assert frozen == {"conv1", "layer1"}  # FrozenBatchNorm2d holds buffers only
    assert all(p.requires_grad for p in scratch.parameters())
    assert "bn1.num_batches_tracked" in scratch.body.state_dict()
    assert "bn1.num_batches_tracked" not in official.body.state_dict()
    images = torch.randn(4, 3, 32, 32) * 3.0 + 2.0
    scratch.train()
    features = scratch.levels(images, torch.zeros(4, 32, 32, dtype=torch.bool))[-1][0]
    # Train-mode BatchNorm normalises each channel over the batch (then ReLU), so no channel blows up with depth.
    assert features.std() < 5.0
    assert torch.allclose(scratch.body.bn1.running_mean, 0.1 * scratch.body.conv1(images).mean((0, 2, 3)))
    with pytest.raises(ValueError, match="backbone norm must be one of"):
        Backbone("resnet18", norm="group")
    with pytest.raises(ValueError, match="DetrConfig.backbone_norm"):
        DetrConfig(backbone_norm="layer")


def test_config_defaults_are_official_and_fast_switches_need_deformable() -> None:
    config = DetrConfig()
    assert (config.deformable, config.classification, config.num_query_groups) == (False, "softmax", 1)
    assert config.backbone_layers == (4,) and not config.two_stage and not config.box_refine
    with pytest.raises(ValueError, match=r"box_refine.*deformable"):
        DetrConfig(box_refine=True)
    with pytest.raises(ValueError, match="several backbone_layers"):
        DetrConfig(backbone_layers=(3, 4))
    with pytest.raises(ValueError, match="classification='sigmoid'"):
        DetrConfig(deformable=True, two_stage=True)
    with pytest.raises(ValueError, match="classification must be"):
        DetrConfig(classification="softmax2")
    with pytest.raises(ValueError, match="backbone_layers"):
        DetrConfig(backbone_layers=(4, 3))
    assert DetrConfig.from_dict({"backbone_layers": [2, 3], "deformable": True}).backbone_layers == (2, 3)


def _fast(**overrides: object) -> torch.nn.Module:
    torch.manual_seed(0)
    small = {"num_queries": 12, "d_model": 64, "dim_feedforward": 128, **overrides}
    return build_detr("detr_fast_r18", num_classes=3, **small)


@pytest.fixture(scope="module")
def fast() -> torch.nn.Module:
    """The fast preset, narrower, with an extra stride-32 level: 3 levels, 3 query groups, two-stage."""
    return _fast(extra_levels=1, num_query_groups=3)


def test_fast_output_dict_contract(fast: torch.nn.Module) -> None:
    model = fast.train()
    images = torch.randn(2, 3, 64, 64)
    out = model(images)
    assert out["pred_logits"].shape == (2, 12, 3) and out["pred_boxes"].shape == (2, 12, 4)
    assert len(out["aux_outputs"]) == 2 and out["aux_outputs"][0]["pred_logits"].shape == (2, 12, 3)
    assert out["enc_outputs"]["pred_logits"].shape == (2, 12, 3)
    assert len(out["group_outputs"]) == 2
    for group in out["group_outputs"]:
        assert group["pred_boxes"].shape == (2, 12, 4) and len(group["aux_outputs"]) == 2
    assert "group_outputs" not in model.eval()(images)


@pytest.mark.parametrize("name", ["detr_fast_r18", "detr_tiny"])
def test_groups_do_not_see_each_other(name: str, fast: torch.nn.Module) -> None:
    """Group 0 in training mode (3 groups) equals the eval-mode model (group 0 alone) exactly up to float."""
    torch.manual_seed(0)
    model = (
        fast if name == "detr_fast_r18" else build_detr(name, num_classes=3, num_query_groups=3, dropout=0.0)
    )
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        train_out = model.train()(images)
        eval_out = model.eval()(images)
    torch.testing.assert_close(train_out["pred_logits"], eval_out["pred_logits"], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(train_out["pred_boxes"], eval_out["pred_boxes"], rtol=1e-5, atol=1e-5)
    other = train_out["group_outputs"][0]["pred_logits"]
    assert (other - train_out["pred_logits"]).abs().max() > 1e-3  # groups have their own queries


def test_initial_boxes_are_the_reference_boxes() -> None:
    """Box heads start at zero correction: every layer's box is its reference box (box = σ(0 + σ⁻¹(ref)))."""
    model = _fast(two_stage=False, dec_layers=2).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 64, 64))
        anchors = model.transformer.refpoint_embed.weight[:12].sigmoid()
    for layer in [*out["aux_outputs"], out]:
        torch.testing.assert_close(layer["pred_boxes"][0], anchors, rtol=1e-5, atol=1e-6)


def test_two_stage_references_are_selected_proposals(fast: torch.nn.Module) -> None:
    """At init the proposal head adds nothing: selected boxes are pixel centres with size 0.05·2^level."""
    model = fast.eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 64, 64))
    enc_boxes = out["enc_outputs"]["pred_boxes"][0]
    sizes = {round(v, 4) for v in enc_boxes[:, 2:].flatten().tolist()}
    assert sizes <= {0.05, 0.1, 0.2}
    # Stride 8 on 64 px: centres at (i + .5) / 8; stride 16: (i + .5) / 4; stride 32: (i + .5) / 2.
    cells = 0.4 / enc_boxes[:, 2:3]  # 8, 4, 2 cells for sizes .05, .1, .2
    index = enc_boxes[:, :2] * cells - 0.5
    torch.testing.assert_close(index, index.round(), rtol=0, atol=1e-4)
    for layer in [*out["aux_outputs"], out]:
        torch.testing.assert_close(layer["pred_boxes"][0], enc_boxes, rtol=1e-5, atol=1e-6)


def test_batch_equals_each_image_padded_alone(fast: torch.nn.Module) -> None:
    model = fast.eval()
    images = [torch.rand(3, 64, 96), torch.rand(3, 96, 64)]
    batch, mask = nested_batch(images)
    with torch.no_grad():
        out = model(batch, mask)
        for i in range(2):
            single = model(batch[i : i + 1], mask[i : i + 1])
            for key in ("pred_logits", "pred_boxes"):
                torch.testing.assert_close(single[key], out[key][i : i + 1], rtol=1e-4, atol=1e-4)


def test_fast_checkpoint_round_trip(tmp_path, fast: torch.nn.Module) -> None:
    model = fast.eval()
    path = save_checkpoint(model, tmp_path / "fast.safetensors", classes=["a", "b", "c"])
    loaded, classes = load_checkpoint(path)
    assert classes == ["a", "b", "c"] and loaded.config == model.config
    images = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded(images)["pred_boxes"], model(images)["pred_boxes"], rtol=0, atol=0)


def test_two_stage_refuses_too_few_pixels() -> None:
    model = build_detr("detr_fast_r18", num_classes=3).eval()  # 100 queries, 32 px -> 16 + 4 pixels
    with pytest.raises(ValueError, match="num_queries=100"):
        model(torch.randn(1, 3, 32, 32))


@pytest.mark.parametrize("name", ["detr_fast_r18", "detr_tiny"])
def test_precomputed_backbone_features_give_the_same_outputs(name: str, fast: torch.nn.Module) -> None:
    """A trainer caching a frozen backbone's levels gets exactly the outputs of the full forward."""
    model = (
        fast.eval()
        if name == "detr_fast_r18"
        else build_detr(name, num_classes=3, train_backbone=False).eval()
    )
    images, mask = nested_batch([torch.rand(3, 64, 80), torch.rand(3, 72, 64)])
    with torch.no_grad():
        cached = model.backbone[0].levels(images, mask)
        direct = model(images, mask)
        reused = model(images, mask, features=cached)
    torch.testing.assert_close(reused["pred_logits"], direct["pred_logits"], rtol=0, atol=0)
    torch.testing.assert_close(reused["pred_boxes"], direct["pred_boxes"], rtol=0, atol=0)


def test_block_attention_mask_hand_values() -> None:
    mask = block_attention_mask([2, 1, 3])
    block = torch.tensor([0, 0, 1, 2, 2, 2])
    assert torch.equal(mask, block[:, None] != block[None, :])
    assert block_attention_mask([5]) is None


def test_denoising_queries_without_noise_are_the_ground_truth() -> None:
    embed = torch.nn.Embedding(3, 8)
    targets = [
        {"labels": torch.tensor([2, 0]), "boxes": torch.tensor([[0.3, 0.4, 0.2, 0.2], [0.6, 0.5, 0.1, 0.3]])},
        {"labels": torch.tensor([1]), "boxes": torch.tensor([[0.5, 0.5, 0.4, 0.4]])},
    ]
    content, reference, meta = denoising_queries(targets, 2, embed, box_noise=0.0, label_noise=0.0)
    assert meta == {"num_groups": 2, "pad_size": 2}
    assert content.shape == (2, 4, 8) and reference.shape == (2, 4, 4)
    for k in range(2):
        torch.testing.assert_close(reference[0, 2 * k : 2 * k + 2], targets[0]["boxes"])
        torch.testing.assert_close(reference[1, 2 * k], targets[1]["boxes"][0])
        torch.testing.assert_close(content[0, 2 * k : 2 * k + 2], embed(targets[0]["labels"]))
    assert (
        denoising_queries([{"labels": torch.zeros(0), "boxes": torch.zeros(0, 4)}], 2, embed, 0.4, 0.2)
        is None
    )


def test_denoising_box_noise_stays_within_its_bound() -> None:
    torch.manual_seed(0)
    boxes = torch.tensor([[0.5, 0.5, 0.2, 0.4]]).repeat(50, 1)
    targets = [{"labels": torch.zeros(50, dtype=torch.long), "boxes": boxes}]
    _, reference, _ = denoising_queries(targets, 1, torch.nn.Embedding(2, 4), box_noise=0.4, label_noise=0.0)
    moved = (box_convert(reference[0], "cxcywh", "xyxy") - box_convert(boxes, "cxcywh", "xyxy")).abs()
    bound = torch.tensor([0.1, 0.2, 0.1, 0.2]) * 0.4  # 0.4 x half the width / height
    assert (moved <= bound + 1e-6).all() and (moved.amax(0) > 0.8 * bound).all()


def test_denoising_queries_leave_the_matching_queries_unchanged() -> None:
    """Denoising queries are extra attention blocks: the matching part computes exactly the same."""
    torch.manual_seed(0)
    model = _fast(denoising_groups=3, num_query_groups=2, dec_layers=2).train()
    targets = [
        {"labels": torch.tensor([1, 2]), "boxes": torch.tensor([[0.3, 0.3, 0.2, 0.2], [0.7, 0.6, 0.3, 0.2]])},
        {"labels": torch.tensor([0]), "boxes": torch.tensor([[0.5, 0.5, 0.4, 0.4]])},
    ]
    images = torch.randn(2, 3, 64, 64)
    plain = _fast(num_query_groups=2, dec_layers=2).train()
    missing = plain.load_state_dict(model.state_dict(), strict=False)
    assert missing.unexpected_keys == ["label_embed.weight"] and missing.missing_keys == []
    with torch.no_grad():
        with_dn = model(images, targets=targets)
        without = plain(images)
    with pytest.raises(ValueError, match="targets="):
        model(images)
    assert with_dn["dn_meta"] == {"num_groups": 3, "pad_size": 2}
    assert (
        with_dn["dn_outputs"]["pred_logits"].shape == (2, 6, 3)
        and len(with_dn["dn_outputs"]["aux_outputs"]) == 1
    )
    for key in ("pred_logits", "pred_boxes"):
        torch.testing.assert_close(with_dn[key], without[key], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(
            with_dn["group_outputs"][0][key], without["group_outputs"][0][key], rtol=1e-5, atol=1e-5
        )
    assert "dn_outputs" not in model.eval()(images, targets=targets)  # inference never denoises
    with pytest.raises(ValueError, match="denoising_groups needs deformable"):
        DetrConfig(denoising_groups=2)


def test_plain_detr_on_layer3_is_stride_16_without_layer4() -> None:
    model = build_detr("detr_tiny", num_classes=3, backbone_layers=(3,)).eval()
    state = model.state_dict()
    assert not any(".layer4." in k for k in state) and state["input_proj.weight"].shape == (64, 256, 1, 1)
    features = model.backbone[0].levels(torch.zeros(1, 3, 64, 96), torch.zeros(1, 64, 96, dtype=torch.bool))
    assert features[-1][0].shape[-2:] == (4, 6)
