"""Service settings: read once from the environment (prefix ``PORTRAIT_``) and passed down.

Every value is checked when the settings are built: URLs and ports are typed, lists are read from
comma-separated values, and a bad value is reported as one line naming the variable, its problem
and the expected form (``load_settings``). Unknown ``PORTRAIT_*`` variables are reported with the
closest known name (``unknown_variables``).

Broker and Redis URLs fall back to the state file written by ``portrait infra up``, so that a
developer can run ``portrait infra up`` and then any other command without exporting anything.
The state file is found from any folder (``default_state_file``): a ``.portrait/infra.json`` in
the current folder or one above it (a project-local file), else the per-user state directory.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import ssl
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, get_args, get_origin
from urllib.parse import parse_qsl, urlsplit

import annotated_types
import platformdirs
from pydantic import BeforeValidator, Field, SecretStr, ValidationError
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict, SettingsError

from stream import __version__
from stream.errors import ConfigError

__all__ = [
    "ConfigError",
    "Settings",
    "default_state_file",
    "describe_errors",
    "load_settings",
    "mask_url",
    "unknown_variables",
]

ENV_PREFIX = "PORTRAIT_"
STATE_FILE_NAME = "infra.json"
PROJECT_STATE_DIR = ".portrait"
MASK = "**********"
# PORTRAIT_* variables that are not settings: read by the development tools and the test suite
OTHER_VARIABLES = frozenset({"PORTRAIT_CACHE_DIR", "PORTRAIT_KAFKA_VERSION", "PORTRAIT_TEST_BROKER"})
BROKER_FORM = "kafka://host:port[;host:port...]"
REDIS_FORM = (
    "redis://[user:password@]host[:port][/db] (rediss:// for TLS, unix:///path/to.sock; "
    "redis+cluster:// or rediss+cluster:// for a Redis/Valkey Cluster)"
)
CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}
_SECRET_WORDS = ("pass", "secret", "token", "key")


def default_state_file(cwd: Path | None = None) -> Path:
    """Where ``portrait infra up`` writes (and every command reads) the infra state by default.

    The first ``.portrait/infra.json`` found in ``cwd`` or a folder above it (a project-local
    state), else ``infra.json`` in the per-user state directory (e.g. ``~/.local/state/portrait``),
    so the state is found from any folder.
    """
    try:
        here = (cwd or Path.cwd()).resolve()
    except OSError:  # the working directory was removed
        here = None
    if here is not None:
        for folder in (here, *here.parents):
            candidate = folder / PROJECT_STATE_DIR / STATE_FILE_NAME
            if candidate.is_file():
                return candidate
    return Path(platformdirs.user_state_dir("portrait", appauthor=False)) / STATE_FILE_NAME


def _port_ok(port: int) -> bool:
    return 1 <= port <= 65535


def _check_broker_url(value: Any) -> Any:
    """``kafka://host:port[;host:port]`` (``aiokafka://`` too; a bare ``host:port`` gets ``kafka://``)."""
    if not isinstance(value, str):
        return value
    text = value.strip()
    scheme, sep, rest = text.partition("://")
    if not sep:
        scheme, rest = "kafka", text
    if scheme not in ("kafka", "aiokafka"):
        raise ValueError(f"unknown scheme {scheme + '://'!r}")
    hosts = [h.strip() for h in rest.replace(",", ";").split(";") if h.strip()]
    if not hosts:
        raise ValueError("no broker address")
    for host in hosts:
        name, colon, port = host.rpartition(":")
        if not colon or not name or "/" in host or "@" in host:
            raise ValueError(f"{host!r} is not host:port")
        if not port.isdigit() or not _port_ok(int(port)):
            raise ValueError(f"port {port!r} of {host!r} is not 1-65535")
    return f"{scheme}://" + ";".join(hosts)


def _check_redis_url(value: Any) -> Any:
    if not isinstance(value, str):
        return value
    text = value.strip()
    parts = urlsplit(text)
    if "://" not in text:
        raise ValueError("not a URL")
    if parts.scheme not in ("redis", "rediss", "unix", *CLUSTER_SCHEMES):
        raise ValueError(f"unknown scheme {parts.scheme + '://'!r}")
    if parts.scheme == "unix":
        if not parts.path:
            raise ValueError("no socket path")
        return text
    hostport = parts.netloc.rpartition("@")[2]
    if not parts.hostname or hostport.startswith(":"):
        raise ValueError("no host")
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"port of {hostport!r} is not 1-65535") from None
    if port is not None and not _port_ok(port):
        raise ValueError(f"port {port} is not 1-65535")
    db = parts.path.strip("/")
    if db and not db.isdigit():
        raise ValueError(f"database {db!r} is not a number")
    if db and db != "0" and parts.scheme in CLUSTER_SCHEMES:
        raise ValueError(f"a cluster has only database 0 (got /{db})")
    return text


