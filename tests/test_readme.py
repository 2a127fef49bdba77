"""Every fenced block of README.md runs as printed (issue 13, item 9).

- ``python`` blocks are executed in a temporary working folder (``readme_dir``: it holds the small files the blocks
  name and a link to the repository's ``configs/``), except the ones in ``PYTHON_COMPILE_ONLY`` (CPU hours), whose
  configs and calls are checked instead.
- ``yaml`` blocks are validated by the project's own loader for what they are (ensemble, train, distill config); an
  ensemble whose members need no files (random init) is also built.
- ``bash`` blocks: every ``fusion ...`` command is parsed by the real CLI parser, and every ``--config`` it names that
  exists here is validated by its verb's loader. The commands in ``RUN`` are run through ``fusion.cli.main`` in
  ``readme_dir``, on generated data, with the argument substitutions listed there (smaller counts); those in
  ``PARSE_ONLY`` need user data or CPU hours, with the reason beside each. Other commands must be in ``NOT_FUSION``.

A block or command the tables do not know fails ``test_every_block_is_known``: a new README block must be added here.
"""

from __future__ import annotations

import ast
import glob
import inspect
import json
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import pytest

from fusion.cli import build_parser, main

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


@dataclass(frozen=True)
class Block:
    lang: str
    text: str
    line: int  # 1-based line of the opening fence


def readme_blocks() -> list[Block]:
    text = README.read_text(encoding="utf-8")
    blocks = []
    for match in re.finditer(r"^```(\w*)\n(.*?)^```$", text, re.M | re.S):
        blocks.append(Block(match[1], match[2], text.count("\n", 0, match.start()) + 1))
    return blocks


def block_commands(block: Block) -> list[tuple[list[str], str]]:
    """The commands of a bash block: ``(argv, comment)``, env assignments dropped, ``&&`` chains split."""
    commands = []
    for raw in block.text.replace("\\\n", " ").splitlines():
        code, _, comment = raw.partition("#")
        tokens = shlex.split(code)
        while tokens and re.fullmatch(r"[A-Z_]+=\S*", tokens[0]):
            tokens.pop(0)
        current: list[str] = []
        for token in [*tokens, "&&"]:
            if token == "&&":
                if current:
                    commands.append((current, comment.strip()))
                current = []
            else:
                current.append(token)
    return commands


# Commands that are not ours: not run here.
NOT_FUSION = {
    "pip install -e .[dev]": "installs the package: the test runs inside the installed package",
    "pytest": "runs the test suite this test belongs to",
}

# The path/count table: a printed token -> the tokens run instead (fewer images and trials; the files the printed
# paths name are made by `readme_dir`). What is printed is parsed unchanged (test_bash_parses).
SMALL_RENDER = {"4000": ["6"], "500": ["3"]}

# command as printed -> (substitutions, prerequisite command run first in the same folder, slow)
RUN: dict[str, tuple[dict[str, list[str]], str | None, bool]] = {
    "fusion demo": ({}, None, False),  # no shipped members: the simulated demo, with a notice on stderr
    "fusion list policies": ({}, None, False),
    "fusion list detectors": ({}, None, False),
    "fusion check": ({}, None, False),
    "fusion predict --config configs/ensembles/tiny.yaml images/*.jpg": ({}, None, True),
    "fusion fuse member_a.json member_b.json --annotations val.json --policy wbf iou_thr=0.6": (
        {},
        None,
        False,
    ),
    "fusion tune member_a.json member_b.json --annotations val.json --policies wbf,voting": (
        {"--policies": ["--trials", "3", "--policies"]},
        None,
        True,
    ),
    "fusion tune a.json b.json c.json --annotations val.json --policies wbf,voting,soft_nms --trials 40": (
        {"40": ["3"]},
        None,
        True,
    ),
    "fusion fuse --config runs/tune/tune/best.yaml --annotations test.json": (
        {},
        "fusion tune a.json b.json c.json --annotations val.json --policies wbf,voting,soft_nms --trials 40",
        True,
    ),
    "fusion score --config runs/tune/tune/best.yaml --annotations test.json": (
        {},
        "fusion tune a.json b.json c.json --annotations val.json --policies wbf,voting,soft_nms --trials 40",
        True,
    ),
    "fusion render --name shapes --train 4000 --val 500 --test 500 --unlabeled 4000": (
        SMALL_RENDER,
        None,
        False,
    ),
}

