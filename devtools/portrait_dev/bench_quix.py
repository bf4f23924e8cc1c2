"""A Quix Streams reference of the core tag job, measured like Portrait (issue 16 goal 6).

Two scenarios of ``portrait bench``, each one child process (``python -m portrait_dev.bench_quix
noop|ref``) on the bench's broker, topics, 50,000 single-event messages and Valkey, measured like
the Faust no-op: events/s from the first counted message to the last, and the child's CPU (its
librdkafka and RocksDB threads included) per event over the same span.

``quixnoop``  a Quix Streams ``Application`` on the four input topics (concatenated into one
              ``StreamingDataFrame``, raw bytes, no deserialisation) whose sink only counts: at each
              checkpoint one ``HINCRBY`` of the stats hash's ``messages`` field (the Faust no-op's
              one call per batch). The framework floor of Quix.
``quix``      the reference tag job. The same topology with the messages deserialised as JSON
              (Quix's orjson deserialiser) and a stateful ``apply`` per message that updates the
              user's state (``ref_update``) in Quix's state store (RocksDB, with its changelog topic
              in Kafka: Quix's defaults). At each checkpoint the sink computes the profile of every
              user touched since the last one (``ref_profile``, at the wall clock) and writes them
              in one Redis pipeline: one ``HSET`` per touched user plus the ``messages`` counter.

What the reference computes, per user (the message key: user id, or anonymous id):

- state: events per type (all time); per UTC day with an ``order_paid``: orders and amount in
  cents, days older than 90 days before the user's newest event dropped; first and last seen.
- profile (a Redis hash ``<prefix>:qref:profile:<key>``): ``events``, ``n_<type>`` per event
  type, ``orders_30d``/``spend_30d`` and ``orders_90d``/``spend_90d`` (day ``d`` is in the N-day
  window when ``today - N < d <= today``), ``buyer_90d`` (1 or 0), ``first_seen``, ``last_seen``,
  ``days_since_seen`` and ``_updated_at``.

What Portrait does on top (and the reference does not): pydantic validation of every event and
dead letters, identity (anonymous ids merged into users), exactly-once application (offsets and
recent event ids in the state), the full tile set (13 counters per day, hours, interest, traits,
NPS, lifecycle), the tag catalogue with time-driven re-evaluation, rules and triggers, models,
the compressed versioned state and the profile both in Valkey (one Lua script per batch).

Delivery: Quix's default at-least-once. A checkpoint flushes the sink (the Redis pipeline),
produces and flushes the state's changelog, commits the offsets, then flushes RocksDB; a crash
before the commit replays messages (counters could be applied twice: the reference has no dedupe,
Portrait applies each event exactly once through the offsets in its state). Checkpoints are taken
every ``settings.batch_size`` messages (Portrait's batch bound) or ``QUIX_COMMIT_INTERVAL``
seconds, whichever comes first; Quix's default interval (5 s) would leave the last partial batch
of the backlog waiting up to 5 s, which is not processing cost.

Consumer: the worker's fetch wait (``settings.consumer_fetch_max_wait_ms``, 100 ms) as librdkafka's
``fetch.wait.max.ms`` and as Quix's ``consumer_poll_timeout``. Quix's default poll timeout (1 s)
throttles an application that concatenates topics: it orders messages across the topics by
timestamp, and each refill of its buffer waits for the timeout or 10,000 messages, so on this
backlog the sparse topics (feedback, identify) hold everything back. Measured on the 2-core box
(Tansu, 50,000 messages): the no-op 9,700 ev/s with the default, 36,700 ev/s with 100 ms, CPU per
message unchanged (15 µs). The reference should be Quix at its reasonable best, not a straw man.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from stream.settings import Settings

DAY = 86400
WINDOWS_DAYS = (30, 90)
KEEP_DAYS = max(WINDOWS_DAYS)
QUIX_COMMIT_INTERVAL = 0.1  # seconds; see the module docstring
MODES = ("noop", "ref")
# the input topics get an explicit retention.ms, Kafka's default (no change there): Quix derives its
# changelog topic's retention from the input topics' retention.ms, and Tansu describes only the
# configs a topic was created with (without it the stateful app fails with KeyError 'retention.ms')
TOPIC_CONFIGS = {"retention.ms": "604800000"}


# =============================================================================================
# The reference's state and profile (pure, unit-tested)
# =============================================================================================


def event_epoch(ts: str) -> float:
    """Epoch seconds of an event's ISO-8601 ``ts``."""
    return datetime.fromisoformat(ts).timestamp()