def _split_list(value: Any) -> Any:
    """``a,b,c`` (or a JSON array) -> a list; items are stripped, empty items dropped."""
    if not isinstance(value, str):
        return value
    text = value.strip()
    if text.startswith("["):
        try:
            return json.loads(text)
        except ValueError:
            raise ValueError("not a JSON array") from None
    return [item.strip() for item in text.split(",") if item.strip()]


Port = Annotated[int, Field(ge=1, le=65535)]
BrokerUrl = Annotated[str, BeforeValidator(_check_broker_url)]
RedisUrl = Annotated[str, BeforeValidator(_check_redis_url)]
CommaList = Annotated[list[str], NoDecode, BeforeValidator(_split_list)]


def mask_url(url: str) -> str:
    """``url`` with the password of its userinfo and secret-looking query parameters masked.

    The userinfo ends at the *last* ``@`` of the netloc (as clients read it), so passwords
    containing ``@`` are masked whole: ``redis://u:p@ss@host/0`` -> ``redis://u:**********@host/0``.
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    # as urllib (and so redis-py) splits it: the netloc ends at the first / ? or #
    end = min((i for i in (rest.find(m) for m in "/?#") if i != -1), default=len(rest))
    netloc, tail = rest[:end], rest[end:]
    if "@" in netloc:
        userinfo, _, hostport = netloc.rpartition("@")
        user, colon, _password = userinfo.partition(":")
        netloc = f"{user}:{MASK}@{hostport}" if colon else f"{userinfo}@{hostport}"
    path, qmark, query = tail.partition("?")
    if qmark:
        query, hash_, fragment = query.partition("#")
        pairs = []
        for key, value in parse_qsl(query, keep_blank_values=True):
            secret = any(word in key.lower() for word in _SECRET_WORDS)
            pairs.append(f"{key}={MASK if secret and value else value}")
        tail = f"{path}?{'&'.join(pairs)}{hash_}{fragment}"
    return f"{scheme}://{netloc}{tail}"


class Settings(BaseSettings):
    """Effective configuration. Every field maps to ``PORTRAIT_<FIELD>`` in the environment."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, frozen=True, extra="ignore")

    broker_url: BrokerUrl | None = Field(default=None, description=BROKER_FORM)
    redis_url: RedisUrl | None = Field(default=None, description=REDIS_FORM)
    # Redis ACL user (least privilege: see deploy/valkey/README.md) and TLS
    redis_username: str | None = None
    redis_password: SecretStr | None = None
    redis_tls_ca_file: Path | None = None
    # a Redis/Valkey Cluster (also implied by a redis+cluster:// URL): redis-py's cluster client
    redis_cluster: bool = False
    # state shards of a new store (its keys' hash tags); a store keeps the count it was created with
    redis_shards: int = Field(default=128, ge=1, le=16384)
    # replicas that must hold a batch's writes before it is acknowledged (WAIT; 0: do not wait)
    redis_wait_replicas: int = Field(default=0, ge=0)
    redis_wait_timeout_ms: int = Field(default=1000, ge=1)
    # Kafka security: PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL; SASL PLAIN or SCRAM-SHA-256/512
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = "PLAIN"
    kafka_sasl_username: str | None = None
    kafka_sasl_password: SecretStr | None = None
    kafka_ssl_ca_file: Path | None = None
    kafka_ssl_cert_file: Path | None = None
    kafka_ssl_key_file: Path | None = None
    state_file: Path = Field(
        default_factory=default_state_file,
        description="infra state of `portrait infra up` (default: .portrait/infra.json above, else per-user)",
    )
    app_id: str = "portrait"
    topic_prefix: str = "portrait"
    key_prefix: str = "portrait"
    partitions: int = Field(default=4, ge=1)
    tags_file: Path | None = Field(default=None, description="tag definitions YAML; default is shipped")
    rules_file: Path | None = Field(
        default=None, description="automation rules YAML; default deploy/rules.yaml when present, else no rules"
    )
    models_enabled: bool = True
    models_file: Path | None = Field(default=None, description="model config YAML; default is shipped")
    model_checkpoint_interval_s: float = Field(default=10.0, gt=0)
    # where the model trainer runs: "embedded" in a worker (a timer on the worker's event loop, for
    # the demo and a single-process setup) or "external": only `portrait trainer` processes learn,
    # the workers never do (the production deploy: ingest never waits on learning or checkpoints)
    trainer: Literal["embedded", "external"] = "embedded"
    trainer_web_port: Port = Field(default=6068, description="port of `portrait trainer`'s /livez /readyz /metrics")
    clock: Literal["wall", "event"] = "wall"
    batch_size: int = Field(default=500, ge=1)
    # (consumer "faust") a batch closes when full or after this long: 20 ms keeps latency low at
    # moderate rates; the batch consumer takes what each fetch brought, up to batch_size, at once
    batch_within: float = Field(default=0.02, gt=0)
    max_future_skew_s: float = Field(default=300.0, ge=0)
    # Larger messages are dead-lettered as too_large (a prefix, the size and a hash). The bound
    # keeps every dead letter's base64 copy (4/3 of the bytes) under the broker's default 1 MB.
    max_message_bytes: int = Field(default=512 * 1024, ge=1024, le=700_000)
    # identity resolution safeguards (see stream/identity/merge.py)
    identity_blocked_ids: CommaList = Field(
        default=["", "0", "-1", "null", "none", "nil", "undefined", "anonymous", "unknown", "guest"],
        description="identifier values that never identify anyone (comma-separated, compared case-insensitively)",
    )
    identity_max_merges_per_day: int = Field(default=5, ge=0)
    identity_max_merges: int = Field(default=100, ge=0)
    timer_interval_s: float = Field(default=1.0, gt=0)
    due_batch: int = Field(default=1000, ge=1)
    due_lease_s: float = Field(default=30.0, gt=0)
    rfm_refresh_interval_s: float = Field(default=10.0, gt=0)
    # Event time (replays, backfills): thresholds also refresh whenever the event clock moved this
    # far since the last refresh, so they follow the replayed months, not the wall clock.
    rfm_refresh_event_s: float = Field(default=86400.0, gt=0)
    # Event time: "tick": the timer refreshes once a tick when the clock moved rfm_refresh_event_s
    # (batches may apply days past it on the thresholds before); "batches": a batch is applied in
    # pieces cut at the period starts it crosses, the thresholds refreshed there first (the users
    # due before a start whose scores the refresh changes evaluated before it), as the offline
    # driver does (its RFM rule firings within 0.1-2.2 %; slower: docs/performance.md, "RFM
    # refreshes in step").
    rfm_event_refresh: Literal["tick", "batches"] = "tick"
    # Event time: a batch whose last event is more than this far past what the time-driven path
    # has evaluated (``clock:timed``) waits for it (up to 10 s of wall time), so the labels the
    # trainer learns, the model the batches score with and the RFM thresholds the timer refreshes
    # stay close behind the batches (the model lagged 130-250 days of event time in a backfill,
    # 20-40 with 7 days). 0 (the default): no wait; 7 days cost 1.4-1.5x the wall time at 25,000
    # customers (docs/performance.md, "Batches kept near the time-driven path").
    event_time_lead_s: float = Field(default=0.0, ge=0)
    # Lifecycle memory: a user inactive this many whole days (after the day of their latest event)
    # is deleted; until then the profile keeps lifetime tags and monthly tiles (docs/tags.md).
    # At least the 90-day window of the daily tiles.
    lifecycle_retention_days: int = Field(default=400, ge=90, le=3660)
    # Rule triggers (docs/rules.md, "Delivery"): live sends; dry-run decides and records every
    # firing, sends none; off decides none. In live, a firing whose event time is more than the
    # horizon behind the wall clock (a backfill of history) is withheld as a `backfill` suppression.
    delivery: Literal["live", "dry-run", "off"] = "live"
    delivery_horizon_s: float = Field(default=86400.0, ge=0, description="0: no horizon")
    # Event time: evaluate users only at the change points a rule, label, model or the RFM
    # population needs (needed; profiles are brought to the clock when the input stops), or at
    # every change of any tag (every: the per-day path). Wall time always evaluates every one.
    time_steps: Literal["needed", "every"] = "needed"
    web_host: str = "127.0.0.1"
    web_port: Port = 6066
    # the read API and dashboard (`portrait api`, stream/api): loopback unless set; any other bind
    # address needs a bearer token (docs/api.md)
    api_host: str = "127.0.0.1"
    api_port: Port = 6067
    api_token: SecretStr | None = Field(default=None, description="bearer token the read API requires")
    # insights are a cached aggregate of every profile, recomputed this long after the last pass ended
    api_insights_interval_s: float = Field(default=15.0, gt=0)
    # hourly trend snapshots of audience sizes (in the service clock), kept this many days
    api_trends_retention_days: int = Field(default=90, ge=1)
    broker_session_timeout_s: float = 6.0
    broker_heartbeat_interval_s: float = 1.0
    consumer_fetch_max_wait_ms: int = Field(default=100, ge=0)
    # how the input topics reach the ingest agent: "batch" hands it each fetched partition batch
    # at once (stream/kafka/batches.py: Faust's per-message machinery is skipped, same ack
    # contract); "faust" is Faust's own path (an Event per message, `take_events`)
    consumer: Literal["batch", "faust"] = "batch"
    commit_interval_s: float = 1.0
    # readiness (stream/service/health.py): a partition with lag and no progress for this long, or a
    # batch in flight this long, makes the worker unready; the broker is probed every interval
    readiness_stall_s: float = Field(default=60.0, gt=0)
    readiness_probe_interval_s: float = Field(default=5.0, gt=0)
    readiness_probe_timeout_s: float = Field(default=5.0, gt=0)
    log_level: Annotated[
        Literal["debug", "info", "warning", "error", "critical"],
        BeforeValidator(lambda v: v.strip().lower() if isinstance(v, str) else v),
    ] = "info"

    @property
    def processor_version(self) -> str:
        return __version__

    def kafka_client_kwargs(self) -> dict[str, Any]:
        """Security options for aiokafka clients (producers, consumers, admin)."""
        kwargs: dict[str, Any] = {"security_protocol": self.kafka_security_protocol}
        if self.kafka_security_protocol in ("SSL", "SASL_SSL"):
            kwargs["ssl_context"] = self.kafka_ssl_context()
        if self.kafka_security_protocol.startswith("SASL"):
            kwargs["sasl_mechanism"] = self.kafka_sasl_mechanism
            kwargs["sasl_plain_username"] = self.kafka_sasl_username
            kwargs["sasl_plain_password"] = self._secret(self.kafka_sasl_password)
        return kwargs

    def kafka_ssl_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.kafka_ssl_ca_file) if self.kafka_ssl_ca_file else None)
        if self.kafka_ssl_cert_file is not None:
            key = str(self.kafka_ssl_key_file) if self.kafka_ssl_key_file else None
            context.load_cert_chain(str(self.kafka_ssl_cert_file), key)
        return context

    def redis_client_kwargs(self) -> dict[str, Any]:
        """Credentials and TLS options for redis-py, on top of the URL."""
        kwargs: dict[str, Any] = {}
        if self.redis_username is not None:
            kwargs["username"] = self.redis_username
        if self.redis_password is not None:
            kwargs["password"] = self._secret(self.redis_password)
        if self.redis_tls_ca_file is not None:
            kwargs["ssl_ca_certs"] = str(self.redis_tls_ca_file)
        return kwargs

    @staticmethod
    def _secret(value: SecretStr | None) -> str | None:
        return value.get_secret_value() if value is not None else None

    def redacted(self) -> dict[str, Any]:
        """The settings with secrets hidden (SecretStr fields, URL passwords, secret query parameters)."""
        shown: dict[str, Any] = {}
        for name, value in self.model_dump().items():
            if isinstance(value, SecretStr):
                value = MASK if value.get_secret_value() else ""
            elif isinstance(value, str) and "://" in value:
                value = mask_url(value)
            elif isinstance(value, Path):
                value = str(value)
            shown[name] = value
        return shown

    def config_hash(self) -> str:
        """Short hash of the effective configuration (secrets excluded) for the worker info metric."""
        shown = self.redacted()
        shown.pop("state_file")  # where a developer's infra state lives is no configuration of the service
        doc = json.dumps(shown, sort_keys=True, default=str).encode()
        for path in (self.tags_file, self.resolved_rules_file(), self.models_file):
            if path is not None and path.exists():
                doc += path.read_bytes()
        return hashlib.sha256(doc).hexdigest()[:12]

    def resolved_rules_file(self) -> Path | None:
        if self.rules_file is not None:
            return self.rules_file
        shipped = Path(__file__).resolve().parent.parent / "deploy" / "rules.yaml"
        return shipped if shipped.exists() else None

    def read_state(self) -> dict[str, str]:
        """Connection details written by ``portrait infra up`` (empty when absent)."""
        try:
            text = self.state_file.read_text()
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise ConfigError(f"cannot read the infra state file {self.state_file}: {exc.strerror}") from exc
        try:
            data = json.loads(text)
        except ValueError:
            data = None
        if not isinstance(data, dict):
            raise ConfigError(
                f"infra state file {self.state_file} is not a JSON object (run `portrait infra down` and `up` again)"
            )
        return {str(k): str(v) for k, v in data.items()}

    def _from_state(self, name: str, what: str, variable: str) -> str:
        url = self.read_state().get(name)
        if not url:
            raise ConfigError(
                f"no {what}: set {variable} or run `portrait infra up` (no infra state file at {self.state_file})"
            )
        checker = _check_broker_url if name == "broker_url" else _check_redis_url
        try:
            checked: str = checker(url)
        except ValueError as exc:
            raise ConfigError(f"infra state file {self.state_file}: {name} {mask_url(url)!r}: {exc}") from exc
        return checked

    def resolved_broker_url(self) -> str:
        return self.broker_url or self._from_state("broker_url", "broker", "PORTRAIT_BROKER_URL")

    def resolved_redis_url(self) -> str:
        return self.redis_url or self._from_state("redis_url", "Redis", "PORTRAIT_REDIS_URL")

    def redis_target(self) -> tuple[str, bool]:
        """(the URL redis-py takes, whether it is a cluster): ``redis+cluster://h:p`` is the cluster
        ``redis://h:p``; ``PORTRAIT_REDIS_CLUSTER=true`` makes a plain URL a cluster seed too."""
        url = self.resolved_redis_url()
        scheme, sep, rest = url.partition("://")
        if scheme in CLUSTER_SCHEMES:
            return f"{CLUSTER_SCHEMES[scheme]}{sep}{rest}", True
        if self.redis_cluster and scheme == "unix":
            raise ConfigError("PORTRAIT_REDIS_CLUSTER=true needs a redis:// or rediss:// seed, not a unix socket")
        return url, self.redis_cluster

    def bootstrap_servers(self) -> str:
        """The broker URL as a plain ``host:port,host:port`` list for Kafka clients."""
        url = self.resolved_broker_url()
        for scheme in ("kafka://", "aiokafka://"):
            if url.startswith(scheme):
                url = url[len(scheme) :]
        return url.replace(";", ",")

    def effective(self) -> dict[str, Any]:
        """What a process with these settings actually uses, secrets masked (``portrait config show``).

        Like ``redacted`` plus the resolved broker and Redis (with where each came from: the
        environment or the infra state file), the tag, rules and model files actually loaded, the
        state file consulted, the processor version and the configuration hash.
        """
        shown = self.redacted()
        sources: dict[str, str] = {}
        for name, variable in (("broker_url", "PORTRAIT_BROKER_URL"), ("redis_url", "PORTRAIT_REDIS_URL")):
            if getattr(self, name) is not None:
                sources[name] = variable
                continue
            try:
                url = self._from_state(name, name, variable)
            except ConfigError:
                shown[name], sources[name] = None, f"unset: set {variable} or run `portrait infra up`"
            else:
                shown[name], sources[name] = mask_url(url), f"infra state file {self.state_file}"
        package = Path(__file__).resolve().parent
        rules = self.resolved_rules_file()
        shown["tags_file"] = str(self.tags_file or package / "tags.yaml")
        shown["rules_file"] = str(rules) if rules is not None else None
        shown["models_file"] = str(self.models_file or package / "models.yaml")
        for name, default in (
            ("tags_file", "shipped"),
            ("rules_file", "deploy/rules.yaml" if rules is not None else "no rules"),
            ("models_file", "shipped"),
        ):
            sources[name] = f"PORTRAIT_{name.upper()}" if getattr(self, name) is not None else f"default ({default})"
        sources["state_file"] = "PORTRAIT_STATE_FILE" if "state_file" in self.model_fields_set else "default"
        return {
            "settings": shown,
            "sources": sources,
            "explicit": sorted(f"{ENV_PREFIX}{n.upper()}" for n in self.model_fields_set),
            "processor_version": self.processor_version,
            "config_hash": self.config_hash(),
        }


