"""The embedded infrastructure itself: the session broker and Valkey answer, and the
``portrait infra up|status|down`` life cycle starts and stops real processes."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import redis
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from kafka import KafkaAdminClient
from portrait_dev import infra as infra_mod
from portrait_dev.infra import InfraHandle

from stream.contracts.topics import Topics
from stream.settings import Settings
from tests.conftest import Names

pytestmark = pytest.mark.integration


def _partition_counts(bootstrap: str, topics: list[str]) -> dict[str, int]:
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        return {t["name"]: len(t["partitions"]) for t in admin.describe_topics(topics)}
    finally:
        admin.close()


async def _round_trip(bootstrap: str, topic: str, group: str, count: int) -> list[tuple[bytes, bytes]]:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        for i in range(count):
            await producer.send(topic, key=f"user-{i % 5}".encode(), value=f"event-{i}".encode())
        await producer.flush()
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=group,
        auto_offset_reset="earliest",
        session_timeout_ms=6000,  # Tansu holds JoinGroup for session_timeout/2
        heartbeat_interval_ms=1000,
    )
    await consumer.start()
    received: list[tuple[bytes, bytes]] = []
    try:
        deadline = time.monotonic() + 60
        while len(received) < count and time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=500)
            for records in batches.values():
                received.extend((r.key, r.value) for r in records)
        await consumer.commit()
    finally:
        await consumer.stop()
    return received


def test_produce_and_consume_through_the_session_broker(infra: InfraHandle, names: Names) -> None:
    topic = f"{names.topic_prefix}.roundtrip"
    infra.create_topics([topic], partitions=3)
    infra.create_topics([topic], partitions=3)  # idempotent
    received = asyncio.run(_round_trip(infra.bootstrap, topic, names.app_id, 50))
    assert sorted(v for _, v in received) == sorted(f"event-{i}".encode() for i in range(50))
    # one key always lands on one partition, so per-key order is kept
    by_key: dict[bytes, list[int]] = {}
    for key, value in received:
        by_key.setdefault(key, []).append(int(value.decode().split("-")[1]))
    assert all(seq == sorted(seq) for seq in by_key.values())


def test_valkey_set_get(infra: InfraHandle, names: Names) -> None:
    client = redis.Redis.from_url(infra.redis_url)
    try:
        key = f"{names.key_prefix}:probe"
        assert client.set(key, "v1", ex=60)
        assert client.get(key) == b"v1"
        assert client.incr(f"{names.key_prefix}:n") == 1
    finally:
        client.close()


def test_make_settings_creates_the_test_topics(make_settings: Callable[..., Settings], infra: InfraHandle) -> None:
    settings = make_settings(partitions=2)
    assert settings.bootstrap_servers() == infra.bootstrap
    assert settings.resolved_redis_url() == infra.redis_url
    topics = list(Topics(settings.topic_prefix).all)
    assert _partition_counts(infra.bootstrap, topics) == dict.fromkeys(topics, 2)


def test_transactions_on_real_kafka(infra: InfraHandle, names: Names) -> None:
    """What Tansu cannot do (InitProducerId fails there): needed for Faust exactly_once."""
    if infra.broker_kind != "kafka":
        pytest.skip("transactions need the real Apache Kafka broker")
    topic = f"{names.topic_prefix}.tx"
    infra.create_topics([topic], partitions=1)

    async def run() -> list[bytes]:
        producer = AIOKafkaProducer(bootstrap_servers=infra.bootstrap, transactional_id=f"{names.app_id}-tx")
        await producer.start()
        try:
            async with producer.transaction():
                await producer.send(topic, b"committed")
            await producer.begin_transaction()
            await producer.send(topic, b"aborted")
            await producer.abort_transaction()
        finally:
            await producer.stop()
        consumer = AIOKafkaConsumer(
            topic,
            bootstrap_servers=infra.bootstrap,
            group_id=names.app_id,
            auto_offset_reset="earliest",
            isolation_level="read_committed",
        )
        await consumer.start()
        try:
            got: list[bytes] = []
            deadline = time.monotonic() + 30
            while not got and time.monotonic() < deadline:
                for records in (await consumer.getmany(timeout_ms=500)).values():
                    got.extend(r.value for r in records)
            return got
        finally:
            await consumer.stop()

    assert asyncio.run(run()) == [b"committed"]


def test_up_status_down_round_trip(tmp_path: Path, names: Names) -> None:
    state_file = tmp_path / "run" / "infra.json"
    settings = Settings(state_file=state_file, topic_prefix=names.topic_prefix, partitions=2)
    try:
        state = infra_mod.up(settings)
        assert state_file.exists()
        assert state["broker_kind"] == "tansu"
        assert state["broker_url"].startswith("kafka://127.0.0.1:")
        assert state["redis_url"].startswith("redis://127.0.0.1:")
        pids = [int(state["broker_pid"]), int(state["redis_pid"])]
        assert all(infra_mod.pid_alive(pid) for pid in pids)
        assert (state_file.parent / "tansu.log").exists() and (state_file.parent / "valkey.log").exists()

        assert infra_mod.up(settings) == state  # idempotent while both live

        report = infra_mod.status(settings)
        assert report["running"] is True
        assert report["broker_alive"] and report["redis_alive"]
        assert report["broker_answers"] and report["redis_answers"]
        assert report["broker_pid"] == pids[0] and report["redis_pid"] == pids[1]

        # other commands find the services through the state file alone
        reader = Settings(state_file=state_file, topic_prefix=names.topic_prefix)
        topics = list(Topics(names.topic_prefix).all)
        assert _partition_counts(reader.bootstrap_servers(), topics) == dict.fromkeys(topics, 2)
        assert infra_mod.redis_answers(reader.resolved_redis_url())
    finally:
        stopped = infra_mod.down(settings)
    assert stopped is True
    assert not state_file.exists()
    assert not any(infra_mod.pid_alive(pid) for pid in pids)
    assert infra_mod.status(settings) == {"state_file": str(state_file), "running": False}
    assert infra_mod.down(settings) is False


def test_up_replaces_a_stale_state_file(tmp_path: Path, names: Names) -> None:
    settings = Settings(state_file=tmp_path / "infra.json", topic_prefix=names.topic_prefix, partitions=1)
    try:
        first = infra_mod.up(settings)
        infra_mod.stop_pid(int(first["broker_pid"]))  # the broker died behind our back
        assert infra_mod.status(settings)["running"] is False
        second = infra_mod.up(settings)
        assert second["broker_pid"] != first["broker_pid"]
        assert not infra_mod.pid_alive(int(first["redis_pid"]))  # the survivor was stopped too
        assert infra_mod.status(settings)["running"] is True
    finally:
        infra_mod.down(settings)


def test_embedded_context_stops_its_children(names: Names) -> None:
    settings = Settings(topic_prefix=names.topic_prefix, partitions=1, state_file=Path("unused.json"))
    with infra_mod.embedded(settings, broker="tansu") as handle:
        pids = [p.pid for p in handle.processes]
        assert all(infra_mod.pid_alive(pid) for pid in pids)
        assert infra_mod.broker_answers(handle.bootstrap)
        assert infra_mod.redis_answers(handle.redis_url)
        workdir = handle.workdir
    assert not any(infra_mod.pid_alive(pid) for pid in pids)
    assert not workdir.exists()  # temporary directory removed


def test_embedded_valkey_keeps_its_data_across_a_kill(tmp_path: Path) -> None:
    """AOF everysec, like deploy/valkey/valkey.conf: a kill -9 and a restart on the same directory
    lose nothing that was acknowledged (issue 12, item 4)."""
    proc, url = infra_mod.start_valkey(tmp_path / "data", tmp_path / "valkey.log")
    port = int(url.rsplit(":", 1)[1].split("/")[0])
    try:
        client = redis.Redis.from_url(url)
        client.hset("P:v1:{alice}:profile", mapping={"frequency_30d": "3"})
        assert client.config_get("appendonly") == {"appendonly": "yes"}
        client.close()
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # no shutdown: nothing gets a chance to flush
        while proc.alive():
            time.sleep(0.01)
    again, url = infra_mod.start_valkey(tmp_path / "data", tmp_path / "valkey-2.log", port=port)
    try:
        client = redis.Redis.from_url(url)
        assert client.hgetall("P:v1:{alice}:profile") == {b"frequency_30d": b"3"}
        client.close()
    finally:
        again.stop()


def test_embedded_valkey_uses_the_deploy_encoding_settings(tmp_path: Path) -> None:
    """The embedded Valkey and deploy/valkey/valkey.conf ship the same listpack limits (docs/operations.md
    'Redis memory settings'), and with them a shard-sized audience set (1,000 members) and due set
    stay in the compact encoding the memory figures assume."""
    conf_path = Path(__file__).resolve().parents[2] / "deploy/valkey/valkey.conf"
    lines = [line.split() for line in conf_path.read_text().splitlines() if line and not line.startswith("#")]
    shipped = {words[0]: words[1] for words in lines if "-max-listpack-" in words[0]}
    assert shipped == {
        "hash-max-listpack-value": "1024",
        "set-max-listpack-entries": "1024",
        "zset-max-listpack-entries": "1024",
    }
    proc, url = infra_mod.start_valkey(tmp_path / "data", tmp_path / "valkey.log")
    try:
        client = redis.Redis.from_url(url, decode_responses=True)
        for name, value in shipped.items():
            assert client.config_get(name) == {name: value}
        client.sadd("aud", *(f"u{i:07d}" for i in range(1000)))
        client.zadd("due", {f"u{i:07d}": 1.8e9 + i for i in range(1000)})
        assert client.object("encoding", "aud") == "listpack"
        assert client.object("encoding", "due") == "listpack"
        client.close()
    finally:
        proc.stop()


def test_kafka_cluster_ids_never_start_with_a_dash(monkeypatch) -> None:
    """Kafka's storage tool reads an id starting with "-" as an option and refuses to format."""
    import uuid

    from portrait_dev import kafka_jvm

    dashed, plain = uuid.UUID(bytes=b"\xf8" + bytes(15)), uuid.UUID(bytes=bytes(16))
    drawn = iter([dashed, plain])
    monkeypatch.setattr(kafka_jvm.uuid, "uuid4", lambda: next(drawn))
    assert kafka_jvm.base64.urlsafe_b64encode(dashed.bytes).startswith(b"-")  # the case is real
    assert kafka_jvm._cluster_id() == "A" * 22
