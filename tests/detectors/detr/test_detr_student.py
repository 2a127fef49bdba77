"""Students keep exactly the chosen teacher weights; pruning what contributes nothing changes nothing."""

from __future__ import annotations

import pytest
import torch

from detectors.detr import build_detr, nested_batch
from detectors.detr.training import build_student, head_importance, plan_student


def _teacher() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_detr("detr_tiny", num_classes=4, dropout=0.0, num_heads=8, enc_layers=3, dec_layers=3).eval()


def _run(model: torch.nn.Module, images: torch.Tensor, mask: torch.Tensor) -> dict:
    with torch.no_grad():
        return model.eval()(images, mask)


def test_kept_layers_are_copied_exactly() -> None:
    teacher = _teacher()
    student = build_student(
        teacher, encoder_layers=[0, 2], decoder_layers=[1], num_heads=6, dim_feedforward=96
    )
    plan = plan_student(teacher, encoder_layers=[0, 2], decoder_layers=[1], num_heads=6, dim_feedforward=96)
    t, s = teacher.state_dict(), student.state_dict()
    assert student.config.enc_layers == 2 and student.config.dec_layers == 1 and student.config.num_heads == 6
    assert student.config.head_dim == 8  # the teacher's 64 / 8, kept
    for s_idx, t_idx in enumerate([0, 2]):
        heads = plan.heads[f"transformer.encoder.layers.{t_idx}.self_attn"]
        rows = torch.cat([torch.arange(h * 8, h * 8 + 8) for h in heads])
        src, dst = f"transformer.encoder.layers.{t_idx}.", f"transformer.encoder.layers.{s_idx}."
        w = t[src + "self_attn.in_proj_weight"]
        expected = torch.cat([w[:64][rows], w[64:128][rows], w[128:][rows]])
        assert torch.equal(s[dst + "self_attn.in_proj_weight"], expected)
        assert torch.equal(
            s[dst + "self_attn.out_proj.weight"], t[src + "self_attn.out_proj.weight"][:, rows]
        )
        units = plan.ffn_units[f"transformer.encoder.layers.{t_idx}"]
        assert torch.equal(s[dst + "linear1.weight"], t[src + "linear1.weight"][units])
        assert torch.equal(s[dst + "linear2.weight"], t[src + "linear2.weight"][:, units])
        assert torch.equal(s[dst + "norm2.bias"], t[src + "norm2.bias"])
    assert torch.equal(
        s["transformer.decoder.layers.0.norm3.weight"], t["transformer.decoder.layers.1.norm3.weight"]
    )
    for key in ("class_embed.weight", "query_embed.weight", "backbone.0.body.layer4.1.conv2.weight"):
        assert torch.equal(s[key], t[key])
    scores = head_importance(teacher.transformer.encoder.layers[0].self_attn)
    assert set(plan.heads["transformer.encoder.layers.0.self_attn"]) == set(scores.topk(6).indices.tolist())


def test_first_decoder_layers_reproduce_the_teachers_aux_output() -> None:
    teacher = _teacher()
    images, mask = nested_batch([torch.rand(3, 64, 80), torch.rand(3, 72, 64)])
    student = build_student(teacher, encoder_layers=3, decoder_layers=2)
    expected = _run(teacher, images, mask)["aux_outputs"][1]
    got = _run(student, images, mask)
    torch.testing.assert_close(got["pred_logits"], expected["pred_logits"], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got["pred_boxes"], expected["pred_boxes"], rtol=1e-5, atol=1e-5)


def test_pruning_dead_heads_and_units_keeps_outputs() -> None:
    """Heads whose value projection is zero and FFN units whose input row is zero contribute exactly nothing;
    the importance scores rank them last, so pruning 8 -> 6 heads and 128 -> 96 units leaves outputs unchanged."""
    teacher = _teacher()
    dead_heads, dead_units = [2, 5], torch.arange(0, 128, 4)
    with torch.no_grad():
        for layer in [*teacher.transformer.encoder.layers, *teacher.transformer.decoder.layers]:
            for attn in [m for m in layer.modules() if hasattr(m, "in_proj_weight")]:
                for h in dead_heads:
                    attn.in_proj_weight[128 + h * 8 : 128 + h * 8 + 8] = 0
                    attn.in_proj_bias[128 + h * 8 : 128 + h * 8 + 8] = 0
            layer.linear1.weight[dead_units] = 0
            layer.linear1.bias[dead_units] = -1.0  # relu(-1) = 0
    plan = plan_student(teacher, encoder_layers=3, decoder_layers=3, num_heads=6, dim_feedforward=96)
    assert all(heads == [0, 1, 3, 4, 6, 7] for heads in plan.heads.values())
    assert all(set(units).isdisjoint(dead_units.tolist()) for units in plan.ffn_units.values())
    student = build_student(teacher, plan)
    images, mask = nested_batch([torch.rand(3, 64, 64)])
    expected, got = _run(teacher, images, mask), _run(student, images, mask)
    torch.testing.assert_close(got["pred_logits"], expected["pred_logits"], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got["pred_boxes"], expected["pred_boxes"], rtol=1e-5, atol=1e-5)
    assert sum(p.numel() for p in student.parameters()) < sum(p.numel() for p in teacher.parameters())


def test_new_backbone_student_keeps_transformer_and_checks_plan() -> None:
    teacher = build_detr("detr_tiny", num_classes=4, backbone="resnet34")
    student = build_student(teacher, backbone="resnet18", encoder_layers=1, decoder_layers=1)
    assert student.config.backbone == "resnet18"
    assert torch.equal(student.state_dict()["class_embed.bias"], teacher.state_dict()["class_embed.bias"])
    with pytest.raises(ValueError, match="decoder_layers"):
        plan_student(teacher, encoder_layers=1, decoder_layers=[1, 0])
    with pytest.raises(ValueError, match="num_heads"):
        plan_student(teacher, encoder_layers=1, decoder_layers=1, num_heads=9)


def test_cutting_a_deformable_teacher_is_refused_with_the_alternative() -> None:
    teacher = build_detr("detr_fast_r18", num_classes=3, dim_feedforward=64)
    with pytest.raises(ValueError, match="deformable.*`model:`.*pairing: hungarian"):
        plan_student(teacher, encoder_layers=1, decoder_layers=1)