def _expected_form(name: str, info: FieldInfo) -> str:
    """The expected form of a setting, for error messages (``a TCP port 1-65535``, ``true or false``)."""
    if name == "broker_url":
        return BROKER_FORM
    if name == "redis_url":
        return REDIS_FORM
    annotation = info.annotation
    if get_origin(annotation) is list:
        return "comma-separated values, e.g. a,b,c"
    args = [a for a in get_args(annotation) if a is not type(None)] if get_origin(annotation) is not None else []
    if get_origin(annotation) is Literal:
        return "one of " + ", ".join(str(a) for a in get_args(annotation))
    for arg in args:
        if get_origin(arg) is Literal:
            return "one of " + ", ".join(str(a) for a in get_args(arg))
    base = args[0] if len(args) == 1 else annotation
    if get_origin(base) is list:
        return "comma-separated values, e.g. a,b,c"
    bounds = []
    for meta in info.metadata:
        for attr, sign in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")):
            if isinstance(meta, getattr(annotated_types, attr.capitalize())):
                bounds.append(f"{sign} {getattr(meta, attr)}")
    limit = f" {' and '.join(bounds)}" if bounds else ""
    if name.endswith("_port"):
        return "a TCP port 1-65535"
    if base is bool:
        return "true or false"
    if base is int:
        return f"a whole number{limit}"
    if base is float:
        return f"a number{limit}" + (" (seconds)" if name.endswith("_s") else "")
    if base is Path:
        return "a file path"
    if base is SecretStr:
        return "a secret"
    return "text"


