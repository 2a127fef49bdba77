"""Registries: entry-point discovery, strict duplicates, closest-name suggestions."""

from __future__ import annotations

import pytest

from fusion.registry import DETECTORS, POLICIES, DuplicateNameError, Registry, UnknownNameError

EXPECTED_POLICIES = {"wbf", "voting", "nms", "soft_nms", "nmw"}
EXPECTED_DETECTORS = {"torchvision", "ultralytics", "detr", "predictions"}


def test_builtin_plugins_are_declared() -> None:
    assert EXPECTED_POLICIES <= set(POLICIES.names())
    assert EXPECTED_DETECTORS <= set(DETECTORS.names())


def test_unknown_name_lists_known_and_closest() -> None:
    with pytest.raises(UnknownNameError) as info:
        POLICIES.get("wfb")
    message = str(info.value)
    assert "unknown policy 'wfb'. Did you mean 'wbf'?" in message
    assert all(name in message for name in EXPECTED_POLICIES)


def test_runtime_registration_is_strict() -> None:
    registry: Registry[object] = Registry("widget", "detection_fusion.no_such_group")

    @registry.register("square")
    class Square:
        pass

    assert registry.get("square") is Square and "square" in registry
    with pytest.raises(DuplicateNameError, match="widget 'square' is already registered"):
        registry.register("square", object())
    registry.unregister("square")
    assert registry.names() == []


def test_cannot_shadow_an_entry_point() -> None:
    with pytest.raises(DuplicateNameError, match="policy 'wbf' is already registered"):
        POLICIES.register("wbf", object())
