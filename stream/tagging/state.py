"""Per-user state: daily tiles plus a few order-independent scalars, serialised compactly.

Everything here is commutative (sums, max/min, latest-by-timestamp) so the state reached does
not depend on the order in which a user's events arrive across topics. Exactly-once application
comes from ``offsets`` (the last applied event position per source topic-partition, see
``POSITIONS_PER_OFFSET``) and a short ring of recent event ids for producer duplicates. What
the rules and the models remember per user are typed parts of it (``stream.tagging.memory``).

Stored form (``to_bytes``): ``0x02`` + a zstd frame of the JSON document, compressed against a
fixed dictionary trained on typical states (``state-zdict-v2.bin``, built by ``portrait_dev.zdict``):
a 3.2 KB state becomes about 475 B. ``from_bytes`` also reads ``0x01`` blobs (the first,
raw-content dictionary ``state-zdict-v1.bin``) and plain JSON (states written before
compression). A dictionary file must never change: a new one gets a new version byte and file,
and the old ones stay to read old states. The JSON layout is the one states have always had (a
typed part is written as the document it always was), so states written before the typed parts
read back as they were. The lifecycle memory (``lt``) is a typed part like the others; a state
without it derives it from its daily tiles (``stream.tagging.lifecycle.derive``). A worker from
before v2 cannot read v2 blobs: roll workers forward, not back.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import orjson
import zstandard

from stream.tagging.lifecycle import Lifetime, derive
from stream.tagging.memory import DeliveryMemory, UserModelState

# Daily tile counter slots.
EVENTS, PAGE_VIEWS, SEARCHES, CART_ADDS, CHECKOUTS = 0, 1, 2, 3, 4
ORDERS, ORDER_CENTS, REFUNDS, REFUND_CENTS = 5, 6, 7, 8
RATING_SUM, RATING_COUNT, COMPLAINTS, FEEDBACKS = 9, 10, 11, 12
TILE_WIDTH = 13

DAY = 86400

# Applied "offsets" are event positions: message offset * POSITIONS_PER_OFFSET + index in a batch
# envelope. States from before envelopes ("pv" absent) recorded plain offsets; reading one scales
# them so an in-flight redelivery after the upgrade is still recognised as applied.
POSITIONS_PER_OFFSET = 1024
POSITION_VERSION = 1

BLOB_ZSTD_V1 = b"\x01"
ZDICT_V1_FILE = Path(__file__).with_name("state-zdict-v1.bin")
_ZDICT_V1 = zstandard.ZstdCompressionDict(ZDICT_V1_FILE.read_bytes(), dict_type=zstandard.DICT_TYPE_RAWCONTENT)
_DECOMPRESSOR_V1 = zstandard.ZstdDecompressor(dict_data=_ZDICT_V1)
# v2 (written): a 32 KB dictionary trained by zstd on the worker's states of seed-101 synthetic
# users (portrait_dev.zdict), lifecycle memory included: ~475 B for a state v1 packs into ~710 B.
BLOB_ZSTD_V2 = b"\x02"
ZDICT_V2_FILE = Path(__file__).with_name("state-zdict-v2.bin")
_ZDICT_V2 = zstandard.ZstdCompressionDict(ZDICT_V2_FILE.read_bytes())
_ZDICT_V2.precompute_compress(level=3)
# level 3: ~30 µs per state (level 6: ~100 µs for 4 % less)
_COMPRESSOR = zstandard.ZstdCompressor(level=3, dict_data=_ZDICT_V2, write_checksum=False, write_dict_id=False)
_DECOMPRESSOR_V2 = zstandard.ZstdDecompressor(dict_data=_ZDICT_V2)


@dataclass(frozen=True)
class Exposure:
    """An open exposure of the user to a rule firing, for uplift (see ``stream.rules.effect``):
    ``group`` is ``treated`` (sent) or ``control`` (held out); an order at ``t`` with
    ``at <= t < until`` converts it. Stored as the list ``[rule, group, at, until]``."""

    rule: str
    group: str
    at: float
    until: float

    def to_json(self) -> list[Any]:
        return [self.rule, self.group, self.at, self.until]

    @classmethod
    def from_json(cls, item: list[Any]) -> Exposure:
        rule, group, at, until = item
        return cls(str(rule), str(group), float(at), float(until))


class Trait(NamedTuple):
    """The latest value of an identify trait (latest by event time, then event id)."""

    value: str
    ts: float
    event_id: str


class NpsAnswer(NamedTuple):
    """The latest NPS answer (latest by event time, then event id)."""

    score: int
    ts: float
    event_id: str


class MergedId(NamedTuple):
    """An anonymous profile folded into this user, and the event time of the link."""

    subject: str
    at: float


@dataclass(slots=True)
class RuleBaseline:
    """Values of the rule-referenced tags at the last evaluation (what rules compare against),
    and which tracked-tag set they were recorded for (``None`` in states from before the hash)."""

    values: dict[str, str]
    tracked_hash: str | None


@dataclass
class UserState:
    """Exact aggregate state of one user. ``tiles[day]`` holds counters for one UTC day."""

    tiles: dict[int, list[int]] = field(default_factory=dict)
    hours: dict[int, dict[int, int]] = field(default_factory=dict)  # day -> UTC hour -> activity
    first_seen: float | None = None
    last_seen: float | None = None
    last_activity: float | None = None
    last_order: float | None = None
    last_cart_add: float | None = None
    interest: dict[str, float] = field(default_factory=dict)  # category -> anchored score
    traits: dict[str, Trait] = field(default_factory=dict)
    nps: NpsAnswer | None = None
    offsets: dict[str, int] = field(default_factory=dict)  # "topic/partition" -> last offset
    recent_ids: list[str] = field(default_factory=list)
    published: dict[str, str] = field(default_factory=dict)  # audience tag values last written
    evaluated_at: float | None = None  # the `now` of the last evaluation (monotonic per user)
    due_at: float | None = None  # when the last evaluation said tags change next without an event
    rule_baseline: RuleBaseline | None = None  # None: rules never evaluated for this user
    delivery: DeliveryMemory = field(default_factory=DeliveryMemory)
    exposures: list[Exposure] = field(default_factory=list)  # open exposures, for uplift
    order_seen: float | None = None  # last order already checked against exposures
    models: UserModelState | None = None  # None: no model step yet
    merged: list[MergedId] = field(default_factory=list)
    lifetime: Lifetime = field(default_factory=Lifetime)  # long-horizon memory (stream.tagging.lifecycle)

    def tile(self, day: int) -> list[int]:
        tile = self.tiles.get(day)
        if tile is None:
            tile = self.tiles[day] = [0] * TILE_WIDTH
        return tile

    def to_bytes(self) -> bytes:
        """The stored form: compressed JSON (see the module docstring)."""
        return BLOB_ZSTD_V2 + _COMPRESSOR.compress(orjson.dumps(self.to_doc()))

    def to_doc(self) -> dict[str, Any]:
        """The state as a JSON document (short keys, as stored; layout in docs/redis-keys.md)."""
        baseline = self.rule_baseline
        return {
            "t": {str(d): t for d, t in self.tiles.items()},
            "h": {str(d): {str(h): n for h, n in hs.items()} for d, hs in self.hours.items()},
            "fs": self.first_seen,
            "ls": self.last_seen,
            "la": self.last_activity,
            "lo": self.last_order,
            "lc": self.last_cart_add,
            "i": self.interest,
            "tr": {name: list(trait) for name, trait in self.traits.items()},
            "n": list(self.nps) if self.nps is not None else None,
            "o": self.offsets,
            "r": self.recent_ids,
            "p": self.published,
            "e": self.evaluated_at,
            "d": self.due_at,
            "rp": baseline.values if baseline is not None else None,
            "rh": baseline.tracked_hash if baseline is not None else None,
            "dm": self.delivery.to_doc(),
            "x": [e.to_json() for e in self.exposures],
            "os": self.order_seen,
            "m": self.models.to_doc() if self.models is not None else {},
            "mg": [list(m) for m in self.merged],
            "pv": POSITION_VERSION,
            "lt": self.lifetime.to_doc(),
        }

    @classmethod
    def from_bytes(cls, raw: bytes | str) -> UserState:
        doc = orjson.loads(_decode_blob(raw))
        baseline, models = doc.get("rp"), doc.get("m")
        tiles = {int(d): t for d, t in doc["t"].items()}
        return cls(
            tiles=tiles,
            hours={int(d): {int(h): n for h, n in hs.items()} for d, hs in doc["h"].items()},
            first_seen=doc["fs"],
            last_seen=doc["ls"],
            last_activity=doc["la"],
            last_order=doc["lo"],
            last_cart_add=doc["lc"],
            interest=doc["i"],
            traits={k: Trait(*v) for k, v in doc["tr"].items()},
            nps=NpsAnswer(*doc["n"]) if doc["n"] else None,
            offsets=doc["o"] if doc.get("pv") == POSITION_VERSION else _positions(doc["o"]),
            recent_ids=doc["r"],
            published=doc["p"],
            evaluated_at=doc.get("e"),
            due_at=doc.get("d"),
            rule_baseline=RuleBaseline(baseline, doc.get("rh")) if baseline is not None else None,
            delivery=DeliveryMemory.from_doc(doc.get("dm")),
            exposures=[Exposure.from_json(e) for e in doc.get("x") or []],
            order_seen=doc.get("os"),
            models=UserModelState.from_doc(models) if models else None,
            merged=[MergedId(*m) for m in doc.get("mg") or ()],
            lifetime=_lifetime(doc, tiles),
        )


def _lifetime(doc: dict[str, Any], tiles: dict[int, list[int]]) -> Lifetime:
    """The stored lifecycle memory: ``lt`` absent (a state written before lifecycle memory) is
    derived from the daily tiles; ``null`` (nothing to keep yet) is an empty one."""
    if "lt" not in doc:
        return derive(tiles, EVENTS, ORDERS, ORDER_CENTS, doc["lo"], doc["fs"])
    return Lifetime.from_doc(doc["lt"]) if doc["lt"] else Lifetime()


def _positions(offsets: dict[str, int]) -> dict[str, int]:
    """Plain message offsets (states written before batch envelopes) as event positions: every
    position of an applied message counts as applied."""
    return {source: offset * POSITIONS_PER_OFFSET + POSITIONS_PER_OFFSET - 1 for source, offset in offsets.items()}


def _decode_blob(raw: bytes | str) -> bytes | str:
    """The JSON document of a stored state: decompressed, or as is when stored as plain JSON."""
    if isinstance(raw, bytes):
        version = raw[:1]
        if version == BLOB_ZSTD_V2:
            return _DECOMPRESSOR_V2.decompress(raw[1:])
        if version == BLOB_ZSTD_V1:
            return _DECOMPRESSOR_V1.decompress(raw[1:])
    return raw
