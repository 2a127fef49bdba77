"""Image loading: every accepted form gives the same float tensor; bad input names the image."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fusion.images import expand_sources, load_images, to_image_tensor


@pytest.fixture()
def rgb() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (13, 17, 3), dtype=np.uint8)


def test_every_form_gives_the_same_tensor(rgb: np.ndarray, tmp_path: Path) -> None:
    path = tmp_path / "a.png"
    Image.fromarray(rgb).save(path)
    expected = torch.from_numpy(rgb).permute(2, 0, 1).float() / 255
    forms = [
        str(path),
        path,
        Image.open(path),
        rgb,
        torch.from_numpy(rgb).permute(2, 0, 1),
        torch.from_numpy(rgb).permute(2, 0, 1).double() / 255,
    ]
    batch = load_images(forms)
    assert batch.sizes == [(13, 17)] * len(forms)
    assert batch.paths == [str(path), str(path), None, None, None, None]
    assert batch.image_ids == list(range(len(forms)))
    for image in batch.images:
        assert image.dtype == torch.float32 and image.shape == (3, 13, 17)
        torch.testing.assert_close(image, expected, rtol=0, atol=1e-7)


def test_grey_and_palette_images_become_rgb(tmp_path: Path) -> None:
    grey = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    out = to_image_tensor(grey)
    assert out.shape == (3, 3, 4) and torch.equal(out[0], out[2])
    assert float(out[0, 2, 3]) == pytest.approx(220 / 255)
    Image.fromarray(grey, mode="L").convert("P").save(tmp_path / "p.png")
    assert to_image_tensor(tmp_path / "p.png").shape == (3, 3, 4)


def test_a_4d_tensor_is_a_batch_and_ids_are_kept() -> None:
    batch = load_images(torch.rand(2, 3, 8, 9), image_ids=[10, 11])
    assert len(batch) == 2 and batch.image_ids == [10, 11] and batch.sizes == [(8, 9), (8, 9)]


def test_unreadable_and_missing_files_are_named(tmp_path: Path) -> None:
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image at all")
    with pytest.raises(ValueError, match=r"cannot read image file .*broken\.jpg"):
        load_images([broken])
    with pytest.raises(FileNotFoundError, match=r"image file .*missing\.png does not exist"):
        load_images(tmp_path / "missing.png")


@pytest.mark.parametrize(
    ("image", "message"),
    [
        (np.zeros((4, 4, 3), dtype=np.float32), r"images\[1\]: numpy images must be uint8"),
        (np.zeros((4, 4, 4), dtype=np.uint8), r"images\[1\]: numpy images must be \[H, W, 3\]"),
        (torch.zeros(4, 4, 3), r"images\[1\]: a tensor image must be \[3, H, W\]"),
        (
            torch.full((3, 4, 4), 255.0),
            r"images\[1\]: float image values must lie in \[0, 1\], got \[255, 255\]",
        ),
        (torch.zeros(3, 4, 4, dtype=torch.int32), r"images\[1\]: tensor dtype torch.int32 is not supported"),
        ([1, 2, 3], r"images\[1\]: unsupported image type list"),
    ],
)
def test_bad_images_name_their_position(image: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        load_images([torch.zeros(3, 2, 2), image])


def test_expand_sources(tmp_path: Path) -> None:
    (tmp_path / "d" / "sub").mkdir(parents=True)
    for name in ("d/b.png", "d/a.jpg", "d/sub/c.png", "d/notes.txt"):
        (tmp_path / name).write_bytes(b"x")
    found = expand_sources([tmp_path / "d", tmp_path / "d" / "a.jpg", str(tmp_path / "d" / "*.png")])
    assert found == [tmp_path / "d" / "a.jpg", tmp_path / "d" / "b.png", tmp_path / "d" / "sub" / "c.png"]
    with pytest.raises(FileNotFoundError, match=r"nothing\.png is not a file"):
        expand_sources([tmp_path / "nothing.png"])
    with pytest.raises(FileNotFoundError, match=r"matches no file"):
        expand_sources([str(tmp_path / "*.gif")])


def test_unreadable_file_is_a_value_error_even_after_ultralytics_patched_pil(tmp_path: Path) -> None:
    # ultralytics wraps PIL.Image.open to pip-install pi-heif on unknown files; we must not go through it.
    pytest.importorskip("ultralytics")
    from PIL import Image as PILImage

    assert PILImage.open.__module__ == "ultralytics.utils.patches"
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x00" * 64)
    with pytest.raises(ValueError, match=r"cannot read image file .*broken\.png"):
        load_images([broken])
