"""Real Apache Kafka (KRaft, one node acting as broker and controller) without a distribution.

The broker's jars are resolved from Maven Central once with ``mvn dependency:copy-dependencies``
into ``~/.cache/portrait/kafka-<version>/lib`` (``$XDG_CACHE_HOME`` and ``PORTRAIT_CACHE_DIR`` are
honoured), then every start formats a fresh log directory with ``kafka.tools.StorageTool`` and
runs ``kafka.Kafka server.properties`` on the machine's JDK with ``lib/*`` as classpath, the way
the distribution's own scripts do. Anything missing or failing raises :class:`KafkaUnavailable`
with the reason, so callers can fall back to Tansu.

``PORTRAIT_KAFKA_VERSION`` picks another version (3.9.x uses reload4j logging, 4.x log4j2).
"""

from __future__ import annotations

import base64
import fcntl
import logging
import os
import re
import shutil
import subprocess
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from portrait_dev.processes import ManagedProcess, free_ports, spawn, wait_for_broker

log = logging.getLogger(__name__)

DEFAULT_VERSION = "4.4.0"
RELOAD4J_VERSION = "1.2.25"  # logging backend for Kafka 3.x (4.x ships log4j2 itself)
HEAP_OPTS = ("-Xmx512m", "-Xms256m")
JVM_OPTS = (
    "-server",
    "-XX:+UseG1GC",
    "-XX:MaxGCPauseMillis=20",
    "-XX:InitiatingHeapOccupancyPercent=35",
    "-XX:+ExplicitGCInvokesConcurrent",
    "-Djava.awt.headless=true",
)
# the one-shot storage format: C1 only and serial GC start ~30% faster for a short-lived JVM
FORMAT_JVM_OPTS = ("-Xmx256m", "-XX:TieredStopAtLevel=1", "-XX:+UseSerialGC")
MVN_TIMEOUT_S = 900.0


class KafkaUnavailable(RuntimeError):
    """The real Kafka broker cannot run here (no JDK/Maven, download or start failed)."""


@dataclass(frozen=True)
class KafkaRuntime:
    """Resolved jars for one Kafka version plus the java executable to run them."""

    version: str
    home: Path
    java: str
    java_major: int
    setup_seconds: float  # time spent resolving jars now (0 when they were cached)

    @property
    def lib(self) -> Path:
        return self.home / "lib"

    @property
    def classpath(self) -> str:
        return str(self.lib / "*")

    @property
    def major(self) -> int:
        return int(self.version.split(".")[0])


@dataclass
class KafkaServer:
    process: ManagedProcess
    bootstrap: str  # 127.0.0.1:PORT (PLAINTEXT listener)
    controller_port: int
    version: str
    workdir: Path
    start_seconds: float  # format + JVM start until metadata answers
    setup_seconds: float  # Maven resolution before the start (0 when cached)

    @property
    def broker_url(self) -> str:
        return f"kafka://{self.bootstrap}"

    @property
    def log_file(self) -> Path:
        """The broker's own (log4j) log; JVM stdout/stderr go to ``process.log_path``."""
        return self.workdir / "kafka.log"

    def stop(self) -> bool:
        return self.process.stop()


def cache_root() -> Path:
    explicit = os.environ.get("PORTRAIT_CACHE_DIR")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "portrait"


def find_java() -> tuple[str, int]:
    """The java executable ($JAVA_HOME first, then PATH) and its major version."""
    candidates = []
    if os.environ.get("JAVA_HOME"):
        candidates.append(str(Path(os.environ["JAVA_HOME"]) / "bin" / "java"))
    found = shutil.which("java")
    if found:
        candidates.append(found)
    for java in candidates:
        if not os.access(java, os.X_OK):
            continue
        try:
            out = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=30, check=False)
        except (OSError, subprocess.TimeoutExpired):
            continue
        match = re.search(r'version "(\d+)(?:\.(\d+))?', out.stderr + out.stdout)
        if match:
            major = int(match.group(1))
            if major == 1 and match.group(2):  # 1.8 style
                major = int(match.group(2))
            return java, major
    raise KafkaUnavailable("no java executable found (install a JDK >= 17 or set JAVA_HOME)")


