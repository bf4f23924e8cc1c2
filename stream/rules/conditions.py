"""Rule conditions over profile tags: the YAML model and its pure evaluation.

A condition is one of
* a group: ``all: [...]``, ``any: [...]``, ``not: {...}``;
* a leaf: ``tag: NAME`` plus exactly one operator:
  - comparisons ``eq ne gt ge lt le`` and membership ``in`` look at the *current* profile only;
  - transitions ``crosses_above crosses_below enters leaves`` look at the previous and current profile.

Values are the strings stored in the profile (docs/tags.md). Two values compare numerically when
both parse as decimal numbers, otherwise as strings. A missing tag is *absent*: every comparison
on it is false (``ne`` too).

Edge triggering (``fires``): a condition ``C`` fires from ``previous`` to ``current`` iff
``holds(C, previous, current)`` and not ``holds(C, previous, previous)``. For a condition made of
comparisons only this is "false on the previous profile, true on the current"; a transition never
holds between a profile and itself, so a condition containing transitions fires exactly when it
holds (the transition is the edge).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterator, Mapping
from functools import cached_property
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationInfo, field_validator, model_validator

Profile = Mapping[str, str]
Predicate = Callable[[Profile, Profile], bool]  # (previous, current) -> truth, see ``compiled``

COMPARISONS: tuple[str, ...] = ("eq", "ne", "gt", "ge", "lt", "le", "in")
TRANSITIONS: tuple[str, ...] = ("crosses_above", "crosses_below", "enters", "leaves")
OPERATORS: tuple[str, ...] = COMPARISONS + TRANSITIONS
GROUPS: tuple[str, ...] = ("all", "any", "not")

_NUMBER = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$")


def _to_text(value: Any) -> str:
    """YAML scalar → the profile's string form (``true``/``false`` for booleans)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float | str):
        return str(value)
    raise ValueError(f"expected a scalar value, got {type(value).__name__}")


def _to_texts(value: Any) -> tuple[str, ...]:
    """A scalar or a list of scalars → a non-empty tuple of strings."""
    items = value if isinstance(value, list | tuple) else [value]
    if not items:
        raise ValueError("expected at least one value")
    return tuple(_to_text(v) for v in items)


Text = Annotated[str, BeforeValidator(_to_text)]
Texts = Annotated[tuple[str, ...], BeforeValidator(_to_texts)]


@functools.lru_cache(maxsize=8192)
def as_number(value: str | None) -> float | None:
    """The value as a float when it is a decimal number (``"14"``, ``"0.25"``, ``"-3e2"``), else None.

    Memoised: rules compare the same few operands and tag values on every evaluation."""
    if value is None or not _NUMBER.match(value):
        return None
    return float(value)


def values_equal(a: str, b: str) -> bool:
    """Numeric equality when both are numbers, else exact string equality."""
    x, y = as_number(a), as_number(b)
    if x is not None and y is not None:
        return x == y
    return a == b


def _order(a: str, b: str) -> int:
    """-1/0/1 comparing ``a`` with ``b``: numerically when both are numbers, else as strings."""
    x, y = as_number(a), as_number(b)
    if x is not None and y is not None:
        return (x > y) - (x < y)
    return (a > b) - (a < b)


class Condition(BaseModel):
    """One node of a rule's ``when`` tree. Exactly one group key, or ``tag`` plus exactly one operator."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    all: tuple[Condition, ...] | None = None
    any: tuple[Condition, ...] | None = None
    not_: Condition | None = Field(default=None, alias="not")
    tag: str | None = None
    eq: Text | None = None
    ne: Text | None = None
    gt: Text | None = None
    ge: Text | None = None
    lt: Text | None = None
    le: Text | None = None
    in_: Texts | None = Field(default=None, alias="in")
    crosses_above: float | None = None
    crosses_below: float | None = None
    enters: Texts | None = None
    leaves: Texts | None = None

    @field_validator("tag")
    @classmethod
    def _known_tag(cls, tag: str, info: ValidationInfo) -> str:
        known = (info.context or {}).get("known_tags")
        if known is not None and tag not in known:
            raise ValueError(f"unknown tag {tag!r} (not in the tag catalogue nor a model tag)")
        return tag

    @model_validator(mode="after")
    def _one_form(self) -> Condition:
        groups = [g for g in GROUPS if self.operand(g) is not None]
        ops = [o for o in OPERATORS if self.operand(o) is not None]
        if groups and (ops or self.tag is not None):
            raise ValueError(f"a condition is either a group ({'/'.join(GROUPS)}) or a tag test, not both")
        if len(groups) > 1:
            raise ValueError(f"one group per condition, got {groups}")
        if not groups and (self.tag is None or len(ops) != 1):
            raise ValueError(f"a tag test needs 'tag' and exactly one operator of {list(OPERATORS)}, got {ops}")
        if (self.all is not None and not self.all) or (self.any is not None and not self.any):
            raise ValueError("all/any need at least one condition")
        if self.not_ is not None and has_transition(self.not_):
            raise ValueError("'not' cannot contain a transition (crosses_*/enters/leaves)")
        return self

    def operand(self, name: str) -> Any:
        """The value of group key or operator ``name`` (``in``/``not`` by their YAML names)."""
        return getattr(self, {"in": "in_", "not": "not_"}.get(name, name))

    @cached_property
    def operator(self) -> str | None:
        """The leaf's operator, or None for a group (cached: conditions are immutable and hot)."""
        return next((o for o in OPERATORS if self.operand(o) is not None), None)

    def children(self) -> tuple[Condition, ...]:
        if self.not_ is not None:
            return (self.not_,)
        return self.all or self.any or ()


