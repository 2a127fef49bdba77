"""Model pieces against references: torch's attention, hand-computed encodings, padding and batching behaviour."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from detectors.detr import DetrConfig, build_detr, nested_batch, postprocess, resize_shorter_side
from detectors.detr.position_encoding import PositionEmbeddingSine
from detectors.detr.preprocess import IMAGENET_MEAN, IMAGENET_STD
from detectors.detr.transformer import MultiheadAttention, Transformer


@pytest.fixture(scope="module")
def tiny() -> nn.Module:
    torch.manual_seed(0)
    return build_detr("detr_tiny", num_classes=5, dropout=0.0).eval()


def test_attention_equals_torch_multihead_attention() -> None:
    # float64, so that a real difference is not hidden in (or confused with) float32 rounding
    torch.manual_seed(0)
    ours = MultiheadAttention(32, 4).double()
    ref = nn.MultiheadAttention(32, 4, batch_first=True).double()
    assert {k: v.shape for k, v in ours.state_dict().items()} == {
        k: v.shape for k, v in ref.state_dict().items()
    }
    with torch.no_grad():  # random biases too, so every parameter matters
        for p in ref.parameters():
            p.normal_()
    ours.load_state_dict(ref.state_dict(), strict=True)
    q, k, v = (torch.randn(2, n, 32, dtype=torch.float64) for n in (5, 7, 7))
    pad = torch.tensor([[False] * 7, [False] * 4 + [True] * 3])
    expected = ref(q, k, v, key_padding_mask=pad, need_weights=False)[0]
    torch.testing.assert_close(ours(q, k, v, pad), expected, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(
        ours(q, q, v[:, :5]), ref(q, q, v[:, :5], need_weights=False)[0], rtol=1e-10, atol=1e-10
    )


def test_sine_encoding_hand_values_and_padding() -> None:
    enc = PositionEmbeddingSine(num_pos_feats=4)
    pos = enc(torch.zeros(1, 2, 2, dtype=torch.bool))  # y channels 0-3, x channels 4-7
    y_row0 = 1 / (2 + 1e-6) * 2 * math.pi  # cumsum 1 over 2 valid rows, scaled to 2π
    expected = [math.sin(y_row0), math.cos(y_row0), math.sin(y_row0 / 100), math.cos(y_row0 / 100)]
    torch.testing.assert_close(pos[0, :4, 0, 1], torch.tensor(expected), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(
        pos[0, 4:, 1, 0], torch.tensor(expected), rtol=1e-6, atol=1e-6
    )  # x of column 0
    mask = torch.ones(1, 5, 6, dtype=torch.bool)
    mask[0, :3, :4] = False
    alone = enc(torch.zeros(1, 3, 4, dtype=torch.bool))
    torch.testing.assert_close(enc(mask)[..., :3, :4], alone, rtol=1e-6, atol=1e-6)


def test_transformer_ignores_padding_exactly() -> None:
    """With mask-aware encodings and masked keys, junk in the padded area changes nothing."""
    torch.manual_seed(0)
    tr = Transformer(
        d_model=32, num_heads=4, num_encoder_layers=2, num_decoder_layers=2, dim_feedforward=64, dropout=0
    )
    tr.eval()
    enc = PositionEmbeddingSine(16)
    queries = torch.randn(6, 32)
    src = torch.randn(1, 32, 3, 4)
    hs_alone, _ = tr(src, None, queries, enc(torch.zeros(1, 3, 4, dtype=torch.bool)))
    padded = torch.randn(1, 32, 5, 7) * 10  # junk
    padded[..., :3, :4] = src
    mask = torch.ones(1, 5, 7, dtype=torch.bool)
    mask[0, :3, :4] = False
    hs_padded, _ = tr(padded, mask, queries, enc(mask))
    torch.testing.assert_close(hs_padded, hs_alone, rtol=1e-5, atol=1e-5)
    hs_unmasked, _ = tr(padded, None, queries, enc(mask))  # the mask is what makes them agree
    assert (hs_unmasked - hs_alone).abs().max() > 0.1


def test_outputs_shapes_and_aux(tiny: nn.Module) -> None:
    images, mask = nested_batch([torch.rand(3, 64, 96), torch.rand(3, 80, 64)])
    with torch.no_grad():
        out = tiny(images, mask)
    assert out["pred_logits"].shape == (2, 10, 6) and out["pred_boxes"].shape == (2, 10, 4)
    assert len(out["aux_outputs"]) == 1 and out["aux_outputs"][0]["pred_logits"].shape == (2, 10, 6)
    no_aux = build_detr("detr_tiny", num_classes=5, dropout=0.0, aux_loss=False).eval()
    no_aux.load_state_dict(tiny.state_dict())
    with torch.no_grad():
        last = no_aux(images, mask)
    assert "aux_outputs" not in last
    torch.testing.assert_close(last["pred_logits"], out["pred_logits"])
    assert not torch.allclose(out["aux_outputs"][0]["pred_logits"], out["pred_logits"])


def test_batch_equals_each_image_padded_alone(tiny: nn.Module) -> None:
    """No leakage between images of a batch: row i equals image i run alone at the same padded size."""
    images = [torch.rand(3, 64, 96), torch.rand(3, 96, 64), torch.rand(3, 70, 70)]
    batch, mask = nested_batch(images)
    with torch.no_grad():
        out = tiny(batch, mask)
        for i in range(3):
            single = tiny(batch[i : i + 1], mask[i : i + 1])
            torch.testing.assert_close(
                single["pred_logits"], out["pred_logits"][i : i + 1], rtol=1e-4, atol=1e-4
            )
            torch.testing.assert_close(
                single["pred_boxes"], out["pred_boxes"][i : i + 1], rtol=1e-4, atol=1e-4
            )


def test_padded_image_gives_the_same_boxes_as_alone(tiny: nn.Module) -> None:
    """Padding vs alone, full model, exactly — for an image whose convolutions cannot see the padding.

    The transformer is exactly padding-invariant (tested above). The ResNet, in the official DETR as here, is not
    in general: padded positions next to the image get non-zero features (their receptive field covers valid
    pixels, and trained BN biases shift zeros) and convs at the border read them where the image alone reads
    zero padding; with random weights this moves logits by ~0.3, as much as changing the image does, so a
    tolerance on arbitrary images would test nothing. Here the image's content sits in its top-left corner with
    a 256-px band of mean colour (0 after normalisation) to its right and bottom: wider than ResNet-18's
    receptive-field radius (~220 px), and random-init frozen BN maps 0 to 0, so the backbone features of the
    valid region are identical and every difference left would come from the mask handling (mask resizing,
    mask-aware position encoding, key masking) or from the scaling to the original size.
    """
    image = torch.tensor(IMAGENET_MEAN)[:, None, None].repeat(1, 320, 320)
    image[:, :64, :64] = torch.rand(3, 64, 64)
    alone, alone_mask = nested_batch([image])
    batch, mask = nested_batch([image, torch.rand(3, 384, 416)])
    with torch.no_grad():
        out_alone = tiny(alone, alone_mask)
        out_batch = tiny(batch, mask)
        out_unmasked = tiny(batch, None)
    dets_alone = postprocess(out_alone, [(320, 320)])[0]
    dets_batch = postprocess(out_batch, [(320, 320), (384, 416)])
    torch.testing.assert_close(dets_batch[0].boxes, dets_alone.boxes, rtol=0, atol=1e-3)  # pixels
    torch.testing.assert_close(dets_batch[0].scores, dets_alone.scores, rtol=0, atol=1e-5)
    assert torch.equal(dets_batch[0].labels, dets_alone.labels)
    difference = (out_unmasked["pred_logits"][0] - out_alone["pred_logits"][0]).abs().max()
    assert difference > 1e-2  # without the mask they differ: the check above is not vacuous


def test_postprocess_hand_computed() -> None:
    logits = torch.full((2, 3, 4), -10.0)  # 3 classes + no-object
    logits[0, 0, 1] = 2.0  # query 0: class 1
    logits[0, 1, 3] = 5.0  # query 1: mostly no-object; best real class 2
    logits[0, 1, 2] = 1.0
    logits[0, 2, 0] = 0.0
    logits[1] = 0.0
    logits[1, :, 1] = 0.1  # best real class 1 at ~0.26
    boxes = torch.tensor([[0.5, 0.5, 0.2, 0.4]]).repeat(2, 3, 1)
    dets = postprocess({"pred_logits": logits, "pred_boxes": boxes}, [(100, 200), (10, 20)])
    p = logits[0, 1].softmax(-1)
    torch.testing.assert_close(dets[0].scores[1], p[2])
    assert dets[0].labels.tolist() == [1, 2, 0] and dets[1].labels.tolist() == [1, 1, 1]
    torch.testing.assert_close(dets[0].boxes[0], torch.tensor([80.0, 30.0, 120.0, 70.0]))
    torch.testing.assert_close(dets[1].boxes[0], torch.tensor([8.0, 3.0, 12.0, 7.0]))
    assert dets[0].image_size == (100, 200) and dets[0].extras["query"].tolist() == [0, 1, 2]
    top = postprocess(
        {"pred_logits": logits, "pred_boxes": boxes}, [(100, 200), (10, 20)], score_thr=0.5, top_k=2
    )
    assert top[0].extras["query"].tolist() == [0, 2]  # by score: 1/(1+3e^-12) > 1/(1+3e^-10); query 1 cut
    torch.testing.assert_close(dets[1].scores, torch.full((3,), math.exp(0.1) / (3 + math.exp(0.1))))
    assert len(top[1]) == 0  # ~0.26 < 0.5


def test_nested_batch_normalises_then_pads() -> None:
    a = torch.full((3, 2, 3), 0.5)
    b = torch.zeros((3, 4, 1), dtype=torch.uint8)
    batch, mask = nested_batch([a, b], size_divisibility=4)
    assert batch.shape == (2, 3, 4, 4) and mask.shape == (2, 4, 4)
    mean, std = torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)
    torch.testing.assert_close(batch[0, :, 1, 2], (0.5 - mean) / std)
    torch.testing.assert_close(batch[1, :, 3, 0], -mean / std)
    assert batch[0, :, 2:, :].abs().max() == 0 and mask[0].sum() == 16 - 6 and mask[1].sum() == 16 - 4
    with pytest.raises(ValueError, match=r"images\[1\]"):
        nested_batch([a, torch.zeros(4, 2, 2)])


def test_resize_shorter_side_follows_official_rule() -> None:
    assert resize_shorter_side(torch.zeros(3, 480, 640)).shape[-2:] == (800, 1066)
    assert resize_shorter_side(torch.zeros(3, 400, 1600)).shape[-2:] == (
        333,
        1332,
    )  # capped: int(333 * 1600 / 400)
    assert resize_shorter_side(torch.zeros(3, 100, 50), 64, None).shape[-2:] == (128, 64)


def test_config_errors_name_the_field() -> None:
    with pytest.raises(ValueError, match="backbone"):
        DetrConfig(backbone="vgg16")
    with pytest.raises(ValueError, match="dilation"):
        build_detr("detr_resnet18", dilation=True)
    with pytest.raises(ValueError, match="unknown DETR architecture keys"):
        build_detr("detr_tiny", heads=3)
    with pytest.raises(ValueError, match="mask must be bool"):
        build_detr("detr_tiny")(torch.zeros(1, 3, 32, 32), torch.zeros(1, 32, 32))
