"""The catalogue's value domains hold every value the engine writes.

Rule values are checked against these domains (stream/rules/config.py ``check_values``): a value
the engine can write but the catalogue does not list would make a valid rule impossible to write.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import orjson
import pytest
from portrait_dev import synth

from stream.contracts.events import parse_event
from stream.settings import ConfigError
from stream.tagging.definitions import BOOL_VALUES, ValueDomain, load_catalogue
from stream.tagging.engine import DAYPARTS, RFM_SEGMENTS, RfmThresholds, apply_event, evaluate, rfm_segment
from stream.tagging.state import DAY, ORDERS, UserState

CATALOGUE = load_catalogue()
CATEGORICAL = {t.name: t for t in CATALOGUE.tags if t.allowed is not None}


def _quartiles(values: list[float]) -> tuple[float, ...]:
    ordered = sorted(values)
    return tuple(ordered[len(ordered) * k // 5] for k in range(1, 5))


def _emitted() -> dict[str, set[str]]:
    """Every value the engine wrote for synthetic users, after each event and at later times."""
    params = CATALOGUE.params
    states: dict[str, UserState] = {}
    seen: dict[str, set[str]] = {}
    events = synth.generate(users=300, events=9000, seed=11)
    for offset, raw in enumerate(events):
        event = parse_event(orjson.dumps(raw))
        state = states.setdefault(event.subject_id, UserState())
        apply_event(state, event, "portrait.clickstream/0", offset, params)
        for name, value in evaluate(state, event.epoch, RfmThresholds(), params).items():
            seen.setdefault(name, set()).add(value)
    buyers = [s for s in states.values() if s.last_order is not None]
    thresholds = RfmThresholds(
        1,
        _quartiles([s.last_order for s in buyers if s.last_order is not None]),
        _quartiles([float(sum(t[ORDERS] for t in s.tiles.values())) for s in buyers]),
        _quartiles([float(i) * 1000 for i in range(len(buyers))]),
    )
    end = synth.DEFAULT_END.timestamp()
    for state in states.values():
        for later in (0, 0.3, 1, 3, 8, 20, 31, 40, 95):
            for name, value in evaluate(state, end + later * DAY, thresholds, params).items():
                seen.setdefault(name, set()).add(value)
    return seen


EMITTED = _emitted()


def test_every_value_the_engine_writes_is_in_its_tags_domain() -> None:
    outside = {
        name: sorted(v for v in values if not CATALOGUE.domain(name).accepts(v))  # type: ignore[union-attr]
        for name, values in EMITTED.items()
    }
    assert {name: values for name, values in outside.items() if values} == {}
    assert set(EMITTED) <= CATALOGUE.names


def test_the_engines_enumerations_are_the_catalogue_values() -> None:
    segments = {name for name, _, _ in RFM_SEGMENTS} | {"Prospects"}
    assert {rfm_segment(r, f) for r, f in itertools.product(range(1, 6), repeat=2)} | {"Prospects"} == segments
    assert set(CATEGORICAL["rfm_segment"].allowed or ()) == segments
    assert CATEGORICAL["preferred_daypart"].allowed == DAYPARTS
    for name in ("night_owl", "cart_abandoned"):
        assert CATEGORICAL[name].allowed == BOOL_VALUES


@pytest.mark.parametrize(
    "name",
    [
        "activity_level",
        "activity_trend",
        "preferred_daypart",
        "night_owl",
        "funnel_stage_7d",
        "cart_abandoned",
        "value_tier",
        "rfm_segment",
        "nps_class",
        "satisfaction",
    ],
)
def test_synthetic_users_reach_every_listed_value(name: str) -> None:
    """No dead value in the catalogue: the synthetic population reaches each one (so every listed
    categorical tag is covered by the domain test above)."""
    assert EMITTED[name] == set(CATEGORICAL[name].allowed or ())


def test_domains_accept_and_refuse() -> None:
    score = ValueDomain(type="int", min=1, max=5)
    assert [score.accepts(v) for v in ("1", "5", "2.5", "0", "6", "high", "")] == [
        True,
        True,
        True,
        False,
        False,
        False,
        False,
    ]
    assert score.describe() == "numbers from 1 to 5"
    assert ValueDomain(type="money", min=0).describe() == "numbers >= 0"
    assert ValueDomain(type="bool").accepts("true") and not ValueDomain(type="bool").accepts("yes")
    assert ValueDomain(type="time").accepts("2026-11-01T00:00:00+00:00")
    assert not ValueDomain(type="time").accepts("yesterday")
    assert ValueDomain(type="str").accepts("anything at all")


def _write(tmp_path: Path, item: str) -> Path:
    path = tmp_path / "tags.yaml"
    path.write_text("version: 1\ntags:\n  - {name: region, level: L1, category: a, owner: b, description: c, " + item)
    return path


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ("type: int, values: [a, b]}\n", "values: only str and bool tags have a list of values, not int"),
        ("type: str, values: []}\n", "values: need at least one value, each once"),
        ("type: str, values: [a, a]}\n", "values: need at least one value, each once"),
        ("type: bool, values: [true, maybe]}\n", "values: a bool tag's values are true and false"),
        ("type: str, min: 0}\n", "min/max: only numeric tags (float, int, money, ratio) have a range"),
        ("type: int, min: 5, max: 1}\n", "min must not exceed max"),
    ],
)
def test_a_bad_domain_is_one_line(tmp_path: Path, item: str, message: str) -> None:
    path = _write(tmp_path, item)
    with pytest.raises(ConfigError) as err:
        load_catalogue(path)
    assert str(err.value) == f"{path}: tags[0] (region): {message}"
