"""The one YAML loader behind tags, rules and models: every error is one line naming file, item and field."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import pytest
from pydantic import BaseModel, ConfigDict

from stream import config_files
from stream.errors import ConfigError
from stream.models.config import load_models_config
from stream.rules.config import load_rules
from stream.settings import ConfigError as SettingsConfigError
from stream.tagging.definitions import load_catalogue


class Inner(BaseModel):
    model_config = ConfigDict(extra="forbid")

    value: int


class Item(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    parts: list[Inner] = []
    mode: Inner | Literal["off"] | None = None


class Doc(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: int
    items: list[Item]


def _write(tmp_path: Path, body: str, name: str = "conf.yaml") -> Path:
    path = tmp_path / name
    path.write_text(body)
    return path


def _error(call: Callable[[], Any]) -> str:
    with pytest.raises(ConfigError) as err:
        call()
    return str(err.value)


def test_settings_re_exports_the_one_config_error() -> None:
    assert SettingsConfigError is ConfigError


def test_error_names_file_item_by_index_and_name_and_field(tmp_path: Path) -> None:
    path = _write(tmp_path, "version: 1\nitems:\n  - {name: a}\n  - {name: b, parts: [{value: 1}, {value: x}]}\n")
    message = _error(lambda: config_files.load(path, Doc, what="things"))
    assert message == (
        f"{path}: items[1] (b).parts[1].value: Input should be a valid integer, unable to parse string as an integer"
    )


def test_every_problem_is_one_self_contained_line(tmp_path: Path) -> None:
    path = _write(tmp_path, "version: x\nitems:\n  - {name: a, colour: red}\n  - {parts: []}\n")
    lines = _error(lambda: config_files.load(path, Doc, what="things")).split("\n")
    assert lines == [
        f"{path}: version: Input should be a valid integer, unable to parse string as an integer",
        f"{path}: items[0] (a).colour: Extra inputs are not permitted",
        f"{path}: items[1].name: Field required",
    ]


def test_union_member_names_and_the_literal_alternative_are_left_out(tmp_path: Path) -> None:
    path = _write(tmp_path, "version: 1\nitems:\n  - {name: a, mode: {value: x}}\n")
    message = _error(lambda: config_files.load(path, Doc, what="things"))
    assert message == (
        f"{path}: items[0] (a).mode.value: Input should be a valid integer, unable to parse string as an integer"
    )
    path = _write(tmp_path, "version: 1\nitems:\n  - {name: a, mode: on}\n")
    lines = _error(lambda: config_files.load(path, Doc, what="things")).split("\n")
    assert lines == [
        f"{path}: items[0] (a).mode: Input should be a valid dictionary or instance of Inner",
        f"{path}: items[0] (a).mode: Input should be 'off'",
    ]


def test_a_document_that_is_not_a_mapping_is_named_as_the_file(tmp_path: Path) -> None:
    path = _write(tmp_path, "- 1\n- 2\n")
    assert _error(lambda: config_files.load(path, Doc, what="things")) == (
        f"{path}: (file): Input should be a valid dictionary or instance of Doc"
    )


def test_hint_is_appended_to_the_message(tmp_path: Path) -> None:
    path = _write(tmp_path, "version: 1\nitems:\n  - {name: a, colour: red}\n")

    def hint(loc: config_files.Loc, kind: str) -> str | None:
        return f"(at {list(loc)}, {kind})"

    assert _error(lambda: config_files.load(path, Doc, what="things", hint=hint)) == (
        f"{path}: items[0] (a).colour: Extra inputs are not permitted (at ['items', 0, 'colour'], extra_forbidden)"
    )


def test_unreadable_and_malformed_files(tmp_path: Path) -> None:
    missing = tmp_path / "absent.yaml"
    assert _error(lambda: config_files.read_yaml(missing, "things")).startswith(f"{missing}: cannot read things: ")
    broken = _write(tmp_path, "version: 1\nitems: [\n  {name: a\n")
    message = _error(lambda: config_files.read_yaml(broken, "things"))
    assert message.startswith(f"{broken}: line 4, column 1: invalid YAML: ")
    assert "\n" not in message


def test_duplicates_name_the_second_item(tmp_path: Path) -> None:
    raw = {"items": [{"name": "a"}, {"name": "b"}, {"name": "a"}]}
    config_files.check_unique("f.yaml", raw, "items", "name", ["a", "b"], "item")
    with pytest.raises(ConfigError) as err:
        config_files.check_unique("f.yaml", raw, "items", "name", ["a", "b", "a"], "item")
    assert str(err.value) == "f.yaml: items[2] (a).name: duplicate item 'a'"


def test_items_are_named_by_id_too() -> None:
    raw = {"rules": [{"id": "winback", "when": {"all": [{"tag": "x"}]}}]}
    assert config_files.where(raw, ("rules", 0, "when", "all", 0, "value")) == "rules[0] (winback).when.all[0].value"
    assert config_files.where(raw, ("rules", 5, "id")) == "rules[5].id"  # beyond the document: index only


# The three product loaders speak the same format: file, item (index and name), field, on one line.
SHAPES = [
    (
        "tags.yaml",
        "version: 1\ntags:\n"
        "  - {name: region, level: L1, category: a, owner: b, description: c, type: str}\n"
        "  - {name: recency_days, level: L1, category: a, owner: b, description: c, type: integer}\n",
        load_catalogue,
        "tags[1] (recency_days).type: Input should be ",
    ),
    (
        "rules.yaml",
        "version: 1\nrules:\n"
        "  - {id: winback, version: 1, when: {all: [{tag: value_tier, eq: a}, {tag: shoe_size, gt: 3}]},"
        " action: {type: coupon, params: {campaign: c, value: 5}}}\n",
        load_rules,
        "rules[0] (winback).when.all[1].tag: unknown tag 'shoe_size'",
    ),
    (
        "models.yaml",
        "version: 1\nfeatures:\n"
        "  - {name: f1, tag: days_since_last_order, kind: number}\n"
        "  - {name: f2, tag: events_7d, kind: number, scale: -1}\n",
        load_models_config,
        "features[1] (f2).scale: Input should be greater than 0",
    ),
]


@pytest.mark.parametrize(("name", "body", "loader", "expected"), SHAPES, ids=[s[0] for s in SHAPES])
def test_product_loaders_share_the_format(
    tmp_path: Path, name: str, body: str, loader: Callable[[Path], Any], expected: str
) -> None:
    path = _write(tmp_path, body, name)
    message = _error(lambda: loader(path))
    assert message.startswith(f"{path}: {expected}")
    assert "\n" not in message
