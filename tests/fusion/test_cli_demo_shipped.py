"""The SHIPPED demo members (fusion/assets/models/): they load strictly and give the AP recorded in MANIFEST.json.

Skipped, with the reason, until `fusion demo --retrain` has produced and committed the files.
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pytest

from fusion.demo.assets import ASSETS_DIR, MANIFEST, demo_config, verify_assets

pytestmark = pytest.mark.skipif(
    not (ASSETS_DIR / MANIFEST).is_file(),
    reason=f"no shipped demo members yet ({ASSETS_DIR / MANIFEST} is absent): run `fusion demo --retrain`",
)


def test_shipped_files_match_the_manifest_and_the_budget() -> None:
    from fusion.demo.assets import MAX_TOTAL_BYTES

    _, named = demo_config()
    manifest = verify_assets(ASSETS_DIR, named)
    assert sum(entry["bytes"] for entry in manifest["files"].values()) <= MAX_TOTAL_BYTES
    recorded = manifest["recorded"]
    assert {"seed", "images", "AP"} <= set(recorded)
    assert set(recorded["AP"]) >= {"fused"}


@pytest.mark.slow
def test_shipped_members_load_strictly_and_give_the_recorded_ap(tmp_path: Path) -> None:
    """Every adapter loads its weights strictly (a missing or extra key is an error), and the demo on the recorded
    render reproduces each member's and the fused AP within 0.01."""
    from fusion.demo.real import run_real_demo

    recorded = json.loads((ASSETS_DIR / MANIFEST).read_text())["recorded"]
    with contextlib.redirect_stdout(io.StringIO()):
        out = run_real_demo(recorded["images"], recorded["seed"], project=tmp_path, device="cpu", plots=False)
    metrics = json.loads((out / "metrics.json").read_text())
    got = {name: entry["AP"] for name, entry in metrics["members"].items()} | {
        "fused": metrics["fused"]["AP"]
    }
    assert set(got) == set(recorded["AP"])
    for name, ap in recorded["AP"].items():
        assert got[name] == pytest.approx(ap, abs=0.01), name
