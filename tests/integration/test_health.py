"""Liveness, readiness, /config and percent-encoded profile ids on a real worker process.

The broker and Redis outages are made on services this test owns (``embedded(...)``): the session
broker and Valkey are shared by every test and must stay up.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from portrait_dev import infra as infra_mod
from portrait_dev.harness import settings_env, stop_worker, wait_healthy

from stream.contracts.topics import Topics
from stream.settings import MASK, Settings
from stream.storage.store import Store
from tests.integration.helpers import processed_and_settled, producer, worker

pytestmark = pytest.mark.integration
FAST_PROBES = {"readiness_probe_interval_s": 0.5, "readiness_probe_timeout_s": 2.0}


def _get(settings: Settings, path: str) -> tuple[int, bytes]:
    url = f"http://{settings.web_host}:{settings.web_port}{path}"
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _ready(settings: Settings) -> tuple[int, dict[str, Any]]:
    status, body = _get(settings, "/readyz")
    return status, json.loads(body)


def _wait_for(settings: Settings, want: Callable[[int, dict[str, Any]], bool], timeout: float = 90.0) -> dict[str, Any]:
    """Poll /readyz until ``want(status, body)``; fail with the last answer."""
    deadline = time.monotonic() + timeout
    status, body = _ready(settings)
    while not want(status, body):
        if time.monotonic() > deadline:
            raise AssertionError(f"/readyz never matched in {timeout}s; last answer {status} {body}")
        time.sleep(0.3)
        status, body = _ready(settings)
    return body


def _event(uid: str, n: int) -> dict[str, Any]:
    ts = datetime.now(UTC).isoformat()
    return {"schema_version": 1, "event_id": f"{uid}-{n}", "type": "page_view", "user_id": uid, "ts": ts,
            "page": f"/p/{n}", "category": "shoes"}  # fmt: skip


async def _send(settings: Settings, events: list[dict[str, Any]], key: bytes = b"k") -> None:
    async with producer(settings, acks="all") as kafka:
        for event in events:
            await kafka.send(Topics(settings.topic_prefix).clickstream, orjson.dumps(event), key=key)


@pytest.fixture
def own_infra(tmp_path: Path) -> Iterator[infra_mod.InfraHandle]:
    """A broker (Tansu, fast to restart) and a Valkey that only this test uses."""
    with infra_mod.embedded(tmp_path / "own", broker="tansu") as handle:
        yield handle


def _own_settings(handle: infra_mod.InfraHandle, tmp_path: Path, **overrides: Any) -> Settings:
    token = f"h{os.getpid()}x{int(time.time() * 1000) % 10**8}"
    values: dict[str, Any] = {
        "topic_prefix": token,
        "key_prefix": token,
        "app_id": f"portrait-{token}",
        "state_file": tmp_path / "infra.json",
        "partitions": 2,
        "web_port": infra_mod.free_port(),
        **FAST_PROBES,
    }
    values.update(overrides)
    settings = handle.settings(**values)
    handle.create_topics(Topics(settings.topic_prefix).all, settings.partitions)
    return settings


def test_readiness_names_the_broker_while_it_is_down(own_infra: infra_mod.InfraHandle, tmp_path: Path) -> None:
    settings = _own_settings(own_infra, tmp_path)
    with worker(settings, tmp_path / "worker.log"):
        body = _wait_for(settings, lambda status, _: status == 200)
        assert body["ready"] is True and all(check["ok"] for check in body["checks"].values())
        assert isinstance(body["checks"]["progress"]["lag"], int)
        broker = next(p for p in own_infra.processes if p.name == "tansu")
        broker.stop()
        down = _wait_for(settings, lambda status, b: status == 503 and not b["checks"]["broker"]["ok"])
        assert down["ready"] is False and down["checks"]["broker"]["error"]
        assert down["checks"]["redis"]["ok"] is True, "Redis stayed up: only the broker may be named"
        assert _get(settings, "/livez")[0] == 200, "liveness must not follow the broker"
        assert _get(settings, "/healthz")[0] == 503, "/healthz is the readiness answer"
        metrics = _get(settings, "/metrics")[1].decode()
        assert 'portrait_ready{check="broker"} 0.0' in metrics
        time.sleep(3)  # several failed probes: each rebuilds its clients, the worker must stay up
        assert _ready(settings)[0] == 503
        restarted = broker.respawn()  # same port; Tansu keeps topics in memory: create them again
        own_infra.processes[own_infra.processes.index(broker)] = restarted
        infra_mod.wait_for_broker(own_infra.bootstrap, restarted)
        own_infra.create_topics(Topics(settings.topic_prefix).all, settings.partitions)
        back = _wait_for(settings, lambda status, _: status == 200)
        assert back["checks"]["broker"]["ok"] is True and back["checks"]["broker"]["error"] is None
        asyncio.run(_send(settings, [_event("after-outage", n) for n in range(5)]))
        asyncio.run(processed_and_settled(settings, 5))  # ready again means consuming again


def test_readiness_names_ingest_and_progress_when_the_consumer_stalls(
    own_infra: infra_mod.InfraHandle, tmp_path: Path
) -> None:
    """A Redis that stops answering without closing its sockets (SIGSTOP) hangs the ingest agent
    mid-batch: no call fails and no retry fires; the probe's PING and the stall checks tell."""
    settings = _own_settings(own_infra, tmp_path, readiness_stall_s=3.0)
    valkey = next(p for p in own_infra.processes if p.name == "valkey")
    with worker(settings, tmp_path / "worker.log"):
        _wait_for(settings, lambda status, _: status == 200)
        os.kill(valkey.pid, signal.SIGSTOP)
        try:
            asyncio.run(_send(settings, [_event("stalled", n) for n in range(20)]))
            stalled = _wait_for(
                settings,
                lambda status, b: (
                    status == 503
                    and not any(b["checks"][c]["ok"] for c in ("redis", "ingest", "progress"))
                    and "PING:" in (b["checks"]["redis"]["error"] or "")
                ),
            )
            # the probe's PING is named, also when a call has timed out first (it did on a slow box:
            # the check then showed only "outbox: Timeout reading from ...")
            assert "PING: no answer within" in stalled["checks"]["redis"]["error"], stalled
            assert stalled["checks"]["ingest"]["batch_in_flight_s"] > 3.0
            assert stalled["checks"]["progress"]["stalled"], stalled
            assert all(p["lag"] > 0 for p in stalled["checks"]["progress"]["stalled"])
            assert _get(settings, "/livez")[0] == 200
        finally:
            os.kill(valkey.pid, signal.SIGCONT)
        asyncio.run(processed_and_settled(settings, 20))
        back = _wait_for(settings, lambda status, _: status == 200)
        assert back["checks"]["ingest"]["batches"] >= 1


