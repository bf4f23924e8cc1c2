"""The stored state: compressed against a fixed dictionary, read back exactly, old JSON still read."""

from __future__ import annotations

import hashlib
from pathlib import Path

import orjson
import zstandard
from portrait_dev import synth

from stream.contracts.events import parse_event
from stream.core.pipeline import PlanContext, plan_write
from stream.tagging.definitions import load_catalogue
from stream.tagging.engine import RfmThresholds, apply_event
from stream.tagging.memory import DeliveryRecord
from stream.tagging.state import (
    BLOB_ZSTD_V2,
    ZDICT_V1_FILE,
    ZDICT_V2_FILE,
    MergedId,
    NpsAnswer,
    Trait,
    UserState,
    _decode_blob,
)

# States in Redis were compressed against these exact files: changing one makes them unreadable.
ZDICT_V1_SHA256 = "6296dd2edf6089023c3ff2d311acb9bce39c46eb1072445d89665acf2ee5a426"
ZDICT_V2_SHA256 = "20eb5b51838e1d5b5b8ada5e1acbaa0763a5f95c11d2ad743a90912b9b69c5ae"
# A state written by the worker before its parts were typed (rule memory, model state and merges
# stored as untyped JSON), after rules and models had run and an anonymous profile was merged in.
GOLDEN_BLOB = Path(__file__).resolve().parents[2] / "data" / "state-blob-v1.bin"


def _states() -> list[UserState]:
    catalogue = load_catalogue()
    states: dict[str, UserState] = {}
    for offset, raw in enumerate(synth.generate(users=50, events=1200, seed=5)):
        event = parse_event(orjson.dumps(raw))
        state = states.setdefault(event.subject_id, UserState())
        apply_event(state, event, "portrait.clickstream/0", offset, catalogue.params)
        context = PlanContext(catalogue=catalogue, thresholds=RfmThresholds(), wall_now=event.epoch)
        plan_write(event.subject_id, 0, state, event.epoch, context)
    return list(states.values())


def test_the_dictionaries_never_change() -> None:
    assert hashlib.sha256(ZDICT_V1_FILE.read_bytes()).hexdigest() == ZDICT_V1_SHA256
    assert hashlib.sha256(ZDICT_V2_FILE.read_bytes()).hexdigest() == ZDICT_V2_SHA256


def _v1_compressor() -> zstandard.ZstdCompressor:
    """How v1 blobs were written: the raw-content v1 dictionary, level 3, no checksum, no dict id."""
    return zstandard.ZstdCompressor(
        level=3,
        dict_data=zstandard.ZstdCompressionDict(ZDICT_V1_FILE.read_bytes(), dict_type=zstandard.DICT_TYPE_RAWCONTENT),
        write_checksum=False,
        write_dict_id=False,
    )


def test_a_v2_state_is_smaller_than_its_v1_form() -> None:
    """The trained v2 dictionary against the raw-content v1 one, on users it was not trained on."""
    v1 = _v1_compressor()
    states = _states()
    old = sum(1 + len(v1.compress(orjson.dumps(s.to_doc()))) for s in states)
    new = sum(len(s.to_bytes()) for s in states)
    assert new * 5 < old * 4, (new, old)
    # each blob is the v2 marker and the doc compressed against the v2 dictionary file
    v2 = zstandard.ZstdDecompressor(dict_data=zstandard.ZstdCompressionDict(ZDICT_V2_FILE.read_bytes()))
    for s in states:
        blob = s.to_bytes()
        assert blob[:1] == b"\x02" and v2.decompress(blob[1:]) == orjson.dumps(s.to_doc())


def test_v1_blobs_are_still_read() -> None:
    v1 = _v1_compressor()
    for state in _states()[:10]:
        assert UserState.from_bytes(b"\x01" + v1.compress(orjson.dumps(state.to_doc()))) == state


