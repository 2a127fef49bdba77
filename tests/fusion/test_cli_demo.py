"""``fusion demo --simulated``: generated data + simulated members -> the same numbers as ``fusion fuse`` on those files."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pytest

from fusion.cli import main
from fusion.coco.evaluate import STAT_KEYS
from fusion.demo.assets import ASSETS_DIR, MANIFEST

MEMBERS = ("sharp", "careful", "noisy")
ARGS = ["--images", "40", "--seed", "3", "--no-plots"]


def _demo(argv: list[str]) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        status = main(["demo", "--simulated", *argv])
    return status, out.getvalue()


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str]:
    project = tmp_path_factory.mktemp("demo")
    status, printed = _demo([*ARGS, "--project", str(project)])
    assert status == 0
    return project, project / "demo" / "demo", printed


def _metrics(folder: Path) -> dict:
    return json.loads((folder / "metrics.json").read_text())


def test_demo_writes_data_and_scores_every_member(demo) -> None:
    _, out, printed = demo
    data = out / "data"
    assert sorted(p.name for p in data.iterdir()) == sorted(
        ["annotations.json", *(f"{m}.json" for m in MEMBERS)]
    )
    for name in ("metrics.json", "fused.json", "report.md", "config.yaml"):
        assert (out / name).is_file(), name
    assert not list(out.glob("*.png"))  # --no-plots
    metrics = _metrics(out)
    assert list(metrics["members"]) == list(MEMBERS)
    for entry in [*metrics["members"].values(), metrics["fused"]]:
        assert set(STAT_KEYS) <= set(entry)
        assert all(isinstance(entry[k], float) for k in STAT_KEYS)
    assert metrics["policy"]["type"] == "wbf" and metrics["num_images"] == 40
    ground_truth = json.loads((data / "annotations.json").read_text())
    assert len(ground_truth["images"]) == 40 and len(ground_truth["annotations"]) > 100
    assert "**fused**" in printed and str(out) in printed and "fusion fuse" in printed


def test_demo_equals_fuse_files_on_its_own_data(demo) -> None:
    from fusion.scoring.fuse_files import fuse_files

    project, out, _ = demo
    data = out / "data"
    direct = fuse_files(
        [data / f"{m}.json" for m in MEMBERS],
        data / "annotations.json",
        name="direct",
        root=project,
        plots=False,
        verbose=False,
    )
    assert direct == project / "fuse" / "direct"
    ours, theirs = _metrics(out), _metrics(direct)
    assert ours["fused"]["AP"] == theirs["fused"]["AP"]
    assert {k: ours["fused"][k] for k in STAT_KEYS} == {k: theirs["fused"][k] for k in STAT_KEYS}
    assert ours["members"] == theirs["members"]
    assert (out / "fused.json").read_bytes() == (direct / "fused.json").read_bytes()


def test_fusion_beats_the_worst_member(demo) -> None:
    metrics = _metrics(demo[1])
    worst = min(entry["AP"] for entry in metrics["members"].values())
    assert metrics["fused"]["AP"] > worst


def test_same_seed_same_files_and_no_overwrite(demo) -> None:
    project, out, _ = demo
    status, _ = _demo([*ARGS, "--project", str(project)])
    assert status == 0
    again = project / "demo" / "demo2"  # the first run's folder is kept
    for name in ("annotations.json", *(f"{m}.json" for m in MEMBERS)):
        assert (again / "data" / name).read_bytes() == (out / "data" / name).read_bytes(), name
    assert _metrics(again)["fused"] == _metrics(out)["fused"]


def test_policy_option_and_other_seed(tmp_path: Path) -> None:
    argv = ["--images", "20", "--seed", "4", "--no-plots", "--project", str(tmp_path), "--name", "nms"]
    status, _ = _demo([*argv, "--policy", "nms", "iou_thr=0.5"])
    assert status == 0
    out = tmp_path / "demo" / "nms"
    assert _metrics(out)["policy"]["type"] == "nms"
    assert _metrics(out)["policy"]["iou_thr"] == 0.5
    other = json.loads((out / "data" / "annotations.json").read_text())
    assert len(other["images"]) == 20


@pytest.mark.parametrize("bad", [["--policy", "wbf", "iou_thr"], ["--images", "0"]])
def test_user_errors_are_one_line_and_write_nothing(
    tmp_path: Path, bad: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["demo", "--simulated", "--project", str(tmp_path), *bad]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("fusion demo: error:") and "\n" not in err
    assert not (tmp_path / "demo").exists()


@pytest.mark.skipif(
    (ASSETS_DIR / MANIFEST).exists(), reason="this build ships trained members: the real demo runs instead"
)
def test_without_shipped_members_the_first_command_runs_the_simulated_demo(tmp_path: Path, capsys) -> None:
    code = main(["demo", "--images", "12", "--no-plots", "--project", str(tmp_path), "--name", "first"])
    assert code == 0
    assert "ships no trained members yet" in capsys.readouterr().err
    metrics = json.loads((tmp_path / "demo" / "first" / "metrics.json").read_text())
    # the simulated members, as `fusion demo --simulated` names them
    assert {"sharp", "careful", "noisy"} <= set(metrics["members"])
