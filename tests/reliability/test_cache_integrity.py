"""The run cache trusts only the bytes it wrote: a deleted, truncated or edited member file is run again, an unreadable
checkpoint is named, and a second process cannot write into a run folder another one holds."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fusion.cli import main
from fusion.scoring import score
from fusion.scoring.cache import CacheMismatchWarning, JsonlCache, MemberCache
from fusion.synthetic import synthetic_annotations, synthetic_predictions

FINGERPRINT = {"config": "x", "images": [1, 2, 3]}


def _filled(folder: Path) -> JsonlCache:
    cache = JsonlCache(folder, ["a", "b"], FINGERPRINT)
    assert cache.open() == 0
    cache.append_bytes({"a": b'{"n": 1}\n', "b": b'{"n": 10}\n{"n": 11}\n'}, done=2)
    cache.append_bytes({"a": b'{"n": 2}\n', "b": b""}, done=4)  # b had nothing in this batch
    return cache


def test_checkpoint_records_length_and_sha256_of_the_written_bytes(tmp_path: Path) -> None:
    _filled(tmp_path)
    progress = json.loads((tmp_path / "progress.json").read_text())
    written = {"a": b'{"n": 1}\n{"n": 2}\n', "b": b'{"n": 10}\n{"n": 11}\n'}
    assert progress["done"] == 4
    assert progress["streams"] == {
        name: {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest(), "done": 4}
        for name, data in written.items()
    }


def test_resume_cuts_an_unrecorded_tail_and_keeps_hashing(tmp_path: Path) -> None:
    _filled(tmp_path)
    with open(tmp_path / "a.jsonl", "ab") as handle:  # a batch being appended when the run was killed
        handle.write(b'{"n": 3, "bro')
    cache = JsonlCache(tmp_path, ["a", "b"], FINGERPRINT)
    assert cache.open() == 4
    assert (tmp_path / "a.jsonl").read_bytes() == b'{"n": 1}\n{"n": 2}\n'
    cache.append_bytes({"a": b'{"n": 3}\n', "b": b""}, done=6)
    again = JsonlCache(tmp_path, ["a", "b"], FINGERPRINT)
    assert again.open() == 6  # the digest continued from the verified prefix
    assert again.read_lines("a") == ['{"n": 1}', '{"n": 2}', '{"n": 3}']


@pytest.mark.parametrize(
    ("damage", "said"),
    [
        (lambda p: p.unlink(), "is missing"),
        (lambda p: p.write_bytes(p.read_bytes()[:5]), "is shorter (5 bytes)"),
        (lambda p: p.write_bytes(b"\0" * len(p.read_bytes())), "SHA-256 mismatch"),  # the old padding
        (lambda p: p.write_bytes(p.read_bytes().replace(b"1", b"7")), "SHA-256 mismatch"),
    ],
    ids=["deleted", "truncated", "zeroed", "edited"],
)
def test_a_damaged_stream_restarts_the_run(tmp_path: Path, damage, said: str) -> None:
    _filled(tmp_path)
    damage(tmp_path / "b.jsonl")
    cache = JsonlCache(tmp_path, ["a", "b"], FINGERPRINT)
    with pytest.warns(CacheMismatchWarning) as caught:
        assert cache.open() == 0
    message = str(caught[0].message)
    assert str(tmp_path / "b.jsonl") in message and said in message
    assert "running every image again" in message
    assert (tmp_path / "a.jsonl").read_bytes() == b"" and (tmp_path / "b.jsonl").read_bytes() == b""
    assert json.loads((tmp_path / "progress.json").read_text())["done"] == 0


def test_an_independent_stream_is_redone_alone(tmp_path: Path) -> None:
    cache = MemberCache(tmp_path, ["a", "b"], FINGERPRINT)
    cache.open()
    cache.append_bytes({"a": b'{"n": 1}\n', "b": b'{"n": 10}\n'}, done=2)
    cache.append_bytes({"a": b'{"n": 2}\n', "b": b""}, done=4)
    (tmp_path / "a.jsonl").write_bytes(b'{"n": 1}\n')  # cut back by hand
    again = MemberCache(tmp_path, ["a", "b"], FINGERPRINT)
    with pytest.warns(CacheMismatchWarning, match="running member 'a' on its images again"):
        assert again.open() == 0
    assert again.done_by == {"a": 0, "b": 4}
    assert (tmp_path / "a.jsonl").read_bytes() == b"" and again.read_lines("b") == ['{"n": 10}']
    again.append_bytes({"a": b'{"n": 1}\n{"n": 2}\n'}, done=4)  # a catches up alone
    final = MemberCache(tmp_path, ["a", "b"], FINGERPRINT)
    assert final.open() == 4 and final.read_lines("a") == ['{"n": 1}', '{"n": 2}']


@pytest.mark.parametrize("content", [b"", b"{not json", b"\xff\xfe{}", b"[1, 2]", b'{"done": "4"}'])
def test_an_unreadable_checkpoint_is_named(tmp_path: Path, content: bytes) -> None:
    (tmp_path / "progress.json").write_bytes(content)
    with pytest.raises(ValueError, match=r"progress\.json: the run's checkpoint") as info:
        JsonlCache(tmp_path, ["a"], FINGERPRINT).open()
    assert "--no-resume" in str(info.value)


def test_a_checkpoint_of_the_old_format_is_not_trusted(tmp_path: Path) -> None:
    (tmp_path / "a.jsonl").write_bytes(b"\0" * 40)
    old = {
        "fingerprint": JsonlCache(tmp_path, ["a"], FINGERPRINT).fingerprint,
        "done": 4,
        "offsets": {"a": 40},
    }
    (tmp_path / "progress.json").write_text(json.dumps(old))
    with pytest.warns(CacheMismatchWarning, match="another version"):
        assert JsonlCache(tmp_path, ["a"], FINGERPRINT).open() == 0
    assert (tmp_path / "a.jsonl").read_bytes() == b""


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("cache_score")
    data = synthetic_annotations(num_images=6, coco_ids=True, image_size=(48, 64), seed=3)
    (folder / "images").mkdir()
    rng = np.random.default_rng(1)
    for image in data["images"]:
        pixels = rng.integers(0, 256, (image["height"], image["width"], 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / "images" / image["file_name"])
    (folder / "gt.json").write_text(json.dumps(data))
    synthetic_predictions(data, detections_per_image=10, seed=1).save(folder / "a.json")
    synthetic_predictions(data, detections_per_image=10, seed=2).save(folder / "b.json")
    config = {
        "name": "replay",
        "classes": "coco80",
        "device": "cpu",
        "batch_size": 2,
        "members": [
            {"name": m, "type": "predictions", "path": str(folder / f"{m}.json"), "classes": "coco91"}
            for m in ("a", "b")
        ],
    }
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def _score(folder: Path, name: str, **kwargs) -> dict:
    config = json.loads((folder / "config.json").read_text())
    common = {"root": folder / "runs", "plots": False, "verbose": False, "num_workers": 0}
    return score(config, folder / "gt.json", folder / "images", name=name, **common, **kwargs)


@pytest.mark.parametrize("damage", ["rm", "truncate"])
def test_score_reruns_a_deleted_or_truncated_member_cache(dataset: Path, damage: str) -> None:
    full = _score(dataset, f"full_{damage}")
    member = dataset / "runs" / "score" / f"full_{damage}" / "cache" / "b.jsonl"
    if damage == "rm":
        member.unlink()
    else:
        member.write_bytes(member.read_bytes()[: member.stat().st_size // 2])
    kept = (member.parent / "a.jsonl").read_bytes()
    ran = []
    with pytest.warns(CacheMismatchWarning, match=r"b\.jsonl .*running member 'b' on its images again"):
        again = _score(dataset, f"full_{damage}", on_batch=ran.append)
    assert ran == [2, 4, 6]  # b ran again on every image; a's cache was kept as it was
    assert (member.parent / "a.jsonl").read_bytes() == kept
    assert full["num_detections"]["b"] == 60
    for key in ("members", "fused", "num_detections", "per_class_ap"):
        assert again[key] == full[key], key


def test_a_second_process_cannot_score_into_a_held_run(
    dataset: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = dataset / "runs"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from fusion.io import run_dir; run_dir('score', 'held', sys.argv[1], exist_ok=True); "
            "print('held', flush=True); sys.stdin.read()",
            str(root),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        argv = ["score", "--config", str(dataset / "config.json"), "--annotations", str(dataset / "gt.json")]
        argv += ["--images", str(dataset / "images"), "--name", "held", "--project", str(root), "--no-plots"]
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert f"in use by another run (pid {holder.pid})" in err and "Traceback" not in err
        assert not (root / "score" / "held" / "cache").exists()  # nothing was written
    finally:
        holder.communicate("")
    assert main(argv) == 0  # released with its process
