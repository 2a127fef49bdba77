"""Shared test fixtures: offline settings for every test, seeded randomness, device list, Detections diffs."""

from __future__ import annotations

import os

import pytest
import torch

from fusion.detections import Detections

# Never let a library try the network during tests (ultralytics probes DNS and fetches fonts otherwise).
os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


def pytest_assertrepr_compare(op: str, left: object, right: object) -> list[str] | None:
    """``assert a == b`` on two :class:`Detections` says which field differs and where."""
    if op == "==" and isinstance(left, Detections) and isinstance(right, Detections):
        return [f"{left!r} == {right!r}", f"first difference: {left.mismatch(right)}"]
    return None


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
