"""The Redis key contract (see docs/redis-keys.md). The one place that builds key names.

Nothing else formats a key: the Lua scripts (``stream/storage/scripts/*.lua``) receive every key
they touch, built here, in ``KEYS``.

Layout v2: the store is split into a fixed number of **state shards** (``Keys.shards``, chosen
when the store is created and recorded in ``layout``). A subject (user id or ``anon:<id>``)
belongs to shard ``shard_of(subject)``; every key of shard ``n`` carries the hash tag ``{sN}``,
so a Redis Cluster keeps a shard in one slot and one Lua script can write all of it: the
subject's state, profile and alias, and the shard's share of every population structure
(audience sets, due set, RFM rank sets, counters, trigger outbox, model examples, suppression
list). What is one per store (the event clock and partition progress, RFM thresholds, model
checkpoint and trainer lease, epoch, layout, tag catalogue, batch counters) carries the tag
``{g}``. Standalone Redis uses the same keys.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

SCHEMA = "v2"
PREVIOUS_SCHEMAS = ("v1",)  # a store of these layouts is refused at start (docs/redis-keys.md)
DEFAULT_SHARDS = 128
GLOBAL_TAG = "{g}"


def erased_token(uid: str) -> str:
    """How an erased id is remembered on the suppression list: a hash (SHA-1 hex), not the id itself.
    The scripts receive the tokens they need; none computes one."""
    return hashlib.sha1(uid.encode()).hexdigest()


def shard_of(subject: str, shards: int) -> int:
    """The state shard of ``subject``: the first 8 hex digits of its erased token (SHA-1 of the
    UTF-8 id) as an integer, modulo ``shards``. From the token alone, so an erasure's tokens can
    be placed without the id; any language can compute it (docs/redis-keys.md)."""
    return shard_of_token(erased_token(subject), shards)


def shard_of_token(token: str, shards: int) -> int:
    return int(token[:8], 16) % shards


def layout_value(shards: int) -> str:
    """What ``Keys.layout`` holds for a store of ``shards`` state shards."""
    return f"shards={shards}"


def layout_shards(value: str) -> int:
    """The shard count a ``Keys.layout`` value records; 0 when it is not ``shards=N``."""
    name, _, number = value.partition("=")
    return int(number) if name == "shards" and number.isdigit() else 0


@dataclass(frozen=True)
class Keys:
    prefix: str = "portrait"
    shards: int = DEFAULT_SHARDS

    @property
    def base(self) -> str:
        return f"{self.prefix}:{SCHEMA}"

    @property
    def pattern(self) -> str:
        """SCAN pattern of every key of this store (every shard, ``{g}`` and the layout)."""
        return f"{self.base}:*"

    # -- shards ---------------------------------------------------------------------------
    def shard(self, subject: str) -> int:
        return shard_of(subject, self.shards)

    def shard_base(self, shard: int) -> str:
        """What every key of shard ``shard`` starts with (ends with its hash tag)."""
        return f"{self.base}:{{s{shard}}}"

    def _of(self, subject: str) -> str:
        return self.shard_base(self.shard(subject))

    # -- one subject (its shard's hash tag) ---------------------------------------------
    def state(self, uid: str) -> str:
        return f"{self._of(uid)}:state:{uid}"

    def profile(self, uid: str) -> str:
        return f"{self._of(uid)}:profile:{uid}"

    def alias(self, subject: str) -> str:
        """Where a merged anonymous subject (``anon:<id>``) points: the known user id."""
        return f"{self._of(subject)}:alias:{subject}"

    # -- one shard's share of the population structures -------------------------------
    def audience(self, shard: int, tag: str, value: str) -> str:
        return f"{self.shard_base(shard)}:aud:{tag}:{value}"

    @property
    def audience_pattern(self) -> str:
        """SCAN pattern of every shard's audience sets (``parse_audience`` reads one back)."""
        return f"{self.base}:{{s*}}:aud:*"

    def parse_audience(self, key: str) -> tuple[str, str]:
        """(tag, value) of an audience set's key."""
        tag, _, value = key.partition("}:aud:")[2].partition(":")
        return tag, value

    @property
    def state_pattern(self) -> str:
        """SCAN pattern of every user's state key (``parse_state`` gives the user id back)."""
        return f"{self.base}:{{s*}}:state:*"

    def parse_state(self, key: str) -> str:
        return key.partition("}:state:")[2]

    @property
    def profile_pattern(self) -> str:
        """SCAN pattern of every user's profile key (``parse_profile`` gives the user id back)."""
        return f"{self.base}:{{s*}}:profile:*"

    def parse_profile(self, key: str) -> str:
        return key.partition("}:profile:")[2]

    def due(self, shard: int) -> str:
        return f"{self.shard_base(shard)}:due"

    def inflight(self, shard: int) -> str:
        return f"{self.shard_base(shard)}:due:inflight"

    def rank(self, shard: int, metric: str) -> str:
        return f"{self.shard_base(shard)}:rank:{metric}"

    def outbox(self, shard: int) -> str:
        return f"{self.shard_base(shard)}:outbox"

    def model_examples(self, shard: int) -> str:
        return f"{self.shard_base(shard)}:models:examples"

    def erased(self, shard: int) -> str:
        return f"{self.shard_base(shard)}:privacy:erased"

    def shard_stats(self, shard: int) -> str:
        """Counters of what the shard's scripts applied (summed with ``stats`` by readers)."""
        return f"{self.shard_base(shard)}:stats"

    # -- one per store ({g}) ------------------------------------------------------------
    @property
    def global_base(self) -> str:
        return f"{self.base}:{GLOBAL_TAG}"

    @property
    def rfm_thresholds(self) -> str:
        return f"{self.global_base}:rfm:thresholds"

    @property
    def model_checkpoint(self) -> str:
        return f"{self.global_base}:models:checkpoint"

    @property
    def model_held(self) -> str:
        """Items the trainer read and holds unlearned, checkpointed with the model (zlib-compressed JSON)."""
        return f"{self.global_base}:models:held"

    @property
    def model_meta(self) -> str:
        return f"{self.global_base}:models:meta"

    @property
    def model_trainer(self) -> str:
        return f"{self.global_base}:models:trainer"

    @property
    def due_index(self) -> str:
        """Each shard's earliest due score (member: the shard number): the claims visit the
        shards due by now, and every shard at least every few seconds."""
        return f"{self.global_base}:due:shards"

    @property
    def clock(self) -> str:
        return f"{self.global_base}:clock"

    @property
    def clock_parts(self) -> str:
        return f"{self.global_base}:clock:parts"

    @property
    def clock_timed(self) -> str:
        """Event time up to which the time-driven path has evaluated every user due (event time)."""
        return f"{self.global_base}:clock:timed"

    @property
    def stats(self) -> str:
        """Batch-level counters (messages, dead letters, ...); per-user ones are in ``shard_stats``."""
        return f"{self.global_base}:stats"

    @property
    def trends(self) -> str:
        """Hourly snapshots of audience sizes (read API): hour (epoch s) -> JSON."""
        return f"{self.global_base}:trends:hourly"

    @property
    def epoch(self) -> str:
        """Written once when a store is first used; if it disappears, Redis lost its data."""
        return f"{self.global_base}:meta:epoch"

    @property
    def layout(self) -> str:
        """The store's layout, written with the epoch: ``shards=N`` (every worker adopts it)."""
        return f"{self.global_base}:meta:layout"

    @property
    def catalogue(self) -> str:
        return f"{self.global_base}:meta:tags"

    # -- older layouts ------------------------------------------------------------------
    def previous_epochs(self) -> list[str]:
        """The epoch keys of the older layouts under this prefix (their presence is refused)."""
        return [f"{self.prefix}:{schema}:meta:epoch" for schema in PREVIOUS_SCHEMAS]

    def previous_pattern(self, schema: str) -> str:
        return f"{self.prefix}:{schema}:*"

    def previous_erased(self, schema: str) -> str:
        """The suppression list of an older layout (carried over before it is dropped)."""
        return f"{self.prefix}:{schema}:privacy:erased"