def test_round_trip_is_exact_and_small() -> None:
    states = _states()
    for state in states:
        blob = state.to_bytes()
        assert blob[:1] == BLOB_ZSTD_V2
        assert UserState.from_bytes(blob) == state
    plain = sorted(len(orjson.dumps(s.to_doc())) for s in states)
    packed = sorted(len(s.to_bytes()) for s in states)
    assert packed[len(packed) // 2] * 3 < plain[len(plain) // 2], (packed, plain)


def test_plain_json_states_are_still_read() -> None:
    for state in _states()[:10]:
        legacy = orjson.dumps(state.to_doc())  # how states were stored before compression
        assert UserState.from_bytes(legacy) == state


def test_states_from_before_envelopes_keep_recognising_applied_messages() -> None:
    """Such states recorded message offsets, not event positions (offset * 1024 + index): after
    the upgrade a redelivered message must still be seen as applied, and the next one applies."""
    from stream.core.intake import ENVELOPE_MAX
    from stream.tagging.engine import Applied

    catalogue = load_catalogue()
    raw = synth.generate(users=1, events=3, seed=2)
    events = [parse_event(orjson.dumps(e)) for e in raw]
    state = UserState()
    source = "portrait.clickstream/0"
    assert apply_event(state, events[0], source, 41, catalogue.params) is Applied.APPLIED  # old: offsets
    old_doc = state.to_doc()
    del old_doc["pv"]
    upgraded = UserState.from_bytes(orjson.dumps(old_doc))
    redelivered = apply_event(upgraded, events[0], source, 41 * ENVELOPE_MAX, catalogue.params)
    assert redelivered is Applied.REDELIVERED
    assert apply_event(upgraded, events[1], source, 42 * ENVELOPE_MAX, catalogue.params) is Applied.APPLIED
    assert UserState.from_bytes(upgraded.to_bytes()).offsets == {source: 42 * ENVELOPE_MAX}


def test_exposures_are_typed_and_stored_as_before() -> None:
    """Exposures were stored as ``[rule, group, at, until]`` lists: still read, still written so."""
    from stream.tagging.state import Exposure

    state = _states()[0]
    doc = state.to_doc()
    doc["x"] = [["winback", "control", 100.0, 200.0], ["welcome", "treated", 150, 750]]  # as stored before
    loaded = UserState.from_bytes(orjson.dumps(doc))
    assert loaded.exposures == [
        Exposure("winback", "control", 100.0, 200.0),
        Exposure("welcome", "treated", 150.0, 750.0),
    ]
    assert loaded.to_doc()["x"] == [["winback", "control", 100.0, 200.0], ["welcome", "treated", 150.0, 750.0]]
    assert UserState.from_bytes(loaded.to_bytes()) == loaded


def test_a_state_written_before_the_typed_parts_reads_into_them_and_writes_back_unchanged() -> None:
    blob = GOLDEN_BLOB.read_bytes()
    state = UserState.from_bytes(blob)
    assert state.delivery.last_fired == {"cart_abandoned_coupon": 1793375139.0}
    assert state.delivery.sent == {"2026-10-30": {"push": 1}}
    assert state.delivery.recent[-1] == DeliveryRecord(
        at=1793375139.0,
        rule_id="care_after_complaint",
        rule_version=1,
        trigger_id="a0d8db74-69bf-593c-9778-3ce441a0a97d",
        channel="sms",
        outcome="suppressed",
        reason="quiet_hours",
    )
    assert [r.outcome for r in state.delivery.recent] == ["send", "send", "suppressed"]
    assert state.models is not None and state.models.segment is None
    assert state.models.segment_ts == 1793375139.0 and state.models.last_snapshot_ts == 1791164998.0
    assert [p.ts for p in state.models.pending] == [1791164998.0]  # the one pending example of old states
    assert state.models.pending[0].features["events_30d"] == 0.6931471805599453
    assert state.rule_baseline is not None and state.rule_baseline.tracked_hash == "d1ff2623"
    assert state.rule_baseline.values["rfm_segment"] == "Prospects"
    assert state.merged == [MergedId("anon:dev-1", 1767225600.0)]
    assert state.traits["region"] == Trait("in", 1787916351.0, "e00000701")
    assert state.nps == NpsAnswer(2, 1793375139.0, "e00002884")
    # the same JSON layout on the wire, plus the lifecycle memory derived from the daily tiles
    old = orjson.loads(_decode_blob(blob))
    new = orjson.loads(_decode_blob(state.to_bytes()))
    assert {k: v for k, v in new.items() if k != "lt"} == old and "lt" not in old
    order_tiles = {int(d): t for d, t in old["t"].items() if t[5]}
    assert state.lifetime.orders == sum(t[5] for t in order_tiles.values())
    assert state.lifetime.cents == sum(t[6] for t in order_tiles.values())
    if order_tiles:
        assert state.lifetime.first_order == min(order_tiles) * 86400
    assert UserState.from_bytes(state.to_bytes()) == state


def test_an_empty_state_keeps_the_empty_parts_it_always_had() -> None:
    doc = UserState().to_doc()
    assert (doc["dm"], doc["m"], doc["mg"], doc["rp"], doc["rh"]) == ({}, {}, [], None, None)
    assert UserState.from_bytes(orjson.dumps(doc)) == UserState()
