"""Name -> plug-in registries for fusion policies and detector adapters.

The core never imports ``policies`` or ``detectors``: they are found through Python entry points (groups
``detection_fusion.policies`` and ``detection_fusion.detectors``, declared in ``pyproject.toml``) and imported only
when a name is asked for. Code that is not installed as a distribution can register at run time with
``POLICIES.register("name", obj)``. As in torchvision's model registry, a duplicate name is an error and an unknown
name is answered with the known names and the closest match.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from importlib import metadata
from typing import Any, Generic, TypeVar

__all__ = ["DETECTORS", "POLICIES", "DuplicateNameError", "Registry", "UnknownNameError"]

T = TypeVar("T")


class UnknownNameError(LookupError):
    """A name that no plug-in registered."""

    def __str__(self) -> str:  # LookupError would quote the message like a key
        return str(self.args[0])


class DuplicateNameError(ValueError):
    """Two plug-ins claimed the same name."""


class Registry(Generic[T]):
    """A strict name -> object registry backed by an entry-point group.

    Args:
        kind: What is registered, for messages ("policy", "detector").
        group: The entry-point group that installed distributions declare their plug-ins in.
    """

    def __init__(self, kind: str, group: str) -> None:
        self.kind = kind
        self.group = group
        self._loaded: dict[str, T] = {}
        self._entry_points: dict[str, metadata.EntryPoint] | None = None

    def _discover(self) -> dict[str, metadata.EntryPoint]:
        if self._entry_points is None:
            found: dict[str, metadata.EntryPoint] = {}
            for ep in metadata.entry_points(group=self.group):
                other = found.get(ep.name)
                if other is not None and other.value != ep.value:
                    raise DuplicateNameError(
                        f"{self.kind} {ep.name!r} is declared twice in entry-point group {self.group!r}: "
                        f"{other.value} and {ep.value}"
                    )
                found[ep.name] = ep
            self._entry_points = found
        return self._entry_points

    def register(self, name: str, obj: T | None = None) -> Any:
        """Register ``obj`` under ``name``; usable as a decorator when ``obj`` is omitted.

        Raises:
            DuplicateNameError: ``name`` is already registered or declared by an installed distribution.
        """

        def add(target: T) -> T:
            declared = self._discover().get(name)
            if name in self._loaded or (declared is not None and not _is_entry_point_of(declared, target)):
                raise DuplicateNameError(f"{self.kind} {name!r} is already registered")
            self._loaded[name] = target
            return target

        if obj is None:
            return add
        return add(obj)

    def unregister(self, name: str) -> None:
        """Forget a run-time registration (entry points stay declared)."""
        self._loaded.pop(name, None)

    def names(self) -> list[str]:
        """All registered names, sorted, without importing any plug-in."""
        return sorted(set(self._discover()) | set(self._loaded))

    def get(self, name: str) -> T:
        """The object registered as ``name``, importing its module on first use.

        Raises:
            UnknownNameError: no such name; the message lists the known names and the closest match.
        """
        if name in self._loaded:
            return self._loaded[name]
        entry_point = self._discover().get(name)
        if entry_point is None:
            known = self.names()
            close = difflib.get_close_matches(str(name), known, n=1, cutoff=0.5)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise UnknownNameError(
                f"unknown {self.kind} {name!r}.{hint} Known {self.kind}s: {', '.join(known)}"
            )
        obj = entry_point.load()
        self._loaded[name] = obj
        return obj

    def __contains__(self, name: object) -> bool:
        return name in self._loaded or name in self._discover()


def _is_entry_point_of(entry_point: metadata.EntryPoint, target: object) -> bool:
    module, _, attr = entry_point.value.partition(":")
    return getattr(target, "__module__", None) == module and getattr(target, "__qualname__", None) == attr


POLICIES: Registry[Callable[..., Any]] = Registry("policy", "detection_fusion.policies")
DETECTORS: Registry[Callable[..., Any]] = Registry("detector", "detection_fusion.detectors")