HOURS = "trains for CPU hours"
NO_WEIGHTS = "needs the trained weights of the training section (not in the repository)"
PARSE_ONLY = {
    "fusion score --config configs/ensembles/coco.yaml --annotations instances_val2017.json --images val2017/": (
        "needs COCO val2017 and torchvision's pretrained weights (no internet here)"
    ),
    "fusion calibrate --config C --annotations A": "C and A are placeholders; needs a score run's cache of C",
    "fusion score --config ens.yaml --annotations val.json --images val/": "ens.yaml: the user's ensemble and data",
    "fusion calibrate --config ens.yaml --annotations val.json": "needs the score run above on the user's data",
    "fusion train --config configs/train/yolo11n-shapes.yaml": HOURS,
    "fusion train --config configs/train/yolov8n-shapes.yaml": HOURS,
    "fusion train --config configs/train/detr.yaml": HOURS,
    "fusion train --config configs/train/detr-fast.yaml": HOURS,
    "fusion score --config configs/ensembles/shapes.yaml --annotations runs/render/shapes/val/annotations.json "
    "--images runs/render/shapes/val/images": NO_WEIGHTS,
    "fusion distill --config configs/distill/ensemble_teacher_yolo.yaml --unlabeled "
    "runs/render/shapes/unlabeled/images": HOURS,
    "fusion distill --config configs/distill/ensemble_teacher_detr.yaml --unlabeled "
    "runs/render/shapes/unlabeled/images": HOURS,
    "fusion distill --config configs/distill/detr_teacher.yaml": HOURS,
    "fusion distill --resume runs/distill/detr-distill-shapes": "resumes the killed distillation above",
    "fusion score --config runs/distill/ensemble-yolo-shapes/student.yaml --annotations "
    "runs/render/shapes/val/annotations.json --images runs/render/shapes/val/images": NO_WEIGHTS,
}

# python blocks, by a line they contain -> None (executed) or why they are only compiled and checked.
PYTHON_BLOCKS: dict[str, str | None] = {
    "fused = fusion.fuse([a, b]": None,
    "ens = fusion.Ensemble.from_config": None,
    "paths = render_dataset(": None,
    'train("configs/train/detr.yaml")': HOURS,
}


def _fusion_commands() -> list[tuple[str, str, Block]]:
    out = []
    for block in readme_blocks():
        if block.lang == "bash":
            for argv, comment in block_commands(block):
                if argv[0] == "fusion":
                    out.append((shlex.join(argv).replace("'", ""), comment, block))
    return out


def _yaml_kind(data: object) -> str | None:
    if not isinstance(data, dict):
        return None
    if "members" in data:
        return "ensemble"
    if "teacher" in data:
        return "distill"
    if "model" in data and "data" in data:
        return "train"
    return None


def test_every_block_is_known() -> None:
    import yaml

    blocks = readme_blocks()
    assert len(blocks) >= 10, (
        "README.md: fewer fenced blocks than expected; is the fence pattern still right?"
    )
    for block in blocks:
        where = f"README.md:{block.line}"
        if block.lang == "python":
            keys = [key for key in PYTHON_BLOCKS if key in block.text]
            assert len(keys) == 1, f"{where}: python block matches {keys} in PYTHON_BLOCKS; add it there"
        elif block.lang == "yaml":
            kind = _yaml_kind(yaml.safe_load(block.text))
            assert kind, f"{where}: a yaml block that is no ensemble, train or distill config"
        elif block.lang == "bash":
            for argv, _ in block_commands(block):
                command = shlex.join(argv).replace("'", "")
                known = command in RUN or command in PARSE_ONLY or command in NOT_FUSION
                assert known, f"{where}: `{command}` is in none of RUN, PARSE_ONLY, NOT_FUSION"
        else:
            pytest.fail(f"{where}: a ```{block.lang} block; this test knows python, yaml and bash")
    printed = {command for command, _, _ in _fusion_commands()}
    assert set(RUN) | set(PARSE_ONLY) <= printed, f"stale entries: {(set(RUN) | set(PARSE_ONLY)) - printed}"


