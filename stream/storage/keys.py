"""The Redis key contract (see docs/redis-keys.md). The one place that builds key names.

Nothing else formats a key: the Lua scripts (``stream/storage/scripts/*.lua``) receive every key
they touch, built here, in ``KEYS``. Per-user keys share the hash tag ``{user_id}`` so they land in
one Redis Cluster slot.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

SCHEMA = "v1"


@dataclass(frozen=True)
class Keys:
    prefix: str = "portrait"

    @property
    def base(self) -> str:
        return f"{self.prefix}:{SCHEMA}"

    def state(self, uid: str) -> str:
        return f"{self.base}:{{{uid}}}:state"

    def profile(self, uid: str) -> str:
        return f"{self.base}:{{{uid}}}:profile"

    def alias(self, subject: str) -> str:
        """Where a merged anonymous subject (``anon:<id>``) points: the known user id."""
        return f"{self.base}:{{{subject}}}:alias"

    def user_pattern(self, uid: str) -> str:
        return f"{self.base}:{{{uid}}}:*"

    @property
    def audience_prefix(self) -> str:
        """What every audience set's key starts with (``audience`` appends ``TAG:VALUE``)."""
        return f"{self.base}:aud:"

    def audience(self, tag: str, value: str) -> str:
        return f"{self.audience_prefix}{tag}:{value}"

    @property
    def due(self) -> str:
        return f"{self.base}:due"

    @property
    def inflight(self) -> str:
        return f"{self.base}:due:inflight"

    def rank(self, metric: str) -> str:
        return f"{self.base}:rank:{metric}"

    @property
    def rfm_thresholds(self) -> str:
        return f"{self.base}:rfm:thresholds"

    @property
    def outbox(self) -> str:
        return f"{self.base}:outbox"

    @property
    def model_examples(self) -> str:
        return f"{self.base}:models:examples"

    @property
    def model_checkpoint(self) -> str:
        return f"{self.base}:models:checkpoint"

    @property
    def model_meta(self) -> str:
        return f"{self.base}:models:meta"

    @property
    def model_trainer(self) -> str:
        return f"{self.base}:models:trainer"

    @property
    def clock(self) -> str:
        return f"{self.base}:clock"

    @property
    def erased(self) -> str:
        return f"{self.base}:privacy:erased"

    @property
    def clock_parts(self) -> str:
        return f"{self.base}:clock:parts"

    @property
    def stats(self) -> str:
        return f"{self.base}:stats"

    @property
    def trends(self) -> str:
        """Hourly snapshots of audience sizes (read API): hour (epoch s) -> JSON."""
        return f"{self.base}:trends:hourly"

    @property
    def epoch(self) -> str:
        """Written once when a store is first used; if it disappears, Redis lost its data."""
        return f"{self.base}:meta:epoch"

    @property
    def catalogue(self) -> str:
        return f"{self.base}:meta:tags"


def erased_token(uid: str) -> str:
    """How an erased id is remembered on the suppression list: a hash (SHA-1 hex), not the id itself.
    The scripts receive the tokens they need; none computes one."""
    return hashlib.sha1(uid.encode()).hexdigest()
