"""YAML configuration files (tags, rules, models) → validated pydantic models.

One loader for every file the service reads at start. A bad file raises ``ConfigError`` with one
line per problem, each naming the file, the item and the field, e.g.::

    deploy/rules.yaml: rules[1] (winback).when.all[0].tag: unknown tag 'shoe'

List items are shown by index and, when the item has an ``id`` or ``name``, by that too.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from stream.errors import ConfigError

M = TypeVar("M", bound=BaseModel)

Loc = Sequence[str | int]
# extra text for one error, from its cleaned location and pydantic error type (None: nothing to add)
Hint = Callable[[Loc, str], str | None]

_ITEM_NAMES = ("id", "name")  # the fields that name a list item in messages
_MESSAGE_PREFIXES = ("Value error, ", "Assertion failed, ")


def read_yaml(path: Path, what: str) -> Any:
    """The parsed document at ``path``; ``what`` names its content in the error (``"rules"``)."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read {what}: {exc}") from exc
    try:
        return yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        raise ConfigError(f"{path}: {where}invalid YAML: {_one_line(exc.problem or str(exc))}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML: {_one_line(str(exc))}") from exc


def validate(
    raw: Any, path: Path | str, model: type[M], *, context: dict[str, Any] | None = None, hint: Hint | None = None
) -> M:
    """``raw`` (an already parsed document) as ``model``; ``ConfigError`` names file, item and field."""
    try:
        return model.model_validate(raw, context=context)
    except ValidationError as exc:
        lines = []
        for error in _without_union_noise(raw, exc.errors(include_url=False)):
            message = _message(error)
            extra = hint(error["loc"], error["type"]) if hint is not None else None
            lines.append(line(path, raw, error["loc"], f"{message} {extra}" if extra else message))
        raise ConfigError("\n".join(lines)) from exc


def load(
    path: Path,
    model: type[M],
    *,
    what: str,
    context: dict[str, Any] | None = None,
    hint: Hint | None = None,
) -> M:
    """Read, parse and validate one YAML file (``read_yaml`` then ``validate``)."""
    return validate(read_yaml(path, what), path, model, context=context, hint=hint)


def line(path: Path | str, raw: Any, loc: Loc, message: str) -> str:
    """One error line: ``FILE: LOCATION: MESSAGE``, the location as ``where`` spells it."""
    return f"{path}: {where(raw, loc)}: {_one_line(message)}"


def error(path: Path | str, raw: Any, loc: Loc, message: str) -> ConfigError:
    """A ``ConfigError`` for a check made after validation (duplicates, cross references)."""
    return ConfigError(line(path, raw, loc, message))


def check_unique(path: Path | str, raw: Any, section: str, field: str, values: Iterable[str], what: str) -> None:
    """Refuse the second item of ``section`` whose ``field`` repeats an earlier one."""
    seen: set[str] = set()
    for index, value in enumerate(values):
        if value in seen:
            raise error(path, raw, (section, index, field), f"duplicate {what} {value!r}")
        seen.add(value)


def where(raw: Any, loc: Loc) -> str:
    """``rules[1] (winback).when.all[0].tag``: keys joined by dots, list items by index and name,
    read against the raw document; ``(file)`` for the document as a whole."""
    out = ""
    node = raw
    for part in loc:
        if isinstance(part, int) and isinstance(node, list):
            out += f"[{part}]"
            node = node[part] if 0 <= part < len(node) else None
            name = next((node[k] for k in _ITEM_NAMES if isinstance(node, dict) and k in node), None)
            if isinstance(name, str | int):
                out += f" ({name})"
        else:
            out += f".{part}" if out else str(part)
            node = node.get(part) if isinstance(node, dict) else None
    return out or "(file)"


def _message(error: ErrorDetails) -> str:
    message = error["msg"]
    for prefix in _MESSAGE_PREFIXES:
        message = message.removeprefix(prefix)
    return message


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _is_union_member(node: Any, part: str | int) -> bool:
    """Pydantic names the union member it tried inside a location (``QuietHours``,
    ``function-after[_not_empty(), QuietHours]``, ``literal['off']``); the document has no such key."""
    if not isinstance(part, str) or (isinstance(node, dict) and part in node):
        return False
    return "[" in part or "(" in part or part[:1].isupper()


def _strip_members(raw: Any, loc: Loc) -> tuple[str | int, ...]:
    out: list[str | int] = []
    node = raw
    for part in loc:
        if _is_union_member(node, part):
            continue
        out.append(part)
        if isinstance(node, dict):
            node = node.get(part)
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            node = node[part]
        else:
            node = None
    return tuple(out)


def _without_union_noise(raw: Any, errors: list[ErrorDetails]) -> list[ErrorDetails]:
    """Locations without union-member names; and a union's literal alternative (``'off'``) dropped
    when another alternative explains the problem deeper at the same place."""
    cleaned: list[ErrorDetails] = [{**e, "loc": _strip_members(raw, e["loc"])} for e in errors]
    return [
        e
        for e in cleaned
        if e["type"] != "literal_error"
        or not any(len(o["loc"]) > len(e["loc"]) and o["loc"][: len(e["loc"])] == e["loc"] for o in cleaned)
    ]
