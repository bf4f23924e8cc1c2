"""Connecting to Redis (standalone or Cluster) and running the Lua scripts, pipelined.

One code path for both: the store talks to ``redis.asyncio.Redis`` or
``redis.asyncio.RedisCluster`` through the commands they share, always in non-transactional
pipelines (a cluster pipeline splits them per node, follows MOVED/ASK and retries a failed node).
A script runs as ``EVALSHA`` on the node of its keys' slot; a node that does not know it (a
promoted replica, a restarted server) answers NOSCRIPT, and the script is loaded and run again.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Mapping, Sequence
from importlib import resources
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import NoScriptError, ResponseError

from stream.settings import Settings
from stream.storage.exceptions import ReplicationLag

Client = aioredis.Redis | RedisCluster
Call = tuple[str, Sequence[str], Sequence[Any]]  # (script name, KEYS, ARGV)
SCRIPT_NAMES = (
    "write",
    "finish",
    "fence",
    "erase",
    "claim",
    "set_due_index",
    "mark_due",
    "set_thresholds",
    "lease",
    "advance_clock",
)


def decode_text(value: bytes | str) -> str:
    """A reply as text (the clients are made with ``decode_responses=False``: replies are bytes)."""
    return value.decode() if isinstance(value, bytes) else value


def decode_hash(raw: Mapping[Any, Any]) -> dict[str, str]:
    """A hash reply (HGETALL) as text fields and values."""
    return {decode_text(k): decode_text(v) for k, v in raw.items()}


@functools.cache
def script_source(name: str) -> str:
    """The Lua source of ``stream/storage/scripts/<name>.lua`` (package data), read once."""
    return (resources.files("stream.storage") / "scripts" / f"{name}.lua").read_text()


@functools.cache
def script_sha(name: str) -> str:
    return hashlib.sha1(script_source(name).encode()).hexdigest()


def connect(url: str, cluster: bool, **kwargs: Any) -> Client:
    """A client for ``url``: a cluster client seeded by it when ``cluster``."""
    if cluster:
        return RedisCluster.from_url(url, decode_responses=False, **kwargs)
    return aioredis.Redis.from_url(url, decode_responses=False, **kwargs)


def connect_settings(settings: Settings) -> Client:
    url, cluster = settings.redis_target()
    return connect(url, cluster, **settings.redis_client_kwargs())


async def run_scripts(client: Client, calls: Sequence[Call], wait: tuple[int, int] | None = None) -> list[Any]:
    """Run ``calls`` in one pipeline (in order on one node; a cluster runs its nodes' shares
    side by side); returns their replies in order. A ResponseError other than NOSCRIPT raises.

    ``wait`` = (replicas, timeout ms): the pipeline ends with ``WAIT`` on every node written, on
    the connection that wrote (WAIT covers that connection's writes); fewer acknowledging
    replicas raise ``ReplicationLag``."""
    if not calls:
        return []
    replies = await _pipelined(client, calls, wait)
    missing = [i for i, r in enumerate(replies) if isinstance(r, NoScriptError)]
    if missing:
        for name in dict.fromkeys(calls[i][0] for i in missing):
            await client.script_load(script_source(name))
        again = await _pipelined(client, [calls[i] for i in missing], wait)
        for i, reply in zip(missing, again, strict=True):
            replies[i] = reply
    for reply in replies:
        if isinstance(reply, Exception):
            raise reply
    return replies


async def run_script(client: Client, name: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
    return (await run_scripts(client, [(name, keys, args)]))[0]


async def _pipelined(client: Client, calls: Sequence[Call], wait: tuple[int, int] | None) -> list[Any]:
    pipe = client.pipeline(transaction=False)
    for name, keys, args in calls:
        # execute_command: a cluster pipeline refuses the evalsha() helper, not the command
        pipe.execute_command("EVALSHA", script_sha(name), len(keys), *keys, *args)
    waits = 0
    if wait is not None:
        if isinstance(client, RedisCluster):
            nodes = {n.name: n for n in (client.get_node_from_key(keys[0]) for _, keys, _ in calls) if n is not None}
            for node in nodes.values():
                pipe.execute_command("WAIT", *wait, target_nodes=node)
            waits = len(nodes)
        else:
            pipe.execute_command("WAIT", *wait)
            waits = 1
    try:
        replies: list[Any] = await pipe.execute(raise_on_error=False)
    except NoScriptError:
        replies = [NoScriptError("NOSCRIPT") for _ in range(len(calls) + waits)]
    if wait is not None and waits:
        replies, acks = replies[: len(calls)], replies[len(calls) :]
        if any(isinstance(a, Exception) or int(a) < wait[0] for a in acks):
            raise ReplicationLag(f"a batch's writes reached {acks} replicas (of each master written), not {wait[0]}")
    return [NoScriptError(str(r)) if isinstance(r, ResponseError) and "NOSCRIPT" in str(r) else r for r in replies]