_POM = """<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>local.portrait</groupId>
  <artifactId>kafka-runtime</artifactId>
  <version>{version}</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency>
      <groupId>org.apache.kafka</groupId>
      <artifactId>kafka_2.13</artifactId>
      <version>{version}</version>
    </dependency>
  </dependencies>
</project>
"""


def _mvn(mvn: str, args: list[str], cwd: Path) -> None:
    cmd = [mvn, "-q", "-B", "-Dstyle.color=never", *args]
    try:
        out = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=MVN_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired as exc:
        raise KafkaUnavailable(f"`mvn {' '.join(args)}` timed out after {MVN_TIMEOUT_S:.0f}s") from exc
    except OSError as exc:
        raise KafkaUnavailable(f"cannot run mvn: {exc}") from exc
    if out.returncode != 0:
        lines = re.sub(r"\x1b\[[0-9;]*m", "", out.stdout + out.stderr).strip().splitlines()
        errors = [ln.removeprefix("[ERROR]").strip() for ln in lines if ln.startswith("[ERROR]")]
        reason = next((e for e in errors if e), "no error message")[:400]
        tail = "\n".join(lines[-15:])
        raise KafkaUnavailable(f"`mvn {args[0]}` failed (exit {out.returncode}): {reason}\n{tail}")


def _jar_version(lib: Path, artifact: str) -> str | None:
    for jar in lib.glob(f"{artifact}-*.jar"):
        match = re.fullmatch(rf"{re.escape(artifact)}-(\d[\w.\-]*)\.jar", jar.name)
        if match:
            return match.group(1)
    return None


def _add_logging_backend(mvn: str, home: Path, lib: Path, major: int) -> None:
    """kafka_2.13's pom has no SLF4J binding at runtime scope; add the one its distribution ships."""
    artifacts: list[str] = []
    if major >= 4:
        log4j = _jar_version(lib, "log4j-core") or _jar_version(lib, "log4j-api")
        if log4j is None:
            raise KafkaUnavailable(f"no log4j-core among the resolved jars in {lib}")
        if _jar_version(lib, "log4j-slf4j-impl") is None and _jar_version(lib, "log4j-slf4j2-impl") is None:
            binding = (
                "log4j-slf4j2-impl" if (_jar_version(lib, "slf4j-api") or "1").startswith("2") else "log4j-slf4j-impl"
            )
            artifacts.append(f"org.apache.logging.log4j:{binding}:{log4j}")
        if _jar_version(lib, "log4j-core") is None:
            artifacts.append(f"org.apache.logging.log4j:log4j-core:{log4j}")
    else:
        slf4j = _jar_version(lib, "slf4j-api") or "1.7.36"
        if _jar_version(lib, "slf4j-reload4j") is None:
            artifacts.append(f"org.slf4j:slf4j-reload4j:{slf4j}")
        if _jar_version(lib, "reload4j") is None:
            artifacts.append(f"ch.qos.reload4j:reload4j:{RELOAD4J_VERSION}")
    for artifact in artifacts:
        _mvn(mvn, ["dependency:copy", f"-Dartifact={artifact}", f"-DoutputDirectory={lib}"], home)


