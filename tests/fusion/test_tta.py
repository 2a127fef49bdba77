"""Test-time augmentation: boxes map back exactly; virtual members equal a hand-run augmented pass."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fusion.config import TTAConfig
from fusion.detections import Detections
from fusion.detector import ImageBatch
from fusion.ensemble import Ensemble
from fusion.tta import HorizontalFlip, Rescale, augmentations_from_config, hflip_boxes


def test_a_flipped_box_maps_back_exactly() -> None:
    image = torch.zeros(3, 50, 100)
    image[:, 20:40, 10:30] = 1.0  # a white box at x 10..30, y 20..40
    flip = HorizontalFlip()
    flipped = flip.apply(ImageBatch([image])).images[0]
    ys, xs = flipped[0].nonzero(as_tuple=True)
    seen = Detections(
        [[float(xs.min()), float(ys.min()), float(xs.max()) + 1, float(ys.max()) + 1]], [0.9], [3]
    )
    assert seen.boxes.tolist() == [[70.0, 20.0, 90.0, 40.0]]  # where the box is in the flipped image
    (back,) = flip.invert([seen], [(50, 100)])
    assert back.boxes.tolist() == [[10.0, 20.0, 30.0, 40.0]]
    assert (
        back.image_size == (50, 100)
        and back.labels.tolist() == [3]
        and back.scores.tolist() == [pytest.approx(0.9)]
    )


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(*[st.floats(0, 1, allow_nan=False)] * 4), min_size=1, max_size=20),
    st.integers(1, 2000),
)
def test_hflip_is_an_involution(raw: list[tuple[float, float, float, float]], width: int) -> None:
    boxes = torch.tensor([[min(a, c), min(b, d), max(a, c), max(b, d)] for a, b, c, d in raw]) * width
    once = hflip_boxes(boxes, float(width))
    assert bool((once[:, 2] >= once[:, 0]).all())
    torch.testing.assert_close(hflip_boxes(once, float(width)), boxes, rtol=0, atol=width * 2e-7)


def test_rescale_uses_the_actual_rounded_size() -> None:
    scale = Rescale(1.5)
    image = torch.rand(3, 97, 101)
    (resized,) = scale.apply(ImageBatch([image])).images
    assert resized.shape == (3, 146, 152)  # round(97 * 1.5) = 146, round(101 * 1.5) = 152
    full = Detections([[0, 0, 152, 146], [76, 73, 152, 146]], [0.5, 0.4], [0, 1])
    (back,) = scale.invert([full], [(97, 101)])
    assert back.boxes.tolist() == [[0.0, 0.0, 101.0, 97.0], [50.5, 48.5, 101.0, 97.0]]
    assert back.image_size == (97, 101)


def test_augmentations_from_config() -> None:
    augs = augmentations_from_config(TTAConfig(hflip=True, scales=[1.0, 0.5, 2]))
    assert [a.name for a in augs] == ["hflip", "x0.5", "x2"]


@pytest.fixture(scope="module")
def tta_ensemble() -> Ensemble:
    torch.manual_seed(0)
    ens = Ensemble.from_config(
        "tiny",
        [
            "members=[{name: frcnn, type: torchvision, model: fasterrcnn_mobilenet_v3_large_320_fpn, weights: null, "
            "score_thr: 0.0, detections_per_img: 20, min_size: 128, max_size: 192, proposals: 100}]",
            "tta.hflip=true",
            "tta.scales=[0.75]",
        ],
        device="cpu",
    )
    # A random backbone gives every box the same score, and torch.topk breaks such ties differently from call to
    # call; scaling the box head's first layer separates the scores so that repeated passes are comparable.
    with torch.no_grad():
        ens.members[0].model.roi_heads.box_head.fc6.weight.mul_(1e9)
    return ens


def test_virtual_members_equal_hand_augmented_passes(tta_ensemble: Ensemble) -> None:
    assert tta_ensemble.member_names == ["frcnn", "frcnn@hflip", "frcnn@x0.75"]
    images = [torch.rand(3, 96, 128), torch.rand(3, 120, 100)]
    outs = tta_ensemble.predict_members(images)
    member = tta_ensemble.members[0]
    plain = member.predict(ImageBatch([im.clone() for im in images]))
    flipped = member.predict(ImageBatch([im.flip(-1) for im in images]))
    for index, (image, det) in enumerate(zip(images, flipped)):
        width = image.shape[2]
        expected = torch.stack(
            [width - det.boxes[:, 2], det.boxes[:, 1], width - det.boxes[:, 0], det.boxes[:, 3]], 1
        )
        got = outs["frcnn@hflip"][index]
        assert len(got) > 0 and got == det.replace(boxes=expected)
        assert outs["frcnn"][index] == plain[index]
        assert got.image_size == outs["frcnn@x0.75"][index].image_size == tuple(image.shape[1:])
    # Three virtual members are fused: a fused box gets votes from up to three of them.
    fused = tta_ensemble.fuse(list(outs.values()))
    assert all(1 <= int(d.extras["votes"].max()) <= 3 for d in fused)
