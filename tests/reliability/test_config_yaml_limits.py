"""Configs are small data: aliases that expand past a bound, self-referencing or absurdly nested YAML and files that are
not UTF-8 are refused with a short message naming the file; ordinary anchors still work."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from fusion.config import MAX_YAML_NODES, ConfigError, load_ensemble_config, load_yaml, parse_yaml, shorten


def _bomb(levels: int) -> str:
    lines = ["a: &a [x, x, x, x, x, x, x, x, x]"]
    names = "abcdefghijklmnop"
    lines += [f"{c}: &{c} [{', '.join(['*' + p] * 9)}]" for p, c in itertools.pairwise(names[:levels])]
    return "\n".join([*lines, "name: t"]) + "\n"


def test_an_alias_bomb_is_refused_before_it_expands(tmp_path: Path) -> None:
    path = tmp_path / "b.yaml"
    path.write_text(_bomb(8))  # 9**8 = 43 million strings once expanded; under 1 KB as text
    assert path.stat().st_size < 1024
    with pytest.raises(ConfigError) as info:
        load_yaml(path)
    message = str(info.value)
    assert message.startswith(f"{path}: its aliases (*name) expand to more than {MAX_YAML_NODES} values")
    assert len(message) < 300


def test_aliases_below_the_bound_expand_as_usual() -> None:
    data = parse_yaml(_bomb(4), "t.yaml")  # 9**4 = 6561 leaves
    assert len(data["d"]) == 9 and data["d"][8][8][8] == ["x"] * 9 and data["name"] == "t"


def test_anchors_and_merge_keys_in_a_config_still_work(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(
        "name: shared\n"
        "defaults: &d {type: predictions, classes: coco91}\n"
        "members:\n"
        "  - {<<: *d, name: a, path: a.json}\n"
        "  - {<<: *d, name: b, path: b.json, weight: 2}\n"
    )
    data = load_yaml(path)
    data.pop("defaults")
    config = load_ensemble_config(data)
    assert [(m.name, m.type, m.weight) for m in config.members] == [
        ("a", "predictions", 1.0),
        ("b", "predictions", 2.0),
    ]


@pytest.mark.parametrize(
    ("text", "said"),
    [
        ("a: &a [*a]\n", "expand to more than"),  # a list that contains itself
        ("a: " + "[" * 5000 + "]" * 5000 + "\n", "nested too deeply"),
        ("a: [1\n", "not valid YAML: expected ',' or ']', but got '<stream end>' at line 2, column 1"),
    ],
    ids=["recursive", "deep", "broken"],
)
def test_hostile_or_broken_yaml_is_one_short_line(text: str, said: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_yaml(text, "x.yaml")
    assert str(info.value).startswith("x.yaml: ") and said in str(info.value)
    assert "\n" not in str(info.value) and len(str(info.value)) < 300


def test_an_override_value_is_parsed_with_the_same_limits() -> None:
    config = {"name": "t", "members": [{"name": "a", "type": "predictions", "path": "a.json"}]}
    bomb = "[" + ", ".join(["&a [x, x, x, x, x, x, x, x, x]"] + ["*a"] * 8) + "]"
    assert len(parse_yaml(bomb, "v")) == 9  # an anchor inside a value is fine when small
    with pytest.raises(ConfigError, match=r"^override members\[0\]\.weight='\[1': not valid YAML"):
        load_ensemble_config(config, ["members[0].weight=[1"])
    with pytest.raises(ConfigError, match=r"^override tta\.scales='&a \[\*a\]': its aliases"):
        load_ensemble_config(config, ["tta.scales=&a [*a]"])


def test_a_config_that_is_not_utf8_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes("name: t\n# caf\xe9\n".encode("latin-1"))
    with pytest.raises(ValueError, match=r"latin1\.yaml: not UTF-8 text \(byte 0xe9 at offset 13\)"):
        load_yaml(path)


def test_echoed_values_are_shortened() -> None:
    assert shorten("abc") == "'abc'"
    long = shorten("x" * 10_000)
    assert long.startswith("'xxx") and long.endswith("... (10002 chars)") and len(long) <= 85
    with pytest.raises(ConfigError) as info:
        load_ensemble_config(
            {"name": "t", "members": [{"name": "a", "type": "predictions", "path": 7 * [1] * 5000}]}
        )
    assert len(str(info.value)) < 600 and "chars)" in str(info.value)
