"""The ``portrait`` read commands against the real broker and Valkey of the session.

Profiles are written as the worker writes them (one hash of strings) and read back typed; dead
letters and triggers are produced to their topics and tailed in order.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaProducer
from portrait_dev.harness import settings_env

from stream.cli.main import main
from stream.contracts.topics import Topics
from stream.settings import Settings
from stream.storage.store import Store


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


async def _produce(settings: Settings, topic: str, values: list[dict[str, Any]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap_servers(), acks="all")
    await producer.start()
    try:
        for value in values:
            await producer.send_and_wait(topic, orjson.dumps(value))
    finally:
        await producer.stop()


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
