"""Class vocabularies: names <-> ids, and translation between vocabularies through class NAMES.

Every ensemble has one vocabulary (a :class:`ClassMap`); ``Detections.labels`` hold its contiguous indices
``0..C-1``. Members (torchvision's COCO ids 1..90, ultralytics' 0..79, a custom model's own list) and datasets
(a COCO annotation file's category ids) each have their own ``ClassMap`` and are translated by name, never by
assuming that their ids line up.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
from functools import lru_cache
from pathlib import Path

import torch
from torch import Tensor

__all__ = ["CONFIGS_DIR", "ClassMap"]

CONFIGS_DIR = Path(__file__).resolve().parent.parent / "configs"


class ClassMap:
    """An ordered list of class names, each with an external id.

    Args:
        names: Class names; position = contiguous label index used in :class:`~fusion.Detections`.
        ids: External id of each class (e.g. COCO category ids); defaults to ``0..C-1``.

    Example:
        >>> coco91 = ClassMap.load("coco91")          # ids 1..90 as torchvision and COCO files use them
        >>> coco91.labels_from_ids(torch.tensor([1, 90])).tolist()
        [0, 79]
    """

    def __init__(self, names: Sequence[str], ids: Sequence[int] | None = None) -> None:
        names = [str(n) for n in names]
        ids = list(range(len(names))) if ids is None else [int(i) for i in ids]
        if len(ids) != len(names):
            raise ValueError(f"ClassMap: {len(names)} names but {len(ids)} ids")
        for kind, values in (("name", names), ("id", ids)):
            seen: set[object] = set()
            for index, value in enumerate(values):
                if value in seen:
                    raise ValueError(f"ClassMap: duplicate class {kind} {value!r} at index {index}")
                seen.add(value)
        if any(i < 0 for i in ids):
            raise ValueError(f"ClassMap: ids must be >= 0, got {min(ids)}")
        self.names: tuple[str, ...] = tuple(names)
        self.ids: tuple[int, ...] = tuple(ids)
        self._index_of_name = {n: i for i, n in enumerate(names)}
        self._index_of_id = {c: i for i, c in enumerate(ids)}
        # Dense id -> label lookup table for vectorised translation; -1 where no class has that id.
        self._id_table = torch.full((max(ids, default=-1) + 1,), -1, dtype=torch.int64)
        self._id_table[torch.tensor(ids, dtype=torch.int64)] = torch.arange(len(ids))

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_mapping(cls, mapping: Mapping[int, str]) -> ClassMap:
        """From ``{id: name}`` (the shape of ultralytics' ``model.names`` and of our YAML files)."""
        items = sorted((int(k), str(v)) for k, v in mapping.items())
        return cls([n for _, n in items], [i for i, _ in items])

    @classmethod
    def from_coco_categories(cls, categories: Sequence[Mapping[str, object]]) -> ClassMap:
        """From a COCO annotation file's ``categories`` list (``{"id", "name"}`` records)."""
        for index, category in enumerate(categories):
            if "id" not in category or "name" not in category:
                raise ValueError(f"categories[{index}] needs 'id' and 'name', got keys {sorted(category)}")
        return cls([str(c["name"]) for c in categories], [int(c["id"]) for c in categories])  # type: ignore[call-overload]

    @classmethod
    def load(cls, name_or_path: str | Path) -> ClassMap:
        """A shipped vocabulary by name (``coco80``, ``coco91``: ``configs/classes/<name>.yaml``) or a YAML path.

        The YAML holds ``names:`` as a list (ids 0..C-1) or as an ``{id: name}`` mapping.
        """
        return _load_cached(str(name_or_path))

    # ------------------------------------------------------------------ lookups
    def __len__(self) -> int:
        return len(self.names)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ClassMap) and (self.names, self.ids) == (other.names, other.ids)

    def __hash__(self) -> int:
        return hash((self.names, self.ids))

    def __repr__(self) -> str:
        return f"ClassMap({len(self)} classes: {', '.join(self.names[:4])}{', ...' if len(self) > 4 else ''})"

    def index(self, name: str) -> int:
        """Contiguous label of ``name``; ``KeyError`` naming the closest class otherwise."""
        try:
            return self._index_of_name[name]
        except KeyError:
            close = difflib.get_close_matches(name, self.names, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise KeyError(
                f"class {name!r} is not in this vocabulary of {len(self)} classes.{hint}"
            ) from None

    def label_of_id(self, class_id: int) -> int:
        """Contiguous label of an external id; ``KeyError`` if no class has it."""
        try:
            return self._index_of_id[int(class_id)]
        except KeyError:
            raise KeyError(
                f"class id {class_id} is not in this vocabulary (ids {min(self.ids)}..{max(self.ids)})"
            ) from None

    def labels_from_ids(self, ids: Tensor) -> Tensor:
        """Vectorised external ids -> contiguous labels; ``-1`` for ids no class has."""
        table = self._id_table.to(ids.device)
        ids = ids.long()
        valid = (ids >= 0) & (ids < table.numel())
        return torch.where(valid, table[ids.clamp(0, max(table.numel() - 1, 0))], torch.full_like(ids, -1))

    def ids_from_labels(self, labels: Tensor) -> Tensor:
        """Vectorised contiguous labels -> external ids."""
        return torch.tensor(self.ids, dtype=torch.int64, device=labels.device)[labels.long()]

    def translation_to(self, target: ClassMap, *, strict: bool = True) -> Tensor:
        """Lookup table ``[len(self)]``: this vocabulary's labels -> ``target``'s labels, matched by name.

        Args:
            target: The vocabulary to translate into.
            strict: Raise ``KeyError`` listing the classes ``target`` lacks; otherwise they map to ``-1`` (callers
                drop those boxes and should say so).
        """
        table = torch.tensor([target._index_of_name.get(n, -1) for n in self.names], dtype=torch.int64)
        if strict and bool((table < 0).any()):
            missing = [self.names[i] for i in (table < 0).nonzero().flatten().tolist()]
            raise KeyError(
                f"{len(missing)} class(es) are absent from the target vocabulary: {missing[:10]}"
                f"{' ...' if len(missing) > 10 else ''}"
            )
        return table

    def to_yaml_dict(self) -> dict[str, dict[int, str]]:
        return {"names": dict(zip(self.ids, self.names))}


@lru_cache(maxsize=32)
def _load_cached(name_or_path: str) -> ClassMap:
    path = Path(name_or_path)
    if not path.suffix:
        shipped = CONFIGS_DIR / "classes" / f"{name_or_path}.yaml"
        if not shipped.exists():
            known = sorted(p.stem for p in (CONFIGS_DIR / "classes").glob("*.yaml"))
            raise FileNotFoundError(
                f"no shipped class list named {name_or_path!r} (known: {', '.join(known)}); or give a YAML path"
            )
        path = shipped
    from fusion.io import parse_yaml, read_text_file

    data = parse_yaml(read_text_file(path, "class list file"), str(path))  # names the file on any problem
    names = data.get("names") if isinstance(data, dict) else None
    if isinstance(names, list):
        return ClassMap(names)
    if isinstance(names, dict):
        return ClassMap.from_mapping(names)
    raise ValueError(f"{path}: expected a 'names' list or {{id: name}} mapping")
