"""Image modes are converted by scaling, not clipping (issue 13 D5), and an extreme aspect ratio is named."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fusion.images import load_image, load_images, to_image_tensor

RAMP16 = np.linspace(0, 65535, 160).round().astype(np.uint16)[None].repeat(12, 0)  # [12, 160] 0..65535


def _expected_8bit(values: np.ndarray) -> torch.Tensor:
    """Hand rule: v * 255 / 65535 rounded half up, grey repeated to 3 channels, [3, H, W]."""
    grey = np.floor(values.astype(np.float64) * 255 / 65535 + 0.5).astype(np.uint8)
    return torch.from_numpy(grey)[None].repeat(3, 1, 1)


def test_16bit_png_is_scaled_not_clipped(tmp_path: Path) -> None:
    path = tmp_path / "g.png"
    Image.fromarray(RAMP16).save(path)
    assert Image.open(path).mode.startswith("I")  # PIL opens it as 16-bit
    image = load_image(path)
    assert torch.equal(image, _expected_8bit(RAMP16))
    assert float((image == 255).float().mean()) < 0.01  # was 99.4 % before the fix
    assert int(image[0, 0, 80]) in (127, 128)  # mid-grey stays mid-grey


def test_32bit_integer_and_uint16_numpy_are_scaled() -> None:
    as_int32 = Image.fromarray(RAMP16.astype(np.int32), mode="I")
    expected = _expected_8bit(RAMP16).float() / 255
    assert torch.equal(to_image_tensor(as_int32), expected)
    assert torch.equal(to_image_tensor(RAMP16), expected)
    rgb16 = np.stack([RAMP16, RAMP16[:, ::-1], np.full_like(RAMP16, 65535)], axis=2)
    out = to_image_tensor(rgb16)
    assert torch.equal(out[0], expected[0]) and torch.equal(out[1], expected[0].flip(1))
    assert bool((out[2] == 1.0).all())


def test_float_mode_in_0_1_is_scaled_and_outside_is_named() -> None:
    values = np.linspace(0, 1, 50, dtype=np.float32)[None].repeat(4, 0)
    out = to_image_tensor(Image.fromarray(values, mode="F"))
    assert torch.equal(out[1], torch.from_numpy(np.rint(values * 255).astype(np.uint8)).float() / 255)
    with pytest.raises(
        ValueError, match=r"img: a 32-bit float image \(mode F\) must hold values in \[0, 1\], got"
    ):
        to_image_tensor(Image.fromarray(values * 5, mode="F"), where="img")


@pytest.mark.parametrize("mode", ["1", "L", "P", "LA", "RGBA", "CMYK", "YCbCr"])
def test_8bit_modes_follow_pils_rgb_conversion(mode: str) -> None:
    rgb = Image.fromarray(np.random.default_rng(0).integers(0, 256, (9, 11, 3), dtype=np.uint8))
    image = rgb.convert(mode)
    reference = torch.from_numpy(np.asarray(image.convert("RGB")).copy()).permute(2, 0, 1).float() / 255
    assert torch.equal(to_image_tensor(image), reference)


def test_too_elongated_image_is_named_by_the_torchvision_member(tmp_path: Path) -> None:
    # issue 13: a 1 x 20000 image gave torchvision's RuntimeError from inside its resize
    from detectors.torchvision_detector import TorchvisionDetector
    from fusion.classes import ClassMap

    path = tmp_path / "wide.png"
    Image.fromarray(np.zeros((1, 20000, 3), np.uint8)).save(path)
    config = TorchvisionDetector.Config(
        name="tv", model="fasterrcnn_mobilenet_v3_large_320_fpn", weights=None, min_size=160, max_size=320
    )
    detector = TorchvisionDetector(config, ClassMap.load("coco80"), torch.device("cpu"))
    with pytest.raises(ValueError, match=r"member 'tv': .*wide\.png \(1x20000 pixels\) is too elongated"):
        detector.predict(load_images([path]))
    Image.fromarray(np.zeros((20, 400, 3), np.uint8)).save(tmp_path / "ok.png")  # 20 x 400 -> 16 x 320: fine
    assert len(detector.predict(load_images([tmp_path / "ok.png"]))) == 1
