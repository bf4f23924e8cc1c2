"""The ``portrait`` read commands against the real broker and Valkey of the session.

Profiles are written as the worker writes them (one hash of strings) and read back typed; dead
letters and triggers are produced to their topics and tailed in order.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from portrait_dev import synth
from portrait_dev.harness import settings_env

from stream.cli.main import main
from stream.contracts.topics import Topics
from stream.settings import Settings
from stream.storage.store import Store
from tests.integration.helpers import producer, worker


@pytest.fixture
def cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Callable[..., tuple[int, str, str]]:
    def run(settings: Settings, *argv: str) -> tuple[int, str, str]:
        for key, value in settings_env(settings).items():
            monkeypatch.setenv(key, value)
        code = main(list(argv))
        out, err = capsys.readouterr()
        return code, out, err

    return run


async def _write_profile(settings: Settings, uid: str, profile: dict[str, str]) -> None:
    async with Store.open(settings) as store:
        await store.client.hset(store.keys.profile(uid), mapping=profile)


async def _produce(settings: Settings, topic: str, values: list[dict[str, Any]], partition: int | None = None) -> None:
    async with producer(settings, acks="all") as kafka:
        for value in values:
            await kafka.send_and_wait(topic, orjson.dumps(value), partition=partition)


def test_profile_reads_back_typed_and_readable(make_settings: Callable[..., Settings], cli: Any) -> None:
    settings = make_settings(partitions=1)
    stored = {
        "recency_days": "1",
        "night_owl": "false",
        "monetary_90d": "80.00",
        "churn_risk": "0.8100",
        "churn_band": "high",
        "_evaluated_at": "1795983337.000",
    }
    asyncio.run(_write_profile(settings, "u1", stored))
    code, out, err = cli(settings, "profile", "u1", "--json")
    assert code == 0, err
    assert json.loads(out) == {
        "recency_days": 1,
        "night_owl": False,
        "monetary_90d": 80.0,
        "churn_risk": 0.81,
        "churn_band": "high",
        "_evaluated_at": "2026-11-29T20:15:37+00:00",
    }
    code, out, _ = cli(settings, "profile", "u1")
    assert code == 0 and "1 day" in out and "churn_band             high" in out
    code, _, err = cli(settings, "profile", "nobody")
    assert code == 2 and err.strip() == "error: no profile for 'nobody' (unknown user, expired or erased)"


def test_tails_on_real_topics(make_settings: Callable[..., Settings], cli: Any) -> None:
    settings = make_settings(partitions=1)
    topics = Topics(settings.topic_prefix)
    code, out, _ = cli(settings, "dlq", "tail", "--idle", "1")
    assert code == 0 and out.strip() == "no dead letters"
    code, out, _ = cli(settings, "triggers", "tail", "--idle", "1")
    assert code == 0 and out.strip() == "no triggers yet"

    letter = {
        "reason": "schema_violation",
        "error": "amount: " + "x " * 80 + "END",
        "original_b64": "e30=",
        "key_b64": None,
        "source_topic": topics.transactions,
        "source_partition": 0,
        "source_offset": 3,
        "processor_version": "test",
        "dead_lettered_at": 1795983337.0,
    }
    later, earlier = (
        {
            "trigger_id": tid,
            "rule_id": "winback",
            "rule_version": 1,
            "user_id": user,
            "action": {"type": "coupon", "params": {}},
            "channel": "email",
            "event_time": at,
            "explanation": {"condition": "", "fired_by": ["recency_days ge '14'"], "values": {}},
        }
        for tid, user, at in (("t2", "bob", 1795983400.0), ("t1", "alice", 1795983337.0))
    )
    asyncio.run(_produce(settings, topics.dead_letters, [letter]))
    asyncio.run(_produce(settings, topics.trigger("triggers.coupon"), [later, earlier, later]))

    code, out, _ = cli(settings, "dlq", "tail", "--idle", "1")
    assert code == 0 and "schema_violation" in out and out.rstrip().endswith("1 dead letter")
    assert "END" in out and max(len(line) for line in out.splitlines()) <= 100
    code, out, _ = cli(settings, "triggers", "tail", "--idle", "1", "--json")
    docs = [json.loads(line) for line in out.splitlines()]
    assert [(d["user_id"], d["duplicate"]) for d in docs] == [("alice", False), ("bob", False), ("bob", True)]
    code, out, _ = cli(settings, "triggers", "tail", "--idle", "1")
    assert "because recency_days >= 14" in out and out.rstrip().endswith("2 distinct triggers")


def test_replay_wait_reports_what_the_worker_did_with_each_row(
    make_settings: Callable[..., Settings], cli: Any, tmp_path: Path
) -> None:
    settings = make_settings(clock="wall", partitions=2)
    end = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)
    valid = synth.generate(users=4, events=30, seed=11, days=20, end=end)
    wanted = ("invalid_json", "invalid_json", "schema_violation", "future_timestamp")
    malformed = [(raw, reason) for _, raw, reason in synth.malformed_messages(seed=11, end=end) if b"\n" not in raw]
    bad = [next(raw for raw, r in malformed if r == reason and raw) for reason in dict.fromkeys(wanted)]
    bad.insert(1, next(raw for raw, r in malformed if r == "invalid_json" and raw not in bad))
    lines = [orjson.dumps(e) for e in valid]
    for i, raw in enumerate(bad):  # the bad rows among the good ones
        lines.insert(3 + 5 * i, raw)
    export = tmp_path / "export.jsonl"
    export.write_bytes(b"\n".join(lines) + b"\n")

    with worker(settings, tmp_path / "worker.log"):
        code, out, err = cli(settings, "replay", str(export), "--wait", "--quiet", "--json")
        assert code == 0, err
        report = json.loads(out)
        assert report["read"] == report["sent"] == report["handled"] == len(valid) + 4
        assert report["applied"] == len(valid) and report["waited"] is True
        assert report["duplicates"] == report["redelivered"] == 0
        assert report["dead_lettered"] == dict(Counter(wanted)) and report["dead_lettered_total"] == 4

        # the same file again: every good row is known already, the bad ones are dead-lettered again
        code, out, err = cli(settings, "replay", str(export), "--wait", "--quiet")
        assert code == 0, err
        rows = [line.split(maxsplit=1) for line in out.splitlines()]
        text = {row[0]: row[1] for row in rows if row[0] in ("read", "applied", "dead-lettered")}
        assert text["applied"] == "0 events" and text["read"] == f"{len(valid) + 4} rows"
        assert text["dead-lettered"] == "4 (future_timestamp 1, invalid_json 2, schema_violation 1)"
        assert max(len(line) for line in out.splitlines()) <= 100


def _letter_at(offset: int, at: float) -> dict[str, Any]:
    return {
        "reason": "schema_violation",
        "error": f"letter {offset}",
        "original_b64": "e30=",
        "key_b64": None,
        "source_topic": "x.transactions",
        "source_partition": 0,
        "source_offset": offset,
        "processor_version": "test",
        "dead_lettered_at": at,
    }


def test_tails_start_at_an_offset_of_one_partition(make_settings: Callable[..., Settings], cli: Any) -> None:
    settings = make_settings(partitions=2)
    topics = Topics(settings.topic_prefix)
    on_0 = [_letter_at(i, 1795983300.0 + i) for i in range(3)]
    on_1 = [_letter_at(10 + i, 1795983400.0 + i) for i in range(2)]
    asyncio.run(_produce(settings, topics.dead_letters, on_0, partition=0))
    asyncio.run(_produce(settings, topics.dead_letters, on_1, partition=1))

    def tail(*argv: str) -> list[tuple[int, int, int]]:
        code, out, err = cli(settings, "dlq", "tail", "--idle", "1", "--json", *argv)
        assert code == 0, err
        return [(d["partition"], d["offset"], d["source_offset"]) for d in map(json.loads, out.splitlines())]

    assert tail("--partition", "0", "--offset", "1") == [(0, 1, 1), (0, 2, 2)]
    assert tail("--offset", "1") == [(0, 1, 1), (0, 2, 2), (1, 1, 11)]
    assert tail("--partition", "1") == [(1, 0, 10), (1, 1, 11)]
    assert tail("--from-beginning") == [(0, 0, 0), (0, 1, 1), (0, 2, 2), (1, 0, 10), (1, 1, 11)]
    code, _, err = cli(settings, "dlq", "tail", "--idle", "1", "--partition", "5")
    assert code == 2 and err.strip() == f"error: topic {topics.dead_letters} has no partition 5 (it has 0..1)"

    coupon = topics.trigger("triggers.coupon")
    triggers = [
        {"trigger_id": f"t{i}", "rule_id": "winback", "rule_version": 1, "user_id": f"u{i}", "event_time": 1.0e9 + i}
        for i in range(4)
    ]
    asyncio.run(_produce(settings, coupon, triggers[:1], partition=0))
    asyncio.run(_produce(settings, coupon, triggers[1:], partition=1))
    code, out, err = cli(settings, "triggers", "tail", "--idle", "1", "--json", "--partition", "1", "--offset", "2")
    assert code == 0, err
    assert [(d["topic"], d["partition"], d["offset"], d["trigger_id"]) for d in map(json.loads, out.splitlines())] == [
        (coupon, 1, 2, "t3")
    ]
    code, out, err = cli(settings, "triggers", "tail", "--idle", "1", "--json", "--partition", "0")
    assert code == 0, err
    assert [json.loads(line)["trigger_id"] for line in out.splitlines()] == ["t0"]
