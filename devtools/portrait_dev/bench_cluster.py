"""Bench scenario ``cluster``: 2 workers on a local 3-master Valkey Cluster against 2 workers on
the standalone Valkey, in the same run, on the same backlog.

For each: events/s (as scenario (4)) and Redis commands per event from ``INFO commandstats``
(reset before the run; summed over every master; commands run by the Lua scripts are counted
with the ``EVALSHA`` that ran them; the bench's own reads of the counters while it waits are
left out), in total and by command. The cluster has 3 masters and 3
replicas (no ``WAIT``): what replication costs the masters is in the figures. Run by
``portrait bench --only cluster`` (``--reps``, default 3; not in the default scenarios: it starts
its own cluster each rep).
"""

from __future__ import annotations

import statistics
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import redis

from portrait_dev.infra import valkey_binary
from portrait_dev.valkey_cluster import running_cluster


def _reset(ports: list[int]) -> None:
    for port in ports:
        with redis.Redis(port=port) as c:
            c.config_resetstat()


def _calls(ports: list[int]) -> dict[str, int]:
    out: dict[str, int] = {}
    for port in ports:
        with redis.Redis(port=port) as c:
            for name, stat in c.info("commandstats").items():
                command = name.removeprefix("cmdstat_")
                out[command] = out.get(command, 0) + int(stat["calls"])
    return out


def _cpu(ports: list[int]) -> float:
    """Server CPU seconds (user + system, main thread and all) used so far, summed over ``ports``."""
    total = 0.0
    for port in ports:
        with redis.Redis(port=port) as c:
            info = c.info("cpu")
            total += float(info["used_cpu_user"]) + float(info["used_cpu_sys"])
    return total


Pipeline = Callable[..., Awaitable[dict[str, Any]]]


async def _measured(bench: Any, run_pipeline: Pipeline, rep: int, redis_url: str, ports: list[int]) -> dict[str, Any]:
    _reset(ports)
    cpu = _cpu(ports)
    result: dict[str, Any] = await run_pipeline(bench, rep, 2, redis_url=redis_url)
    calls = _calls(ports)
    calls.pop("info", None)  # this module's own reads
    calls.pop("config|resetstat", None)
    calls["hgetall"] = calls.get("hgetall", 0) - result["wait_commands"]  # the bench's own wait
    events = len(bench.payloads)
    # Redis CPU per event (the whole run, idle polling included): what one master can take
    result["redis_cpu_us_per_event"] = 1e6 * (_cpu(ports) - cpu) / events
    top = sorted(calls.items(), key=lambda kv: -kv[1])[:12]
    result["commands_per_event"] = sum(calls.values()) / events
    result["commands_per_event_by_command"] = {k: v / events for k, v in top}
    return result


async def run_cluster(bench: Any, rep: int, run_pipeline: Pipeline) -> dict[str, Any]:
    """{"standalone": ..., "cluster": ...}: rates and commands per event of 2 workers on each
    (``run_pipeline``: the bench's scenario (4)). Odd reps run the standalone first, even reps the
    cluster first (a box that warms up or gets busier does not favour one)."""
    standalone_port = int(bench.redis_url.rsplit(":", 1)[1].split("/")[0])
    out: dict[str, Any] = {"rep": rep, "masters": 3, "workers": 2}
    with (
        tempfile.TemporaryDirectory(prefix="portrait-bench-cluster-") as tmp,
        running_cluster(Path(tmp), valkey_binary()) as cluster,
    ):
        masters = [n.port for n in cluster.current_masters()]
        targets = {"standalone": (bench.redis_url, [standalone_port]), "cluster": (cluster.url, masters)}
        order = ["standalone", "cluster"] if rep % 2 else ["cluster", "standalone"]
        for kind in order:
            url, ports = targets[kind]
            out[kind] = await _measured(bench, run_pipeline, rep, url, ports)
    return out


REPLAY = {"users": 800, "events": 20_000, "days": 85}  # the event-time replay measured on both


async def replay_commands(bench: Any, seed: int) -> dict[str, Any]:
    """Commands per event of an event-time replay through the worker's code in-process (the
    offline driver: batches, the time-driven path after each, an RFM refresh per event-time
    day), on the standalone Valkey and on a fresh 3-master cluster: the case where the per-shard
    fixed costs (claims, RFM refreshes) weigh most, since a day holds only ~235 events."""
    from portrait_dev import synth
    from stream.offline.driver import drive
    from stream.settings import Settings
    from stream.tagging.definitions import load_catalogue

    events = synth.generate(users=REPLAY["users"], events=REPLAY["events"], seed=seed, days=REPLAY["days"])
    standalone_port = int(bench.redis_url.rsplit(":", 1)[1].split("/")[0])
    out: dict[str, Any] = {**REPLAY, "seed": seed}

    async def measure(url: str, ports: list[int]) -> dict[str, Any]:
        _reset(ports)
        cpu = _cpu(ports)
        run = await drive(Settings(redis_url=url), events, catalogue=load_catalogue())
        calls = _calls(ports)
        calls.pop("info", None)  # this module's own reads
        calls.pop("config|resetstat", None)
        top = sorted(calls.items(), key=lambda kv: -kv[1])[:12]
        return {
            "commands_per_event": sum(calls.values()) / len(events),
            "redis_cpu_us_per_event": 1e6 * (_cpu(ports) - cpu) / len(events),
            "commands_per_event_by_command": {k: v / len(events) for k, v in top},
            "batches": run.batches,
            "rfm_refreshes": run.rfm_refreshes,
            "reevaluations": run.reevaluations,
        }

    out["standalone"] = await measure(bench.redis_url, [standalone_port])
    with (
        tempfile.TemporaryDirectory(prefix="portrait-bench-cluster-") as tmp,
        running_cluster(Path(tmp), valkey_binary()) as cluster,
    ):
        out["cluster"] = await measure(cluster.url, [n.port for n in cluster.current_masters()])
    return out


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over the reps: events/s and commands per event of each, and cluster ÷ standalone
    (the median of the per-rep ratios: both ran in the same rep, under the same load)."""

    def median(kind: str, field: str) -> float:
        return float(statistics.median(r[kind][field] for r in runs))

    return {
        "reps": len(runs),
        **{
            kind: {field: median(kind, field) for field in ("rate", "commands_per_event", "redis_cpu_us_per_event")}
            for kind in ("standalone", "cluster")
        },
        "rate_ratio": statistics.median(r["cluster"]["rate"] / r["standalone"]["rate"] for r in runs),
        "commands_ratio": statistics.median(
            r["cluster"]["commands_per_event"] / r["standalone"]["commands_per_event"] for r in runs
        ),
    }
