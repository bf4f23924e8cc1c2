"""Connecting to Redis (standalone or Cluster) and running the Lua scripts, pipelined.

One code path for both: the store talks to ``redis.asyncio.Redis`` or
``redis.asyncio.RedisCluster`` through the commands they share, always in non-transactional
pipelines (a cluster pipeline splits them per node, follows MOVED/ASK and retries a failed node).
A script runs as ``EVALSHA`` on the node of its keys' slot; a node that does not know it (a
promoted replica, a restarted server) answers NOSCRIPT, and the script is loaded and run again.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
from collections.abc import Mapping, Sequence
from importlib import resources
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, PipelineCommand, RedisCluster
from redis.exceptions import (
    AskError,
    ClusterDownError,
    ConnectionError as RedisConnectionError,
    MovedError,
    NoScriptError,
    ReadOnlyError,
    RedisError,
    ResponseError,
    SlotNotCoveredError,
    TimeoutError as RedisTimeoutError,
    TryAgainError,
)

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
    "rank_probe",
    "model_read",
    "lease",
    "advance_clock",
)
CLUSTER_ROUNDS = 40  # rounds of redirections a script call follows (``_on_cluster``)
TRYAGAIN_PAUSE_S = 0.05  # before sending again a script that met a slot half-moved


def decode_text(value: bytes | str) -> str:
    """A reply as text (the clients are made with ``decode_responses=False``: replies are bytes)."""
    return value.decode() if isinstance(value, bytes) else value


def decode_hash(raw: Mapping[Any, Any]) -> dict[str, str]:
    """A hash reply (HGETALL) as text fields and values."""
    return {decode_text(k): decode_text(v) for k, v in raw.items()}


INCLUDE = "--#include "


@functools.cache
def script_source(name: str) -> str:
    """The Lua source of ``stream/storage/scripts/<name>.lua`` (package data), read once; a line
    ``--#include <helper>`` is replaced by ``<helper>.lua`` of the same directory (Redis scripts
    cannot load one another, and a helper is written once)."""
    text = (resources.files("stream.storage") / "scripts" / f"{name}.lua").read_text()
    return "\n".join(
        script_source(line.removeprefix(INCLUDE)).rstrip("\n") if line.startswith(INCLUDE) else line
        for line in text.split("\n")
    )


@functools.cache
def script_sha(name: str) -> str:
    return hashlib.sha1(script_source(name).encode()).hexdigest()


def connect(url: str, cluster: bool, **kwargs: Any) -> Client:
    """A client for ``url``: a cluster client seeded by it when ``cluster``."""
    if cluster:
        # reinitialize_steps=0: a MOVED patches the slot map; redis-py's default closes every
        # connection on every fifth MOVED, under the feet of the worker's other tasks
        return RedisCluster.from_url(url, decode_responses=False, reinitialize_steps=0, **kwargs)
    return aioredis.Redis.from_url(url, decode_responses=False, **kwargs)


def connect_settings(settings: Settings) -> Client:
    url, cluster = settings.redis_target()
    return connect(url, cluster, **settings.redis_client_kwargs())


async def run_scripts(client: Client, calls: Sequence[Call], wait: tuple[int, int] | None = None) -> list[Any]:
    """Run ``calls`` in one pipeline (in order on one node; a cluster runs its nodes' shares
    side by side); returns their replies in order. A ResponseError other than NOSCRIPT raises.

    ``wait`` = (replicas, timeout ms): the pipeline ends with ``WAIT`` on every node written, on
    the connection that wrote (WAIT covers that connection's writes); fewer acknowledging
    replicas raise ``ReplicationLag``. On a cluster, redirections are followed here
    (``_on_cluster``), so that a redirected script's ``WAIT`` is on its own connection too."""
    if not calls:
        return []
    if isinstance(client, RedisCluster):
        replies = await _on_cluster(client, calls, wait)
    else:
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


def _evalsha(name: str, keys: Sequence[str], args: Sequence[Any]) -> tuple[Any, ...]:
    return ("EVALSHA", script_sha(name), len(keys), *keys, *args)


def _check_acks(acks: Sequence[Any], wait: tuple[int, int]) -> None:
    if any(isinstance(a, Exception) or int(a) < wait[0] for a in acks):
        raise ReplicationLag(f"a batch's writes reached {acks} replicas (of each master written), not {wait[0]}")


async def _pipelined(client: aioredis.Redis, calls: Sequence[Call], wait: tuple[int, int] | None) -> list[Any]:
    """Standalone: one pipeline, ``WAIT`` last."""
    pipe = client.pipeline(transaction=False)
    for name, keys, args in calls:
        pipe.execute_command(*_evalsha(name, keys, args))
    if wait is not None:
        pipe.execute_command("WAIT", *wait)
    try:
        replies: list[Any] = await pipe.execute(raise_on_error=False)
    except NoScriptError:
        replies = [NoScriptError("NOSCRIPT") for _ in range(len(calls) + (wait is not None))]
    if wait is not None:
        replies, acks = replies[: len(calls)], replies[len(calls) :]
        _check_acks(acks, wait)
    return [NoScriptError(str(r)) if isinstance(r, ResponseError) and "NOSCRIPT" in str(r) else r for r in replies]


async def _on_cluster(client: RedisCluster, calls: Sequence[Call], wait: tuple[int, int] | None) -> list[Any]:
    """A cluster: each round sends every pending script to its node in one pipeline per node (one
    connection: ``ASKING`` right before a script sent to a slot being imported, ``WAIT`` last),
    then follows the answers: MOVED (the slot map is patched), ASK (next round with ``ASKING``),
    TRYAGAIN (a script whose keys are split between two nodes mid-migration: again after a
    pause) and NOSCRIPT (loaded on that node). Gives up after ``CLUSTER_ROUNDS`` with
    TryAgainError, which the caller's retry (``stream.service.retry``) retries.

    redis-py's cluster pipeline would follow them too, but it resends a redirected command on
    another connection than the pipeline's ``WAIT`` (which then does not cover it), sends
    ``ASKING`` and the command on two pooled connections, and gives up on TRYAGAIN within ~0.4 s.
    A connection error refreshes the slot map and raises (retried by the caller)."""
    await client.initialize()
    replies: dict[int, Any] = {}
    asked: dict[int, ClusterNode] = {}  # call -> the node an ASK sent it to
    pending = list(range(len(calls)))
    for _round in range(CLUSTER_ROUNDS):
        rounds: dict[str, tuple[ClusterNode, list[PipelineCommand], list[int]]] = {}
        for i in pending:
            name, keys, args = calls[i]
            node = asked.pop(i, None)
            target = node or client.get_node_from_key(keys[0])
            if target is None:  # only for a replica: not asked for
                raise SlotNotCoveredError(f"no node serves {keys[0]}")
            _, commands, indexes = rounds.setdefault(target.name, (target, [], []))
            if node is not None:
                commands.append(PipelineCommand(len(commands), "ASKING"))
            commands.append(PipelineCommand(len(commands), *_evalsha(name, keys, args)))
            indexes.append(i)
        for _, commands, _ in rounds.values():
            if wait is not None:
                commands.append(PipelineCommand(len(commands), "WAIT", *wait))
        try:
            await asyncio.gather(*(node.execute_pipeline(commands) for node, commands, _ in rounds.values()))
        except (RedisConnectionError, RedisTimeoutError, OSError):
            await _refresh(client)
            raise
        pending, pause, acks = [], False, []
        for node, commands, indexes in rounds.values():
            evals = [c for c in commands if c.args[0] == "EVALSHA"]
            written = False
            for i, command in zip(indexes, evals, strict=True):
                reply = command.result
                if isinstance(reply, MovedError):
                    await client.nodes_manager.move_slot(reply)
                elif isinstance(reply, AskError):
                    ask_node = client.get_node(host=reply.host, port=reply.port)
                    if ask_node is None:
                        await _refresh(client)
                    else:
                        asked[i] = ask_node
                elif isinstance(reply, TryAgainError):
                    pause = True
                elif isinstance(reply, NoScriptError):
                    await node.execute_command("SCRIPT", "LOAD", script_source(calls[i][0]))
                else:
                    if isinstance(reply, (ClusterDownError, ReadOnlyError, RedisConnectionError, RedisTimeoutError)):
                        await _refresh(client)  # failing over: the retry asks the new master
                    replies[i] = reply
                    written = written or not isinstance(reply, Exception)
                    continue
                pending.append(i)
            if wait is not None and written:
                acks.append(commands[-1].result)
        if wait is not None:
            _check_acks(acks, wait)
        if not pending:
            return [replies[i] for i in range(len(calls))]
        if pause:
            await asyncio.sleep(TRYAGAIN_PAUSE_S)
    raise TryAgainError(f"{len(pending)} scripts still redirected after {CLUSTER_ROUNDS} rounds (a slot is moving)")


async def _refresh(client: RedisCluster) -> None:
    """Read the slot map again (connections in use finish their command first)."""
    with contextlib.suppress(RedisError):
        await client.nodes_manager.initialize()