def new_state() -> dict[str, Any]:
    """An empty reference state (JSON-serialisable: Quix's state store keeps it as JSON)."""
    return {"n": {}, "d": {}, "fs": None, "ls": None}


def ref_update(state: dict[str, Any] | None, event: dict[str, Any]) -> dict[str, Any]:
    """The user's state after ``event`` (updated in place; a new state when ``state`` is None).

    ``n``: events per type; ``d``: ``{str(UTC day): [orders, order cents]}`` of ``order_paid``
    events, kept for ``KEEP_DAYS`` days before the newest event; ``fs``/``ls``: first/last seen."""
    s = new_state() if state is None else state
    t = event_epoch(str(event["ts"]))
    etype = str(event["type"])
    counts: dict[str, int] = s["n"]
    counts[etype] = counts.get(etype, 0) + 1
    s["fs"] = t if s["fs"] is None else min(s["fs"], t)
    s["ls"] = t if s["ls"] is None else max(s["ls"], t)
    days: dict[str, list[int]] = s["d"]
    if etype == "order_paid":
        tile = days.setdefault(str(int(t // DAY)), [0, 0])
        tile[0] += 1
        tile[1] += round(float(event.get("amount") or 0.0) * 100)
    oldest = int(s["ls"] // DAY) - KEEP_DAYS
    if any(int(d) <= oldest for d in days):
        s["d"] = {d: v for d, v in days.items() if int(d) > oldest}
    return s


def ref_profile(state: dict[str, Any], now: float) -> dict[str, str]:
    """The profile hash of a reference state at ``now`` (epoch seconds): field -> string."""
    counts: dict[str, int] = state["n"]
    fields = {"events": str(sum(counts.values()))}
    fields.update({f"n_{etype}": str(n) for etype, n in counts.items()})
    today = int(now // DAY)
    tiles = [(int(d), v) for d, v in state["d"].items()]
    for window in WINDOWS_DAYS:
        inside = [v for d, v in tiles if today - window < d <= today]
        fields[f"orders_{window}d"] = str(sum(v[0] for v in inside))
        fields[f"spend_{window}d"] = f"{sum(v[1] for v in inside) / 100:.2f}"
    fields["buyer_90d"] = "1" if fields["orders_90d"] != "0" else "0"
    if state["ls"] is not None:
        fields["first_seen"] = f"{state['fs']:.3f}"
        fields["last_seen"] = f"{state['ls']:.3f}"
        fields["days_since_seen"] = str(max(0, today - int(state["ls"] // DAY)))
    fields["_updated_at"] = f"{now:.3f}"
    return fields


def profile_key(key_prefix: str, subject: str) -> str:
    """The reference's profile hash of ``subject`` (beside Portrait's keys, never one of them)."""
    return f"{key_prefix}:qref:profile:{subject}"


# =============================================================================================
# The Quix Streams application (child process: ``python -m portrait_dev.bench_quix noop|ref``)
# =============================================================================================


def create_app(settings: Settings, mode: str, state_dir: Path) -> Any:
    """The Quix ``Application`` of ``mode`` (``noop`` or ``ref``) on ``settings``' input topics."""
    import redis
    from quixstreams import Application
    from quixstreams.sinks import BaseSink

    from stream.contracts.topics import Topics
    from stream.storage.keys import Keys

    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r} (one of {', '.join(MODES)})")
    client = redis.Redis.from_url(settings.resolved_redis_url())
    stats_key = Keys(settings.key_prefix).stats
    prefix = settings.key_prefix

    class ProfileSink(BaseSink):  # type: ignore[misc,unused-ignore]  # Any without quixstreams
        """Per checkpoint: one pipeline, an HSET per touched user (``ref``) and the counter."""

        def __init__(self, profiles: bool, clock: Callable[[], float] = time.time) -> None:
            super().__init__()
            self.profiles = profiles
            self.clock = clock
            self.count = 0
            self.touched: dict[str, dict[str, Any]] = {}

        def add(self, value: Any, key: Any, *args: Any, **kwargs: Any) -> None:
            self.count += 1
            if self.profiles:
                self.touched[key] = value

        def flush(self) -> None:
            if not self.count:
                return
            pipe = client.pipeline(transaction=False)
            now = self.clock()
            for subject, state in self.touched.items():
                pipe.hset(profile_key(prefix, subject), mapping=ref_profile(state, now))  # type: ignore[arg-type]
            pipe.hincrby(stats_key, "messages", self.count)
            pipe.execute()
            self.count = 0
            self.touched = {}

    app = Application(
        broker_address=settings.bootstrap_servers(),
        consumer_group=settings.app_id,
        auto_offset_reset="earliest",
        commit_interval=QUIX_COMMIT_INTERVAL,
        commit_every=settings.batch_size,
        state_dir=state_dir,
        loglevel="WARNING",
        # the worker's fetch wait, as the broker's wait and as the longest a poll blocks (see the
        # module docstring: Quix's 1 s default poll timeout throttles the concatenated topics)
        consumer_extra_config={"fetch.wait.max.ms": settings.consumer_fetch_max_wait_ms},
        consumer_poll_timeout=max(0.01, settings.consumer_fetch_max_wait_ms / 1000),
    )
    keys: Literal["bytes", "str"] = "bytes" if mode == "noop" else "str"
    values: Literal["bytes", "json"] = "bytes" if mode == "noop" else "json"
    frames = [
        app.dataframe(app.topic(name, key_deserializer=keys, value_deserializer=values))
        for name in Topics(settings.topic_prefix).inputs
    ]
    sdf = frames[0]
    for other in frames[1:]:
        sdf = sdf.concat(other)
    if mode == "ref":

        def tag(value: dict[str, Any], state: Any) -> dict[str, Any]:
            updated = ref_update(state.get("s"), value)
            state.set("s", updated)
            return updated

        sdf = sdf.apply(tag, stateful=True)
    sdf.sink(ProfileSink(profiles=mode == "ref"))
    return app


def quix_main(mode: str) -> int:
    from stream.settings import Settings

    settings = Settings()
    state_dir = settings.state_file.parent / f"quix-state-{settings.app_id}"
    create_app(settings, mode, state_dir).run()
    return 0


# =============================================================================================
# The scenarios (in the bench process)
# =============================================================================================


def quix_available() -> str | None:
    """None when Quix Streams can be imported, else why not (one line)."""
    try:
        import quixstreams  # noqa: F401
    except ImportError as exc:
        return f"quixstreams is not installed ({exc}; pip install -e './devtools[bench]')"
    return None


def child_argv(mode: str) -> list[str]:
    """The command line of the child process of ``mode`` (``noop`` or ``ref``)."""
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r} (one of {', '.join(MODES)})")
    return [sys.executable, "-m", "portrait_dev.bench_quix", mode]


if __name__ == "__main__":
    if sys.argv[1:2] and sys.argv[1] in MODES:
        raise SystemExit(quix_main(sys.argv[1]))
    print(f"usage: python -m portrait_dev.bench_quix {{{','.join(MODES)}}}", file=sys.stderr)
    raise SystemExit(2)