def ensure_runtime(version: str | None = None, cache_dir: Path | None = None) -> KafkaRuntime:
    """Resolve (once, then cached) the jars of Kafka ``version`` and check the JDK."""
    version = version or os.environ.get("PORTRAIT_KAFKA_VERSION") or DEFAULT_VERSION
    if not re.fullmatch(r"\d+\.\d+\.\d+", version):
        raise KafkaUnavailable(f"bad Kafka version {version!r}")
    major = int(version.split(".")[0])
    java, java_major = find_java()
    needed = 17 if major >= 4 else 11
    if java_major < needed:
        raise KafkaUnavailable(f"Kafka {version} needs Java >= {needed}; {java} is Java {java_major}")
    home = (cache_dir or cache_root()) / f"kafka-{version}"
    home.mkdir(parents=True, exist_ok=True)
    marker = home / "lib" / ".complete"
    t0 = time.monotonic()
    with (home / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one resolver at a time (parallel test sessions)
        if not marker.exists():
            mvn = shutil.which("mvn")
            if mvn is None:
                raise KafkaUnavailable(f"Maven (mvn) not found and no cached Kafka {version} jars in {home}")
            log.info("resolving Apache Kafka %s jars with Maven into %s (first time only)", version, home)
            staging = home / "lib.partial"
            shutil.rmtree(staging, ignore_errors=True)
            (home / "pom.xml").write_text(_POM.format(version=version))
            _mvn(
                mvn,
                ["dependency:copy-dependencies", f"-DoutputDirectory={staging}", "-DincludeScope=runtime"],
                home,
            )
            _add_logging_backend(mvn, home, staging, major)
            if not any(staging.glob(f"kafka_2.13-{version}.jar")):
                raise KafkaUnavailable(f"Maven did not produce kafka_2.13-{version}.jar in {staging}")
            shutil.rmtree(home / "lib", ignore_errors=True)
            staging.rename(home / "lib")
            marker.write_text(f"{version}\n")
            setup = time.monotonic() - t0
            log.info("Kafka %s jars resolved in %.1fs", version, setup)
        else:
            setup = 0.0
    return KafkaRuntime(version, home, java, java_major, setup)


def _tail(path: Path, lines: int) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _cluster_id() -> str:
    """A random cluster id as Kafka makes them (``Uuid.randomUuid``): URL-safe base64 of 16 bytes,
    never starting with "-" (the storage tool would read it as an option and refuse to format:
    one session start in 64 failed so)."""
    while (cid := base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()).startswith("-"):
        pass
    return cid


def server_properties(
    runtime: KafkaRuntime, data_dir: Path, port: int, controller_port: int, partitions: int = 4
) -> dict[str, str]:
    props = {
        "process.roles": "broker,controller",
        "node.id": "1",
        "controller.quorum.voters": f"1@127.0.0.1:{controller_port}",
        "listeners": f"PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}",
        "advertised.listeners": f"PLAINTEXT://127.0.0.1:{port}",
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
        "log.dirs": str(data_dir),
        "num.partitions": str(partitions),
        "default.replication.factor": "1",
        "min.insync.replicas": "1",
        "auto.create.topics.enable": "true",
        "offsets.topic.replication.factor": "1",
        "offsets.topic.num.partitions": "8",
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        "transaction.state.log.num.partitions": "8",
        "group.initial.rebalance.delay.ms": "0",
        "num.network.threads": "2",
        "num.io.threads": "4",
        "num.recovery.threads.per.data.dir": "1",
        "log.cleaner.dedupe.buffer.size": str(16 * 1024 * 1024),
    }
    if runtime.major >= 4:
        props["share.coordinator.state.topic.replication.factor"] = "1"
        props["share.coordinator.state.topic.min.isr"] = "1"
    return props


def _logging_config(runtime: KafkaRuntime, workdir: Path, log_file: Path) -> list[str]:
    """Write a file-only logging config; return the JVM -D option that selects it."""
    if runtime.major >= 4:
        path = workdir / "log4j2.properties"
        path.write_text(
            "status = warn\n"
            "appender.file.type = File\n"
            "appender.file.name = FILE\n"
            f"appender.file.fileName = {log_file}\n"
            "appender.file.layout.type = PatternLayout\n"
            "appender.file.layout.pattern = [%d] %p %m (%c)%n\n"
            "rootLogger.level = INFO\n"
            "rootLogger.appenderRef.file.ref = FILE\n"
            "logger.statechange.name = state.change.logger\n"
            "logger.statechange.level = WARN\n"
        )
        return [f"-Dlog4j2.configurationFile={path}"]
    path = workdir / "log4j.properties"
    path.write_text(
        "log4j.rootLogger=INFO, file\n"
        "log4j.appender.file=org.apache.log4j.FileAppender\n"
        f"log4j.appender.file.File={log_file}\n"
        "log4j.appender.file.layout=org.apache.log4j.PatternLayout\n"
        "log4j.appender.file.layout.ConversionPattern=[%d] %p %m (%c)%n\n"
        "log4j.logger.state.change.logger=WARN\n"
    )
    return [f"-Dlog4j.configuration=file:{path}"]


def start_kafka(
    workdir: Path,
    *,
    version: str | None = None,
    partitions: int = 4,
    extra_properties: Mapping[str, str] | None = None,
    die_with_parent: bool = True,
    timeout: float = 120.0,
) -> KafkaServer:
    """Format a fresh KRaft log dir under ``workdir`` and start a single-node Kafka on free ports.

    Logs: ``workdir/kafka.log`` (log4j) and ``workdir/kafka.out`` (JVM stdout/stderr)."""
    try:
        runtime = ensure_runtime(version)
        workdir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # unwritable cache or work directory
        raise KafkaUnavailable(f"cannot prepare Apache Kafka: {exc}") from exc
    log_file = workdir / "kafka.log"
    out_file = workdir / "kafka.out"
    logging_opts = _logging_config(runtime, workdir, log_file)
    error: Exception | None = None
    for _ in range(2):  # a second try on new ports if the first lost a port race
        t0 = time.monotonic()
        port, controller_port = free_ports(2)
        data_dir = workdir / "data"
        shutil.rmtree(data_dir, ignore_errors=True)
        props = server_properties(runtime, data_dir, port, controller_port, partitions)
        props.update(extra_properties or {})
        config = workdir / "server.properties"
        config.write_text("".join(f"{k}={v}\n" for k, v in props.items()))
        base = [runtime.java, *logging_opts, "-cp", runtime.classpath]
        fmt = [*base, *FORMAT_JVM_OPTS, "kafka.tools.StorageTool", "format", "-t", _cluster_id(), "-c", str(config)]
        try:
            res = subprocess.run(fmt, capture_output=True, text=True, timeout=120, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise KafkaUnavailable(f"kafka storage format could not run: {exc}") from exc
        if res.returncode != 0:
            tail = "\n".join((res.stdout + res.stderr).strip().splitlines()[-15:])
            raise KafkaUnavailable(f"kafka storage format failed ({res.returncode}):\n{tail}")
        argv = [
            runtime.java,
            *HEAP_OPTS,
            *JVM_OPTS,
            *logging_opts,
            "-cp",
            runtime.classpath,
            "kafka.Kafka",
            str(config),
        ]
        try:
            proc = spawn(
                "kafka", argv, out_file, die_with_parent=die_with_parent, stop_timeout=30.0, expect="kafka.Kafka"
            )
        except OSError as exc:
            raise KafkaUnavailable(f"cannot start the Kafka JVM: {exc}") from exc
        try:
            wait_for_broker(f"127.0.0.1:{port}", proc, timeout=timeout)
        except BaseException as exc:
            proc.stop()
            if not isinstance(exc, Exception):  # KeyboardInterrupt & co: no orphan JVM, then re-raise
                raise
            tail = "\n".join([proc.log_tail(10), _tail(log_file, 20)]).strip()
            error = KafkaUnavailable(f"Apache Kafka {runtime.version} did not become ready: {exc}\n{tail}")
            if "Address already in use" in tail or "BindException" in tail:
                continue
            raise error from exc
        start_s = time.monotonic() - t0
        log.info("Apache Kafka %s ready on 127.0.0.1:%d in %.1fs (pid %d)", runtime.version, port, start_s, proc.pid)
        return KafkaServer(
            process=proc,
            bootstrap=f"127.0.0.1:{port}",
            controller_port=controller_port,
            version=runtime.version,
            workdir=workdir,
            start_seconds=start_s,
            setup_seconds=runtime.setup_seconds,
        )
    assert error is not None
    raise error
