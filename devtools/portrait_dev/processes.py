"""Server processes for the development tools: free ports, spawning with logs, stopping whole
process groups, and readiness probes for a broker and a Redis. Shared by ``infra`` (Tansu,
Valkey) and ``kafka_jvm`` (Apache Kafka), which both build on it."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from stream.kafka.admin import kafka_metadata

log = logging.getLogger(__name__)


class InfraError(RuntimeError):
    """An embedded service could not be started or did not become ready."""


# -- ports and processes -----------------------------------------------------------------------
def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def free_ports(count: int) -> list[int]:
    """``count`` distinct free ports (all sockets are held open until every port is chosen)."""
    socks: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            socks.append(sock)
            sock.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for sock in socks:
            sock.close()


def _tcp_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _split_hostport(address: str) -> tuple[str, int]:
    host, _, port = address.strip().rpartition(":")
    return host or "127.0.0.1", int(port)


def _proc_state(pid: int) -> str | None:
    """The one-letter state from /proc (``Z`` for a zombie), None when unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rpartition(")")[2].split()[0]


def _proc_cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _reap(pid: int) -> None:
    """Collect the exit status if ``pid`` is our (finished) child; harmless otherwise."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def pid_alive(pid: int, expect: str | None = None) -> bool:
    """Whether ``pid`` runs (zombies count as dead). With ``expect``, its command line must contain
    that string, which protects against acting on a recycled pid."""
    if pid <= 0:
        return False
    _reap(pid)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    if _proc_state(pid) in ("Z", "X"):
        return False
    return not (expect and Path("/proc").is_dir() and expect not in _proc_cmdline(pid))


# Popen objects of detached children started by this process: kept so they are never garbage
# collected while running (no ResourceWarning) and so ``down`` in the same process can reap them.
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}


def _signal_group(pid: int, sig: signal.Signals) -> None:
    try:
        pgid = os.getpgid(pid)
    except ProcessLookupError:
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        if pgid == pid:
            os.killpg(pgid, sig)  # started with start_new_session: take any helpers along
        else:
            os.kill(pid, sig)


def stop_pid(pid: int, *, expect: str | None = None, timeout: float = 10.0) -> bool:
    """SIGTERM ``pid`` (and its process group when it leads one), SIGKILL after ``timeout``.

    Returns True when a live process was stopped."""
    if not pid_alive(pid, expect):
        _CHILDREN.pop(pid, None)
        return False
    popen = _CHILDREN.get(pid)
    _signal_group(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if popen is not None and popen.poll() is not None:
            break
        if popen is None and not pid_alive(pid):
            break
        time.sleep(0.05)
    else:
        log.warning("pid %d did not exit within %.0fs of SIGTERM; killing it", pid, timeout)
        _kill(pid, popen)
    _CHILDREN.pop(pid, None)
    return True


def _kill(pid: int, popen: subprocess.Popen[bytes] | None) -> None:
    """SIGKILL ``pid``'s process group and wait (up to 5 s) until it is gone."""
    _signal_group(pid, signal.SIGKILL)
    if popen is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            popen.wait(timeout=5)
    else:
        end = time.monotonic() + 5
        while pid_alive(pid) and time.monotonic() < end:
            time.sleep(0.05)


def _die_with_parent_hook() -> Callable[[], None]:
    """A ``preexec_fn`` asking Linux to SIGTERM the child when its parent thread dies.

    The signal fires when the *thread* that forked exits, so start owned children from a thread
    that lives as long as they should (the main thread, in practice)."""
    parent = os.getpid()

    def hook() -> None:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGTERM))  # 1 == PR_SET_PDEATHSIG
        if os.getppid() != parent:  # the parent died before prctl took effect
            os.kill(os.getpid(), signal.SIGTERM)

    return hook


@dataclass
class ManagedProcess:
    """A background server process: its pid, where its output goes, and how to stop it."""

    name: str
    pid: int
    log_path: Path
    argv: tuple[str, ...] = ()
    stop_timeout: float = 10.0
    expect: str | None = None  # substring of the command line, checked before signalling

    def alive(self) -> bool:
        popen = _CHILDREN.get(self.pid)
        if popen is not None:
            return popen.poll() is None
        return pid_alive(self.pid, self.expect)

    def stop(self) -> bool:
        """Terminate (process group), kill after ``stop_timeout``. True if it was running."""
        stopped = stop_pid(self.pid, expect=self.expect, timeout=self.stop_timeout)
        if stopped:
            log.info("stopped %s (pid %d)", self.name, self.pid)
        return stopped

    def kill(self) -> bool:
        """SIGKILL the process group at once (its data is about to be deleted). True if it was running."""
        if not self.alive():
            return False
        _kill(self.pid, _CHILDREN.pop(self.pid, None))
        return True

    def respawn(self) -> ManagedProcess:
        """Start the same command line again (same ports and data directory), e.g. after a kill."""
        return spawn(self.name, self.argv, self.log_path, stop_timeout=self.stop_timeout, expect=self.expect)

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


def spawn(
    name: str,
    argv: Sequence[str],
    log_path: Path,
    *,
    die_with_parent: bool = True,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    stop_timeout: float = 10.0,
    expect: str | None = None,
) -> ManagedProcess:
    """Start ``argv`` in its own session with stdout+stderr appended to ``log_path``."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    preexec = _die_with_parent_hook() if die_with_parent and sys.platform.startswith("linux") else None
    with log_path.open("ab") as out:
        popen = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            preexec_fn=preexec,
        )
    _CHILDREN[popen.pid] = popen
    return ManagedProcess(name, popen.pid, log_path, tuple(argv), stop_timeout, expect)


# -- readiness probes --------------------------------------------------------------------------
def broker_answers(bootstrap: str, timeout: float = 3.0) -> bool:
    first = bootstrap.split(",")[0]
    if not _tcp_open(*_split_hostport(first)):
        return False
    try:
        cluster = kafka_metadata(bootstrap, timeout)
    except Exception:
        return False
    brokers = cluster.get("brokers") or []
    return any(not b.get("is_fenced", False) for b in brokers)


def wait_for_broker(bootstrap: str, proc: ManagedProcess | None = None, timeout: float = 60.0) -> None:
    """Block until a TCP connect and a Kafka metadata request succeed."""
    host, port = _split_hostport(bootstrap.split(",")[0])
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if proc is not None and not proc.alive():
            raise InfraError(f"{proc.name} exited during start-up; log {proc.log_path}:\n{proc.log_tail()}")
        if _tcp_open(host, port):
            try:
                cluster = kafka_metadata(bootstrap, timeout=min(5.0, max(0.5, deadline - time.monotonic())))
                brokers = cluster.get("brokers") or []
                if any(not b.get("is_fenced", False) for b in brokers):
                    return
                last = f"no unfenced broker in metadata: {brokers}"
            except Exception as exc:
                last = f"{type(exc).__name__}: {exc}"
        time.sleep(0.05)
    raise InfraError(f"broker at {bootstrap} not ready after {timeout:.0f}s ({last})")


def redis_answers(url: str, timeout: float = 1.0) -> bool:
    import redis

    client = redis.Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout)
    try:
        return bool(client.ping())
    except Exception:
        return False
    finally:
        client.close()


def wait_for_redis(url: str, proc: ManagedProcess | None = None, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and not proc.alive():
            raise InfraError(f"{proc.name} exited during start-up; log {proc.log_path}:\n{proc.log_tail()}")
        if redis_answers(url, timeout=0.5):
            return
        time.sleep(0.05)
    raise InfraError(f"Valkey at {url} did not answer PING within {timeout:.0f}s")
