"""Bench scenario ``cluster``: 2 workers on a local 3-master Valkey Cluster against 2 workers on
the standalone Valkey, in the same run, on the same backlog.

For each: events/s (as scenario (4)) and Redis commands per event from ``INFO commandstats``
(reset before the run; summed over every master; commands run by the Lua scripts are counted
with the ``EVALSHA`` that ran them), in total and by command. The cluster has 3 masters and 3
replicas (no ``WAIT``): what replication costs the masters is in the figures.
"""

from __future__ import annotations

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


Pipeline = Callable[..., Awaitable[dict[str, Any]]]


async def _measured(bench: Any, run_pipeline: Pipeline, rep: int, redis_url: str, ports: list[int]) -> dict[str, Any]:
    _reset(ports)
    result: dict[str, Any] = await run_pipeline(bench, rep, 2, redis_url=redis_url)
    calls = _calls(ports)
    events = len(bench.payloads)
    top = sorted(calls.items(), key=lambda kv: -kv[1])[:12]
    result["commands_per_event"] = sum(calls.values()) / events
    result["commands_per_event_by_command"] = {k: v / events for k, v in top}
    return result


async def run_cluster(bench: Any, rep: int, run_pipeline: Pipeline) -> dict[str, Any]:
    """{"standalone": ..., "cluster": ...}: rates and commands per event of 2 workers on each
    (``run_pipeline``: the bench's scenario (4))."""
    standalone_port = int(bench.redis_url.rsplit(":", 1)[1].split("/")[0])
    standalone = await _measured(bench, run_pipeline, rep, bench.redis_url, [standalone_port])
    with (
        tempfile.TemporaryDirectory(prefix="portrait-bench-cluster-") as tmp,
        running_cluster(Path(tmp), valkey_binary()) as cluster,
    ):
        masters = [n.port for n in cluster.current_masters()]
        on_cluster = await _measured(bench, run_pipeline, rep, cluster.url, masters)
    return {"standalone": standalone, "cluster": on_cluster, "masters": 3, "workers": 2}