@pytest.mark.parametrize("command", sorted({c for c, _, _ in _fusion_commands()}))
def test_bash_parses(command: str) -> None:
    """The real parser accepts the command as printed; the shipped configs it names validate."""
    from fusion.config import load_ensemble_config
    from fusion.training.config import load_train_config
    from fusion.training.distill_config import load_distill_config

    argv = shlex.split(command)[1:]
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exit_:
        pytest.fail(f"README `{command}`: the CLI parser refused it (exit {exit_.code})")
    config = getattr(args, "config", None)
    if config and (ROOT / config).exists():
        loader = {"train": load_train_config, "distill": load_distill_config}.get(
            args.command, load_ensemble_config
        )
        loader(ROOT / config)


@pytest.fixture
def readme_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working folder with what the README's runnable blocks name: configs/, images, results and annotations."""
    from PIL import Image

    from fusion.synthetic.objects import default_members, make_coco_ground_truth, simulate_member

    monkeypatch.chdir(tmp_path)
    (tmp_path / "configs").symlink_to(ROOT / "configs")
    (tmp_path / "images").mkdir()
    for index, name in enumerate(["street.jpg", "kitchen.jpg", "images/0.jpg", "images/1.jpg"]):
        Image.new("RGB", (96, 64), (40 * index, 120, 200)).save(tmp_path / name)
    truth = make_coco_ground_truth(12, seed=0, objects_per_image=3)
    for name in ["val.json", "test.json"]:
        (tmp_path / name).write_text(json.dumps(truth))
    members = [member for _, member in default_members()]
    files = ["a.json", "b.json", "c.json", "member_a.json", "member_b.json"]
    for seed, name in enumerate(files):
        records = simulate_member(truth, members[seed % 3], seed=seed)
        (tmp_path / name).write_text(json.dumps(records))
    return tmp_path


def _run(command: str, substitutions: dict[str, list[str]]) -> int:
    """``fusion.cli.main`` on the printed command with its substitutions; globs expand as the shell would."""
    argv: list[str] = []
    for token in shlex.split(command)[1:]:
        for arg in substitutions.get(token, [token]):
            argv += sorted(glob.glob(arg)) if "*" in arg else [arg]
    return main(argv)


def _run_cases() -> list:
    comments = {command: comment for command, comment, _ in _fusion_commands()}
    cases = []
    for command, (_, _, slow) in RUN.items():
        marks = [pytest.mark.slow] if slow else []
        cases.append(pytest.param(command, comments.get(command, ""), marks=marks, id=command[:60]))
    return cases