CRASHING_WORKER = """
import sys
import stream.agents.ingest as ingest
from stream.service.processor import Processor

process, park = Processor.process, ingest.park

async def crashing_process(self, messages, highwaters=None, read_through=None):
    if any(m.key == b"crash-the-agent" for m in messages):
        raise RuntimeError("injected processing bug")
    return await process(self, messages, highwaters, read_through)

async def crashing_park(processor, messages, error):
    if any(m.key == b"crash-the-agent" for m in messages):
        raise RuntimeError("injected bug while parking the batch")
    return await park(processor, messages, error)

Processor.process, ingest.park = crashing_process, crashing_park
from stream.cli.main import main
sys.argv = ["portrait", "worker"]
raise SystemExit(main())
"""


def test_readiness_names_ingest_after_the_agent_crashed(make_settings, tmp_path: Path) -> None:
    """A bug in the agent's loop (injected: the agent parks every failed batch, so nothing real
    crashes it today) makes it raise; Faust restarts it. The worker is not ready until the
    restarted agent has finished a batch."""
    settings = make_settings(partitions=1, **FAST_PROBES)
    log = tmp_path / "worker.log"
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-c", CRASHING_WORKER], env=settings_env(settings), stdout=out, stderr=subprocess.STDOUT
        )
    try:
        wait_healthy(settings, proc)
        asyncio.run(_send(settings, [_event("victim", 1)], key=b"crash-the-agent"))
        down = _wait_for(settings, lambda status, b: status == 503 and not b["checks"]["ingest"]["ok"])
        assert down["checks"]["ingest"]["crashes"] >= 1
        assert "injected bug while parking the batch" in down["checks"]["ingest"]["error"]
        assert down["checks"]["broker"]["ok"] and down["checks"]["redis"]["ok"]
        asyncio.run(_send(settings, [_event("after-crash", n) for n in range(3)]))
        asyncio.run(processed_and_settled(settings, 3, timeout=60))
        _wait_for(settings, lambda status, _: status == 200)
    except BaseException:
        print(log.read_text()[-5000:])
        raise
    finally:
        stop_worker(proc)


def test_profiles_of_percent_encoded_ids_and_config(make_settings, tmp_path: Path) -> None:
    ids = ["{odd}", "a/b", "with space", "ünïcødé", "50%", "q?x#y", "plain"]
    secret = "s3cret-pw-for-config"
    settings = make_settings(kafka_sasl_password=secret)  # PLAINTEXT: the SASL password is unused
    log = tmp_path / "worker.log"
    with worker(settings, log):
        asyncio.run(_send(settings, [_event(uid, 1) for uid in ids]))
        asyncio.run(processed_and_settled(settings, len(ids)))
        stored = asyncio.run(_profiles(settings, ids))
        for uid in ids:
            assert stored[uid], f"{uid!r} was not stored"
            status, body = _get(settings, "/profiles/" + urllib.parse.quote(uid, safe=""))
            assert status == 200, (uid, status, body)
            typed = orjson.loads(body)  # typed values (numbers, booleans, ISO 8601 times), same fields
            assert set(typed) == set(stored[uid]), uid
            assert typed["events_7d"] == int(stored[uid]["events_7d"]) and isinstance(typed["events_7d"], int)
            assert isinstance(typed["night_owl"], bool) and typed["_evaluated_at"].endswith("+00:00")
        assert _get(settings, "/profiles/" + urllib.parse.quote("nobody{}", safe=""))[0] == 404
        status, body = _get(settings, "/profiles/a/b")  # an unescaped "/" is part of the id too
        assert status == 200 and set(orjson.loads(body)) == set(stored["a/b"])

        status, body = _get(settings, "/config")
        text = log.read_text()
    assert status == 200
    config = json.loads(body)
    assert config["settings"]["kafka_sasl_password"] == MASK
    assert config["settings"]["topic_prefix"] == settings.topic_prefix
    assert secret not in body.decode()
    started = [line for line in text.splitlines() if "effective configuration" in line]
    assert len(started) == 1 and MASK in started[0] and settings.topic_prefix in started[0]
    assert secret not in text


async def _profiles(settings: Settings, ids: list[str]) -> dict[str, dict[str, str]]:
    async with Store.open(settings) as store:
        return {uid: await store.profile(uid) for uid in ids}