_PROBLEMS = {
    "int_parsing": "not a whole number",
    "int_from_float": "not a whole number",
    "float_parsing": "not a number",
    "bool_parsing": "not a boolean",
    "literal_error": "not an allowed value",
    "greater_than_equal": "out of range",
    "greater_than": "out of range",
    "less_than_equal": "out of range",
    "less_than": "out of range",
    "list_type": "not a list",
    "missing": "missing",
}


def describe_errors(exc: ValidationError) -> list[str]:
    """One line per invalid setting: ``PORTRAIT_WEB_PORT='99999': out of range (expected a TCP port 1-65535)``."""
    lines = []
    for error in exc.errors():
        name = str(error["loc"][0]) if error["loc"] else "?"
        info = Settings.model_fields.get(name)
        variable = f"{ENV_PREFIX}{name.upper()}"
        value = error.get("input")
        if info is not None and (info.annotation is SecretStr or "SecretStr" in str(info.annotation)):
            shown = "'(secret)'"
        elif isinstance(value, str):
            shown = repr(mask_url(value) if "://" in value else value)
        else:
            shown = repr(value)
        problem = _PROBLEMS.get(error["type"], error["msg"])
        if error["type"] == "value_error":
            problem = str(error.get("ctx", {}).get("error", error["msg"]))
        form = _expected_form(name, info) if info is not None else "a known setting"
        lines.append(f"{variable}={shown}: {problem} (expected {form})")
    return lines


def unknown_variables(environ: Mapping[str, str] | None = None) -> list[str]:
    """A warning for every ``PORTRAIT_*`` variable that is no setting, with the closest known name."""
    environ = os.environ if environ is None else environ
    known = sorted({f"{ENV_PREFIX}{n.upper()}" for n in Settings.model_fields} | OTHER_VARIABLES)
    warnings = []
    for key in sorted(environ):
        upper = key.upper()
        if not upper.startswith(ENV_PREFIX) or upper in known:
            continue
        close = difflib.get_close_matches(upper, known, n=1, cutoff=0.6)
        hint = f"; did you mean {close[0]}?" if close else " (see `portrait config show`)"
        warnings.append(f"unknown setting {key} is ignored{hint}")
    return warnings


def load_settings(**overrides: Any) -> Settings:
    """``Settings()`` from the environment (plus ``overrides``); any invalid value raises one
    ``ConfigError`` with one line per problem (see ``describe_errors``)."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:  # not chained: pydantic's message would repeat secret values
        raise ConfigError("\n".join(describe_errors(exc))) from None
    except SettingsError as exc:
        raise ConfigError(str(exc).splitlines()[0]) from None