@pytest.mark.parametrize(("command", "comment"), _run_cases())
def test_bash_runs(command: str, comment: str, readme_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    substitutions, before, _ = RUN[command]
    if before:
        assert _run(before, RUN[before][0]) == 0, before
    capsys.readouterr()
    assert _run(command, substitutions) == 0, f"README `{command}` failed"
    out, err = capsys.readouterr()
    verb = shlex.split(command)[1]
    if verb == "list":  # the comment lists the names: they are what the command prints
        for name in comment.split(", "):
            assert re.search(rf"\b{name}\b", out), f"`{command}` does not list {name!r}"
    elif verb == "check":
        assert "torch" in out
    elif verb == "demo":
        assert "MANIFEST.json" in err or (ROOT / "fusion/assets/models/MANIFEST.json").exists()
        assert (readme_dir / "runs/demo/demo/metrics.json").exists()
    elif verb == "render":
        data = json.loads((readme_dir / "runs/render/shapes/val/annotations.json").read_text())
        assert len(data["images"]) == int(SMALL_RENDER["500"][0])
    else:  # predict, fuse, score, tune: a run folder under runs/<verb>/ with its resolved config
        (run,) = (readme_dir / "runs" / verb).iterdir()
        assert (run / "config.yaml").exists()
        if verb == "tune":
            assert (run / "best.yaml").exists()
        elif verb in ("fuse", "score"):
            assert json.loads((run / "metrics.json").read_text())


def _python_cases() -> list:
    cases = []
    for block in readme_blocks():
        if block.lang != "python":
            continue
        keys = [key for key in PYTHON_BLOCKS if key in block.text]
        if len(keys) != 1:
            continue  # test_every_block_is_known reports it
        key = keys[0]
        slow = "Ensemble.from_config" in key
        marks = [pytest.mark.slow] if slow else []
        cases.append(pytest.param(block, key, marks=marks, id=f"line{block.line}"))
    return cases


@pytest.mark.parametrize(("block", "key"), _python_cases())
def test_python_block(block: Block, key: str, readme_dir: Path) -> None:
    code = compile(block.text, f"README.md:{block.line}", "exec")
    reason = PYTHON_BLOCKS[key]
    if reason is not None:
        _check_training_block(block)
        return
    namespace: dict[str, object] = {"__name__": "__readme__"}
    exec(code, namespace)  # the README's own code, as a reader would run it
    if "fused" in namespace and "a" in namespace:  # quickstart: WBF of a's first box (w 2) with b's box (w 1)
        fused = namespace["fused"]
        weights = [2 * 0.9, 1 * 0.8]
        expect = [
            (weights[0] * p + weights[1] * q) / sum(weights)
            for p, q in zip([10, 10, 50, 60], [12, 8, 52, 58])
        ]
        assert fused.labels.tolist() == [0, 2]
        assert fused.boxes[0].tolist() == pytest.approx(expect, rel=1e-6)
        assert fused.extras["votes"].tolist() == [2, 1]
        assert len(namespace["fused_list"]) == 2
    if "ens" in namespace:  # one fused Detections per image, one Detections per member
        assert len(namespace["fused"]) == 2
        per_member = namespace["per_member"]  # {member name: [Detections per image]}
        assert {name: len(found) for name, found in per_member.items()} == {"frcnn": 1, "yolo": 1}
    if "paths" in namespace:
        annotations, images_dir = namespace["paths"]["val"]
        assert (annotations, images_dir) == (
            Path("data/shapes/val/annotations.json"),
            Path("data/shapes/val/images"),
        )
        assert (images_dir / "000000.png").is_file()
        images = json.loads(Path(annotations).read_text())["images"]
        assert len(images) == len(list(Path(images_dir).iterdir())) > 0


def _check_training_block(block: Block) -> None:
    """The block trains for hours: its configs and overrides must validate and its calls bind."""
    from fusion import training
    from fusion.training.config import load_train_config
    from fusion.training.distill_config import load_distill_config

    calls = re.findall(r"\b(train|distill)\((.*)\)", block.text)
    assert calls, f"README.md:{block.line}: no train()/distill() call found"
    for name, args_text in calls:
        args = ast.literal_eval(f"({args_text},)")
        inspect.signature(getattr(training, name)).bind(*args)
        loader = load_train_config if name == "train" else load_distill_config
        loader(ROOT / args[0], *args[1:])


def _yaml_cases() -> list:
    return [pytest.param(block, id=f"line{block.line}") for block in readme_blocks() if block.lang == "yaml"]


@pytest.mark.parametrize("block", _yaml_cases())
def test_yaml_block(block: Block, readme_dir: Path) -> None:
    """Validated by its kind's loader; an ensemble whose members need no files is built too (random init)."""
    import yaml

    from fusion.config import load_ensemble_config
    from fusion.training.config import load_train_config
    from fusion.training.distill_config import load_distill_config

    data = yaml.safe_load(block.text)
    kind = _yaml_kind(data)
    assert kind, f"README.md:{block.line}: a yaml block that is no ensemble, train or distill config"
    path = readme_dir / "block.yaml"
    path.write_text(block.text)
    loader = {"ensemble": load_ensemble_config, "train": load_train_config, "distill": load_distill_config}[
        kind
    ]
    config = loader(path)
    if kind == "ensemble" and all(m.get("weights", "null") is None or _no_files(m) for m in data["members"]):
        from fusion import Ensemble

        ensemble = Ensemble(config, "cpu")
        assert [m.name for m in ensemble.members] == [m["name"] for m in data["members"]]


def _no_files(member: dict) -> bool:
    """An ultralytics member built from a stock model YAML (random init, no file needed)."""
    return member.get("type") == "ultralytics" and not member.get("weights") and "/" not in member["model"]


def test_run_folders_name_shipped_configs() -> None:
    """``runs/train/<name>`` and ``runs/distill/<name>`` in the README are where a shipped config of that name writes."""
    import yaml

    mentioned = set(re.findall(r"runs/(train|distill)/([\w.-]+)", README.read_text(encoding="utf-8")))
    assert mentioned, "README.md names no training or distillation run folder"
    for kind, name in sorted(mentioned):
        names = {yaml.safe_load(p.read_text())["name"] for p in (ROOT / "configs" / kind).glob("*.yaml")}
        assert name in names, f"README.md: runs/{kind}/{name}: no configs/{kind}/*.yaml is named {name!r}"
