"""The `fusion` command line: version, list, check, error reporting, and a light `import fusion`."""

from __future__ import annotations

import subprocess
import sys

import pytest

import fusion
from fusion.cli import main


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.strip() == f"detection-fusion {fusion.__version__}"


def test_list_policies_shows_the_five(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["list", "policies"]) == 0
    listed = {line.split()[0] for line in capsys.readouterr().out.splitlines() if line.strip()}
    assert {"wbf", "voting", "nms", "soft_nms", "nmw"} <= listed


def test_check_reports_versions_and_devices(capsys: pytest.CaptureFixture[str]) -> None:
    import torch

    assert main(["check"]) == 0
    out = capsys.readouterr().out
    assert "torch" in out and torch.__version__ in out
    assert "devices" in out and "cpu" in out
    assert "torchvision_weights_dir" in out
    from fusion.coco.evaluate import resolve_backend

    assert f"evaluation_backend          {resolve_backend('auto')} (auto;" in out


def test_console_script_reports_usage_errors() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "fusion", "list", "polices"], capture_output=True, text=True, check=False
    )
    assert result.returncode == 2
    assert "invalid choice: 'polices'" in result.stderr


def test_import_fusion_stays_light() -> None:
    code = (
        "import sys, fusion; "
        "heavy = [m for m in ('ultralytics', 'supervision', 'pycocotools', 'faster_coco_eval', 'matplotlib', "
        "'ensemble_boxes', 'hotcoco', 'detectors', 'policies', 'scipy') if m in sys.modules]; print(heavy)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
