"""Valkey server settings every embedded Valkey starts with (``portrait_dev.infra`` and
``portrait_dev.valkey_cluster``), the same as deploy/valkey/valkey.conf."""

from __future__ import annotations

# Encoding settings, the same as deploy/valkey/valkey.conf (a unit test compares them; docs/operations.md
# "Redis memory settings"). A user's state hash holds one compressed blob of a few hundred bytes:
# listpack values up to 1 KB keep it compact instead of a hash table (about 290 B less per user). A
# shard's share of an audience set, of the due set and of each RFM rank set holds up to
# population / shards members (about 780 at 100,000 users and 128 shards): listpacks of up to 1,024
# entries keep them compact too (about 500 B less per user; docs/performance.md "Memory").
VALKEY_TUNING = (
    "--hash-max-listpack-value",
    "1024",
    "--set-max-listpack-entries",
    "1024",
    "--zset-max-listpack-entries",
    "1024",
)
