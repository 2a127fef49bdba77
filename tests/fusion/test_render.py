"""``fusion.synthetic.render`` and ``fusion render``: deterministic bytes, valid COCO, the occlusion rule, resuming."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from pycocotools.coco import COCO

from fusion.cli import main
from fusion.synthetic.render import CLASSES, encode_png, render_dataset, render_split_image
from fusion.synthetic.render_draw import Shape, cos_sin, coverage, sample_shape
from fusion.synthetic.render_scene import RenderConfig

SMALL = {"train": 10, "val": 4, "test": 0, "unlabeled": 3}
# Pixels of two fixed images: any change to the renderer's maths, its random draws or numpy's PCG64 shows here.
GOLDEN = {
    (0, "train", 0): "4e9cc56a451338f442ccf11003a95eebc6180e25733a467c26bce3b4c1ce58f4",
    (7, "test", 3): "d0a58cfca2ba932e6d5a519531f097d745d31c9edb55244aed1243c4beaad9fb",
}


def _files(root: Path) -> dict[str, bytes]:
    # .lock holds the pid of the process that wrote the run folder: run metadata, not rendered data
    files = (p for p in sorted(root.rglob("*")) if p.is_file() and p.name != ".lock")
    return {str(p.relative_to(root)): p.read_bytes() for p in files}


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("render") / "a"
    return out, render_dataset(out, seed=3, splits=SMALL)


def test_same_seed_same_bytes_other_seed_other_bytes(rendered, tmp_path: Path) -> None:
    out, _ = rendered
    again = render_dataset(tmp_path / "b", seed=3, splits=SMALL)
    first, second = _files(out), _files(tmp_path / "b")
    assert sorted(first) == sorted(second)
    assert len([k for k in first if k.endswith(".png")]) == 17
    assert first == second
    assert set(again) == {"train", "val", "unlabeled"}
    render_dataset(tmp_path / "c", seed=4, splits=SMALL)
    other = _files(tmp_path / "c")
    differing = [k for k in first if k.endswith(".png") and first[k] != other[k]]
    assert len(differing) == 17
    assert (
        json.loads(first["train/annotations.json"])["annotations"]
        != json.loads(other["train/annotations.json"])["annotations"]
    )


@pytest.mark.parametrize("key", sorted(GOLDEN))
def test_pixels_match_the_recorded_digest(key) -> None:
    assert hashlib.sha256(render_split_image(*key).pixels).hexdigest() == GOLDEN[key]


def test_an_image_does_not_depend_on_the_split_size_or_the_workers(rendered, tmp_path: Path) -> None:
    out, _ = rendered
    render_dataset(tmp_path / "w", seed=3, splits={"train": 4}, workers=2)
    for i in range(4):
        name = f"train/images/{i:06d}.png"
        assert (tmp_path / "w" / name).read_bytes() == (out / name).read_bytes()
    assert (
        render_split_image(3, "val", 2).pixels.tobytes()
        == np.asarray(Image.open(out / "val/images/000002.png")).tobytes()
    )


@pytest.mark.parametrize("level", [0, 1, 9])
def test_png_encoder_round_trips(level: int) -> None:
    pixels = np.random.default_rng(level).integers(0, 256, (37, 70000 // 111 + 5, 3), dtype=np.uint8)
    data = encode_png(pixels, level)
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(data))), pixels)
    if level == 0:  # stored blocks: raw size plus 5 bytes per 65535-byte block, header and checksum
        raw = pixels.shape[0] * (1 + 3 * pixels.shape[1])
        assert len(data) == 8 + 25 + 12 + 12 + 2 + raw + 5 * math.ceil(raw / 65535) + 4
    with pytest.raises(ValueError, match="compress_level"):
        encode_png(pixels, 10)


def test_annotations_are_valid_coco(rendered) -> None:
    out, paths = rendered
    for split in ("train", "val"):
        annotations, images_dir = paths[split]
        with contextlib.redirect_stdout(io.StringIO()):
            coco = COCO(str(annotations))
        assert sorted(coco.getImgIds()) == list(range(1, SMALL[split] + 1))
        assert coco.getCatIds() == list(range(1, 9))
        assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == list(CLASSES)
        ann_ids = sorted(coco.getAnnIds())
        assert ann_ids == list(range(1, len(ann_ids) + 1)) and ann_ids
        for image in coco.loadImgs(coco.getImgIds()):
            with Image.open(images_dir / image["file_name"]) as png:
                assert png.size == (image["width"], image["height"]) == (128, 128)
        for ann in coco.loadAnns(ann_ids):
            x, y, w, h = ann["bbox"]
            assert 0 <= x and 0 <= y and w >= 1 and h >= 1 and x + w <= 128 and y + h <= 128
            assert ann["area"] == w * h > 0 and ann["iscrowd"] == 0
    unlabeled = json.loads(paths["unlabeled"][0].read_text())
    assert len(unlabeled["images"]) == 3 and unlabeled["annotations"] == []
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["summary"]["train"]["objects"] == len(
        json.loads(paths["train"][0].read_text())["annotations"]
    )


def test_classes_are_balanced_and_all_sizes_occur() -> None:
    labels, areas, sides = [], [], []
    for i in range(200):
        out = render_split_image(11, "train", i)
        labels += out.labels.tolist()
        w, h = out.boxes[:, 2] - out.boxes[:, 0], out.boxes[:, 3] - out.boxes[:, 1]
        areas += (w * h).tolist()
        sides += np.maximum(w, h).tolist()
    counts = np.bincount(labels, minlength=len(CLASSES))
    assert counts.min() > 0.75 * counts.mean() and counts.max() < 1.25 * counts.mean()
    areas = np.asarray(areas)
    # COCO's size ranges: small < 32^2 <= medium < 96^2 <= large.
    small, large = (areas < 32**2).mean(), (areas >= 96**2).mean()
    assert small > 0.3 and 1 - small - large > 0.2 and 5 <= (areas >= 96**2).sum()
    assert min(sides) <= 10 and max(sides) >= 110  # RenderConfig.min_size 10 (less where the border cuts)


def test_boxes_follow_the_visible_pixel_rule() -> None:
    cfg = RenderConfig(min_visible=0.6)
    occluded = truncated = 0
    for i in range(60):
        out = render_split_image(5, "train", i, cfg)
        assert out.pixels.shape == (128, 128, 3) and out.pixels.dtype == np.uint8
        for j, box in enumerate(out.boxes.tolist()):
            ys, xs = np.nonzero(out.owner == j)
            assert box == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
        assert np.all(out.visible >= 0.6) and np.all(out.visible <= 1.0)
        occluded += int((out.visible < 0.95).sum())
        truncated += int(((out.boxes[:, :2] == 0) | (out.boxes[:, 2:] == 128)).any(axis=1).sum())
        assert set(np.unique(out.owner).tolist()) <= {-2, -1, *range(len(out.boxes))}
    assert occluded >= 10 and truncated >= 5


@pytest.mark.parametrize("size", [32, 64, 200])
def test_other_image_sizes(size: int) -> None:
    cfg = RenderConfig(image_size=size)
    sides = []
    for i in range(20):
        out = render_split_image(2, "val", i, cfg)
        assert out.pixels.shape == (size, size, 3) and out.owner.shape == (size, size)
        assert np.all(out.boxes[:, :2] >= 0) and np.all(out.boxes[:, 2:] <= size)
        assert np.all(out.boxes[:, 2:] > out.boxes[:, :2])
        sides += (out.boxes[:, 2:] - out.boxes[:, :2]).max(axis=1).tolist()
    assert max(sides) > size // 2


@settings(max_examples=40, deadline=None)
@given(
    kind=st.sampled_from(["circle", "square", "ellipse", "ring"]),
    radius=st.floats(3.0, 40.0),
    turn=st.floats(0.0, 1.0),
)
def test_coverage_area_matches_the_shape(kind: str, radius: float, turn: float) -> None:
    c, s = cos_sin(2.0 * math.pi * turn)
    shape = sample_shape(np.random.default_rng(0), kind, radius)
    shape = Shape(kind, radius, c, s, shape.params)
    inner = shape.params[0] if shape.params else 0.0
    unit_area = {"circle": math.pi, "square": (2 * 0.72) ** 2, "ellipse": math.pi * inner}.get(kind)
    unit_area = math.pi * (1 - inner**2) if kind == "ring" else unit_area
    side = math.ceil(2 * radius) + 4
    area = coverage(shape, side / 2, side / 2, 0, 0, side, side).sum() / 4.0
    # Sampling error of 2 x 2 points per pixel grows with the perimeter (measured: under 0.91 x radius).
    assert abs(area - unit_area * radius**2) <= 1.5 * radius


def test_cos_sin_matches_math() -> None:
    for angle in np.linspace(-20.0, 20.0, 401).tolist():
        c, s = cos_sin(angle)
        assert abs(c - math.cos(angle)) < 1e-13 and abs(s - math.sin(angle)) < 1e-13


def test_a_killed_render_resumes_to_the_same_files(rendered, tmp_path: Path) -> None:
    out, _ = rendered
    target = tmp_path / "k"
    render_dataset(target, seed=3, splits=SMALL)
    # As if killed while rendering val: no manifest, val not renamed into place, a half-written partial folder.
    (target / "manifest.json").unlink()
    (target / "val").rename(target / ".val.partial")
    (target / ".val.partial" / "images" / "000001.png").write_bytes(b"half")
    (target / "train" / "images" / "000000.png").unlink()  # a complete split is trusted: kept as it is
    render_dataset(target, seed=3, splits=SMALL)
    files = _files(target)
    assert not (target / ".val.partial").exists() and "train/images/000000.png" not in files
    assert {k: v for k, v in _files(out).items() if k != "train/images/000000.png"} == files


def test_a_complete_render_is_reused_and_never_silently_replaced(rendered, tmp_path: Path) -> None:
    target = tmp_path / "r"
    render_dataset(target, seed=3, splits={"train": 2})
    (target / "train" / "marker").write_text("kept")
    render_dataset(target, seed=3, splits={"train": 2})
    assert (target / "train" / "marker").read_text() == "kept"
    with pytest.raises(ValueError, match="manifest.json"):
        render_dataset(target, seed=4, splits={"train": 2})
    render_dataset(target, seed=4, splits={"train": 2}, overwrite=True)
    assert not (target / "train" / "marker").exists()
    assert json.loads((target / "manifest.json").read_text())["splits"]["train"]["seed"] == 4


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"seed": -1}, "seed"),
        ({"splits": {"train": -2}}, r"splits\['train'\]"),
        ({"splits": {"tr/ain": 2}}, "split name"),
        ({"splits": {"train": 0}}, "no split has images"),
        ({"compress_level": 11}, "compress_level"),
        ({"image_size": 8}, "RenderConfig.image_size"),
    ],
)
def test_bad_arguments_are_named(kwargs: dict, message: str, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=message):
        render_dataset(tmp_path / "bad", **kwargs)


def _cli(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = main(["render", *argv])
    return status, out.getvalue(), err.getvalue()


def test_cli_writes_the_layout_and_a_preview(rendered, tmp_path: Path) -> None:
    out, _ = rendered
    args = ["--project", str(tmp_path), "--seed", "3", "--train", "10", "--val", "4", "--test", "0"]
    status, printed, _ = _cli([*args, "--name", "x", "--unlabeled", "3"])
    run = tmp_path / "render" / "x"
    assert status == 0 and str(run / "preview.png") in printed
    files = _files(run)
    preview = files.pop("preview.png")
    assert files == _files(out)  # the library call and the CLI render the same files
    with Image.open(
        io.BytesIO(preview)
    ) as image:  # legend band of 48 px, then 3 rows of 4 (256 + 2)-px tiles
        assert image.size == (4 * 258, 48 + 3 * 258)
    status, _, _ = _cli([*args, "--name", "x", "--no-preview"])
    assert status == 0 and (tmp_path / "render" / "x2" / "manifest.json").exists()
    assert not (tmp_path / "render" / "x2" / "preview.png").exists()
    status, _, err = _cli([*args, "--name", "y", "--train", "-3"])
    assert status == 2 and "--train: must be non-negative, got -3" in err
