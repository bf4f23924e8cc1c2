"""The worker's code on a Redis Cluster (fast tier; the worker-level failover and resharding runs
are in tests/chaos/test_cluster_chaos.py).

``test_a_master_killed_mid_replay_loses_nothing``: the offline driver (the worker's processor in
event time, in-process) replays an export on a local Valkey Cluster with
``PORTRAIT_REDIS_WAIT_REPLICAS=1``; once it is under way the master of the per-store keys is
killed with SIGKILL, its replica is promoted, and the killed node comes back as a replica. The
processor's writes retry through the failover, and the final profiles equal the independent
offline computation, every event applied once. The guarantee that makes this hold: a write
returns only after ``WAIT 1`` on every master it wrote, so the promoted replica holds every
write the processor went on from.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from portrait_dev import synth
from portrait_dev.harness import settings_env
from portrait_dev.infra import valkey_binary
from portrait_dev.valkey_cluster import Node, ValkeyCluster, running_cluster
from redis.crc import key_slot

from stream.cli.main import main
from stream.offline.driver import OfflineRun, drive
from stream.settings import Settings
from stream.storage.client import connect, run_scripts
from stream.storage.keys import Keys, erased_token
from stream.storage.store import Store
from stream.tagging.definitions import load_catalogue
from tests.integration.helpers import ProfileDifferences, profile_differences, public_profiles

pytestmark = pytest.mark.integration
RFM_TAGS = {"r_score", "f_score", "m_score", "rfm_segment"}


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[ValkeyCluster]:
    with running_cluster(tmp_path / "cluster", valkey_binary()) as running:
        yield running


def _keys_stored(cluster: ValkeyCluster) -> int:
    total = 0
    for node in cluster.current_masters():
        with node.client() as c:
            total += int(c.dbsize())
    return total


def _undisturbed(make_settings, events: list[dict]) -> ProfileDifferences:  # type: ignore[no-untyped-def]
    seen: dict[str, dict[str, str]] = {}
    clock: list[float] = []

    async def inspect(store: Store) -> None:
        found, now = await public_profiles(store)
        seen.update(found)
        clock.append(now or 0.0)

    asyncio.run(drive(make_settings(clock="event"), events, catalogue=load_catalogue(), inspect=inspect))
    return profile_differences(events, seen, clock[0])


def test_a_master_killed_mid_replay_loses_nothing(make_settings, cluster: ValkeyCluster) -> None:
    settings = make_settings(redis_url=cluster.url, redis_wait_replicas=1, redis_shards=16, clock="event")
    events = synth.generate(users=100, events=2000, seed=61, days=60)
    seen: dict[str, dict[str, str]] = {}
    clock: list[float] = []
    runs: list[OfflineRun] = []

    async def inspect(store: Store) -> None:
        found, now = await public_profiles(store)
        seen.update(found)
        clock.append(now or 0.0)

    # the replay runs in a thread; this one kills and restarts the master (a process started by a
    # thread that ends would get that thread's death signal)
    replay = threading.Thread(
        target=lambda: runs.append(asyncio.run(drive(settings, events, catalogue=load_catalogue(), inspect=inspect))),
        daemon=True,
    )
    replay.start()
    deadline = time.monotonic() + 120
    while _keys_stored(cluster) < 250 and time.monotonic() < deadline and replay.is_alive():
        time.sleep(0.05)  # users are being written
    killed = replay.is_alive()
    slot = key_slot(Keys("any").clock.encode())  # {g}: the clock, progress and counters
    victim = cluster.master_of_slot(slot)
    cluster.kill_master(slot)
    cluster.restart(victim)
    replay.join(300)
    (run,) = runs
    assert killed, "the replay ended before the master was killed"
    assert run.stats["events_applied"] == len(events)
    found = profile_differences(events, seen, clock[0])
    assert not found.missing and not found.extra
    # RFM scores: the driver ends without a last threshold refresh, so they are compared with the
    # same replay on the standalone Valkey (no failover) instead; every other tag with the oracle
    assert [(u, d) for u, d in found.mismatches if set(d) - RFM_TAGS] == []
    assert {u for u, _ in found.mismatches} == {u for u, _ in _undisturbed(make_settings, events).mismatches}


def test_scripts_follow_a_slot_while_it_moves(cluster: ValkeyCluster) -> None:
    """A script sent to a slot being moved: ASK (its key already moved: run on the importing node
    after ASKING, on the connection that WAITs), TRYAGAIN (its keys split between the nodes:
    sent again until the move ends), then MOVED; each returns what it would have without the move."""
    keys = Keys("mv")
    clock_slot, due_slot = key_slot(keys.clock.encode()), key_slot(keys.due(5).encode())
    masters = cluster.current_masters()
    # a key in each slot, on its master, before the moves
    with cluster.master_of_slot(clock_slot).client() as c:
        c.set(keys.clock, "5.000000")
    with cluster.master_of_slot(due_slot).client() as c:
        c.zadd(keys.due(5), {"u1": 100.0, "u2": 200.0, "u3": 900.0})

    def half_moved(slot: int, key: str) -> tuple[Node, Node]:
        source = cluster.master_of_slot(slot)
        target = next(n for n in masters if n is not source)
        assert cluster.begin_move(slot, target) is source
        with source.client() as src:
            src.execute_command("MIGRATE", "127.0.0.1", target.port, "", 0, 5000, "KEYS", key)
        return source, target

    async def scripts() -> tuple[float, list[bytes]]:
        client = connect(*Settings(redis_url=cluster.url).redis_target())
        try:
            _, clock_target = half_moved(clock_slot, keys.clock)
            # ASK: the clock is on the importing node; WAIT 1 there must count this write
            (clock,) = await run_scripts(client, [("advance_clock", [keys.clock], ["10.5"])], wait=(1, 2000))
            cluster.finish_move(clock_slot, clock_target)
            _, due_target = half_moved(due_slot, keys.due(5))
            # TRYAGAIN: due moved, inflight (absent) not; the move ends while the script is retried
            claim = asyncio.create_task(
                run_scripts(client, [("claim", [keys.due(5), keys.inflight(5)], ["300", 10, "1000", "2000"])])
            )
            await asyncio.sleep(0.3)
            await asyncio.to_thread(cluster.finish_move, due_slot, due_target)
            ((flat, head),) = await claim
            return float(clock), [*flat[::2], head]
        finally:
            await client.aclose()

    clock, claimed = asyncio.run(scripts())
    assert clock == 10.5
    assert claimed == [b"u1", b"u2", b"900"]  # due by 300: u1 and u2; u3 (900) is next
    answered = cluster.errorstats()
    assert answered.get("ASK", 0) >= 2 and answered.get("TRYAGAIN", 0) >= 1 and answered.get("MOVED", 0) >= 1


@pytest.mark.both_stores
def test_audience_sizes_sum_the_sets_of_every_shard(make_settings) -> None:  # type: ignore[no-untyped-def]
    settings = make_settings()
    members = {("t", "a"): ["u1", "u2", "u3", "u4", "u5"], ("t", "b"): ["u6"], ("other", "x"): ["u1", "u6"]}

    async def sizes() -> dict[tuple[str, str], int]:
        async with Store.open(settings) as store:
            keys = store.keys
            for (tag, value), users in members.items():
                for uid in users:
                    await store.client.sadd(keys.audience(keys.shard(uid), tag, value), uid)
            try:
                return await store.audience_sizes()
            finally:
                await store.delete_namespace()

    assert asyncio.run(sizes()) == {("other", "x"): 2, ("t", "a"): 5, ("t", "b"): 1}


@pytest.mark.both_stores
def test_a_v1_store_is_refused_until_dropped(make_settings, monkeypatch, capsys) -> None:  # type: ignore[no-untyped-def]
    """A store of layout v1 under the prefix: every command (the worker's start check too) stops
    with one line saying what to do; ``portrait migrate`` shows it, ``--drop-v1 --yes`` removes
    it, and the prefix then starts as a v2 store."""
    settings = make_settings()
    for key, value in settings_env(settings).items():
        monkeypatch.setenv(key, value)
    old = [
        f"{settings.key_prefix}:v1:meta:epoch",
        f"{settings.key_prefix}:v1:{{u1}}:state",
        f"{settings.key_prefix}:v1:due",
    ]

    async def populate() -> None:
        store = Store.from_settings(settings)
        try:
            for key in old:
                await store.client.set(key, "v1")
            await store.client.sadd(f"{settings.key_prefix}:v1:privacy:erased", erased_token("gone"))
        finally:
            await store.close()

    asyncio.run(populate())
    assert main(["stats"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "layout v1 under prefix" in err and "portrait migrate --drop-v1" in err
    assert main(["migrate"]) == 0 and "v1: 4 keys" in capsys.readouterr().out
    assert main(["migrate", "--drop-v1"]) == 2 and "--yes" in capsys.readouterr().err
    assert main(["migrate", "--drop-v1", "--yes"]) == 0 and "deleted 4 keys" in capsys.readouterr().out
    assert main(["stats", "--json"]) == 0 and json.loads(capsys.readouterr().out) == {}

    async def erased() -> set[str]:
        async with Store.open(settings) as store:
            return await store.erased(["gone", "kept"])

    assert asyncio.run(erased()) == {"gone"}  # the v1 suppression list survives the drop


def test_cluster_urls_are_checked_in_one_line() -> None:
    assert Settings(redis_url="redis+cluster://h:7000").redis_target() == ("redis://h:7000", True)
    assert Settings(redis_url="rediss+cluster://u:p@h:7000/0").redis_target() == ("rediss://u:p@h:7000/0", True)
    assert Settings(redis_url="redis://h:7000", redis_cluster=True).redis_target() == ("redis://h:7000", True)
    assert Settings(redis_url="redis://h:7000").redis_target() == ("redis://h:7000", False)
    with pytest.raises(ValueError, match="only database 0"):
        Settings(redis_url="redis+cluster://127.0.0.1:7000/3")
    with pytest.raises(ValueError, match="unknown scheme"):
        Settings(redis_url="valkey+cluster://127.0.0.1:7000")
