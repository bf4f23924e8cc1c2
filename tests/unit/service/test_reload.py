"""Hot reload of the rules and the tag catalogue (stream/app.py ``Definitions``, one FileWatcher)."""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path
from types import SimpleNamespace

import pytest

from stream.app import Definitions
from stream.metrics import Metrics
from stream.rules import load_rules
from stream.service.reload import Sweep
from stream.settings import Settings
from stream.tagging.definitions import default_tags_path, load_catalogue

SHIPPED = default_tags_path().read_text()
RULE = """version: 1
rules:
  - id: big_spender
    version: 1
    when: {tag: value_tier, enters: vip}
    action: {type: coupon, params: {campaign: vip, value: 5.0}}
"""


def _write(path: Path, text: str, bump: int) -> None:
    path.write_text(text)
    stat = path.stat()
    os.utime(path, (stat.st_atime, stat.st_mtime + bump))  # a new stamp even within one clock tick


def _v2(text: str) -> str:
    return text.replace("version: 1\n", "version: 2\n", 1)


def _setup(tmp_path: Path) -> tuple[Definitions, SimpleNamespace, Path, Path]:
    tags, rules = tmp_path / "tags.yaml", tmp_path / "rules.yaml"
    tags.write_text(SHIPPED)
    rules.write_text(RULE)
    catalogue = load_catalogue(tags)
    processor = SimpleNamespace(catalogue=catalogue, rules=load_rules(rules, catalogue))
    settings = Settings(tags_file=tags, rules_file=rules, state_file=tmp_path / "none.json")
    return Definitions(settings, processor, Metrics()), processor, tags, rules  # type: ignore[arg-type]


def test_a_valid_catalogue_change_is_swapped_in(tmp_path: Path) -> None:
    definitions, processor, tags, _ = _setup(tmp_path)
    assert not definitions.poll_catalogue()  # unchanged
    _write(tags, SHIPPED.replace("version: 1\n", "version: 2\n", 1).replace("vip: 1000,", "vip: 800,"), 1)
    assert definitions.poll_catalogue()
    assert processor.catalogue.version == 2 and processor.catalogue.params.value_tiers.vip == 800


@pytest.mark.parametrize(
    ("change", "error"),
    [
        (lambda t: t.replace("vip: 1000,", "vip: 800,"), "version: 1 must be above the active version 1"),
        (
            lambda t: t.replace("version: 1\n", "version: 2\n", 1).replace("{name: value_tier,", "{name: value_tierx,"),
            "unknown tag 'value_tierx'",
        ),
        (  # the active rule reads value_tier: a catalogue where its value does not exist is refused
            lambda t: _v2(t).replace("values: [vip, high,", "values: [vvip, high,"),
            "the active rules do not fit it: ",
        ),
    ],
)
def test_an_invalid_catalogue_change_is_rejected_and_the_previous_kept(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, change, error: str
) -> None:
    definitions, processor, tags, _ = _setup(tmp_path)
    before = processor.catalogue
    _write(tags, change(SHIPPED), 1)
    with caplog.at_level(logging.ERROR):
        assert not definitions.poll_catalogue()
    assert processor.catalogue is before
    [line] = [r.getMessage() for r in caplog.records]
    assert line.startswith("tag catalogue change rejected, previous catalogue stays active: ") and error in line
    assert "\n" not in line and str(tags) in line


def test_rules_reload_checks_against_the_active_catalogue(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    definitions, processor, tags, rules = _setup(tmp_path)
    _write(tags, SHIPPED.replace("version: 1\n", "version: 2\n", 1), 1)
    assert definitions.poll_catalogue()
    _write(rules, RULE.replace("value_tier", "lifecycle_stage").replace("enters: vip", "enters: lapsed"), 1)
    definitions.poll_rules()
    assert processor.rules.active[0].id == "big_spender" and "lifecycle_stage" in str(processor.rules.active[0].when)


class _Due:
    """A due set of 7 users scanned 3 at a time."""

    def __init__(self) -> None:
        self.users, self.marked = [f"u{i}" for i in range(7)], []

    async def mark_due_chunk(self, cursor: int, count: int) -> tuple[int, int]:
        chunk = self.users[cursor : cursor + count]
        self.marked += chunk
        nxt = cursor + count
        return (nxt if nxt < len(self.users) else 0), len(chunk)


def test_the_sweep_marks_every_user_once_in_bounded_chunks() -> None:
    due = _Due()
    sweep = Sweep(due, 3)
    assert asyncio.run(sweep.tick()) == 0 and not sweep.running  # nothing before a change
    sweep.start()
    steps = []
    while sweep.running:
        steps.append(asyncio.run(sweep.tick()))
    assert steps == [3, 3, 1] and due.marked == due.users and sweep.marked == 7