def has_transition(cond: Condition) -> bool:
    """True when the condition (or any descendant) uses a transition operator."""
    return cond.operator in TRANSITIONS or any(has_transition(c) for c in cond.children())


def leaves_of(cond: Condition) -> Iterator[Condition]:
    """Every tag test in the tree, depth first."""
    if cond.tag is not None:
        yield cond
    for child in cond.children():
        yield from leaves_of(child)


def tags_of(cond: Condition) -> set[str]:
    """The tag names the condition reads."""
    return {leaf.tag for leaf in leaves_of(cond) if leaf.tag is not None}


def _compare(op: str, operand: Any, value: str | None) -> bool:
    """Comparison/membership of a (current) value; an absent value compares false."""
    if value is None:
        return False
    if op == "in":
        return any(values_equal(value, v) for v in operand)
    if op == "eq":
        return values_equal(value, operand)
    if op == "ne":
        return not values_equal(value, operand)
    sign = _order(value, operand)
    return {"gt": sign > 0, "ge": sign >= 0, "lt": sign < 0, "le": sign <= 0}[op]


def _is_in(value: str | None, members: tuple[str, ...]) -> bool:
    return value is not None and any(values_equal(value, m) for m in members)


def _transition(op: str, operand: Any, before: str | None, after: str | None) -> bool:
    """``crosses_above t``: after > t and not before > t (absent before counts as not above);
    ``crosses_below t`` symmetrically; ``enters S``: after in S and before not in S;
    ``leaves S``: before in S and after not in S (absent after counts as left)."""
    if op in ("enters", "leaves"):
        was, now = _is_in(before, operand), _is_in(after, operand)
        return (now and not was) if op == "enters" else (was and not now)
    x, y = as_number(before), as_number(after)
    if y is None:
        return False
    if op == "crosses_above":
        return bool(y > operand and not (x is not None and x > operand))
    return bool(y < operand and not (x is not None and x < operand))


def holds(cond: Condition, previous: Profile, current: Profile) -> bool:
    """Truth of ``cond`` for the step ``previous`` → ``current``."""
    if cond.all is not None:
        return all(holds(c, previous, current) for c in cond.all)
    if cond.any is not None:
        return any(holds(c, previous, current) for c in cond.any)
    if cond.not_ is not None:
        return not holds(cond.not_, previous, current)
    assert cond.tag is not None and cond.operator is not None
    op = cond.operator
    if op in TRANSITIONS:
        return _transition(op, cond.operand(op), previous.get(cond.tag), current.get(cond.tag))
    return _compare(op, cond.operand(op), current.get(cond.tag))


def compiled(cond: Condition) -> Predicate:
    """``holds`` of ``cond`` as a function of (previous, current), built once: the tree is walked
    and every leaf's operator and operand looked up here instead of on each evaluation. Same
    truth as ``holds`` for every pair of profiles (it calls the same comparisons)."""
    if cond.all is not None:
        every = tuple(compiled(c) for c in cond.all)
        return lambda previous, current: all(f(previous, current) for f in every)
    if cond.any is not None:
        some = tuple(compiled(c) for c in cond.any)
        return lambda previous, current: any(f(previous, current) for f in some)
    if cond.not_ is not None:
        negated = compiled(cond.not_)
        return lambda previous, current: not negated(previous, current)
    assert cond.tag is not None and cond.operator is not None
    tag, op = cond.tag, cond.operator
    operand = cond.operand(op)
    if op in TRANSITIONS:
        return lambda previous, current: _transition(op, operand, previous.get(tag), current.get(tag))
    return lambda _previous, current: _compare(op, operand, current.get(tag))


def leaf_truth(leaf: Condition, value: str | None) -> bool:
    """What a tag test says about one value: its comparison, or for a transition the side of the
    edge (``crosses_above t``: above t; ``crosses_below t``: below t; ``enters``/``leaves S``: in S).

    The basis of skipping evaluations (``stream.core.steps``): ``holds(C, p, c)`` depends on the
    profiles only through ``leaf_truth`` of each leaf on ``p`` and ``c``, so when no leaf's truth
    differs between the previous profile and the current one, no rule fires, and skipping the step
    leaves every later step's decision unchanged.
    """
    assert leaf.tag is not None and leaf.operator is not None
    op, operand = leaf.operator, leaf.operand(leaf.operator)
    if op in ("enters", "leaves"):
        return _is_in(value, operand)
    if op in ("crosses_above", "crosses_below"):
        x = as_number(value)
        return x is not None and (x > operand if op == "crosses_above" else x < operand)
    return _compare(op, operand, value)


def fires(cond: Condition, previous: Profile, current: Profile) -> bool:
    """Edge trigger: holds for ``previous`` → ``current`` but not for ``previous`` → ``previous``."""
    return holds(cond, previous, current) and not holds(cond, previous, previous)


def describe(cond: Condition) -> str:
    """Readable one-line form, e.g. ``all(rfm_segment enters ['At Risk'], value_tier in ['high', 'vip'])``."""
    if cond.tag is not None and cond.operator is not None:
        operand = cond.operand(cond.operator)
        shown = list(operand) if isinstance(operand, tuple) else operand
        return f"{cond.tag} {cond.operator} {shown!r}"
    name = next(g for g in GROUPS if cond.operand(g) is not None)
    return f"{name}({', '.join(describe(c) for c in cond.children())})"


def fired_by(cond: Condition, previous: Profile, current: Profile) -> list[str]:
    """The tag tests that became true on this step (the edges that made the rule fire)."""
    return [describe(leaf) for leaf in leaves_of(cond) if fires(leaf, previous, current)]
