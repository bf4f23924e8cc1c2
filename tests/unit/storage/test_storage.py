"""The storage layer without a server: Lua scripts as package data, keys built only in Python,
and the watermark rule."""

from __future__ import annotations

import asyncio
import re
import tomllib
from fnmatch import fnmatch
from pathlib import Path

import pytest

from stream.settings import Settings
from stream.storage.keys import Keys
from stream.storage.store import (
    CAUGHT,
    SCRIPT_NAMES,
    UNSTARTED,
    Store,
    progress_updates,
    script_source,
    watermark,
)

ROOT = Path(__file__).resolve().parents[3]
SCRIPTS = ROOT / "stream" / "storage" / "scripts"
LUA_FILES = sorted(SCRIPTS.glob("*.lua"))


def test_every_lua_file_is_a_named_script_or_an_included_helper_and_package_data() -> None:
    assert {p.stem for p in LUA_FILES if not p.stem.startswith("_")} == set(SCRIPT_NAMES)
    helpers = {p.stem for p in LUA_FILES if p.stem.startswith("_")}
    included = {line.removeprefix("--#include ") for p in LUA_FILES for line in p.read_text().splitlines()}
    assert helpers and helpers <= included, "a helper no script includes"
    globs = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["stream"]
    for path in LUA_FILES:
        relative = path.relative_to(ROOT / "stream").as_posix()
        assert any(fnmatch(relative, g) for g in globs), f"{relative} is not in the wheel's package data"


@pytest.mark.parametrize("name", SCRIPT_NAMES)
def test_scripts_load_through_importlib_resources(name: str) -> None:
    source = script_source(name)
    text = (SCRIPTS / f"{name}.lua").read_text()
    for helper in re.findall(r"^--#include (\w+)$", text, flags=re.MULTILINE):
        text = text.replace(f"--#include {helper}\n", (SCRIPTS / f"{helper}.lua").read_text())
    assert source == text and not re.search(r"^--#include", source, flags=re.MULTILINE)
    header = "\n".join(line for line in source.splitlines() if line.startswith("--"))
    assert source.startswith(f"-- {name}: ")  # the contract comes first: KEYS (built by keys.py) and ARGV
    assert "KEYS[1]" in header and "ARGV[1]" in header and "stream/storage/keys.py" in header


def _code(source: str) -> str:
    """The Lua code without comments."""
    return "\n".join(line.split("--", 1)[0] for line in source.splitlines())


@pytest.mark.parametrize("path", LUA_FILES, ids=[p.name for p in LUA_FILES])
def test_no_script_builds_a_key(path: Path) -> None:
    """keys.py is the only builder: no key fragment (``':state'``, ``'{'``, ``':aud:'``) in Lua code,
    no key read from ARGV, no prefix passed in."""
    code = _code(path.read_text())
    literals = re.findall(r"'([^']*)'|\"([^\"]*)\"", code)
    fragments = [a or b for a, b in literals if re.search(r"[:{}]", a or b)]
    assert fragments == []
    assert "base" not in code and "sha1hex" not in code


def test_keys_follow_the_v2_layout() -> None:
    """docs/redis-keys.md: shard = first 8 hex digits of SHA-1(id) mod shards (u1 -> c5ea7155 -> 85
    of 128, anon:7 -> e21e4859 -> 89, by sha1sum); every shard key carries {sN}, the rest {g}."""
    keys = Keys("P")
    assert keys.shards == 128 and keys.shard("u1") == 85 and keys.shard("anon:7") == 89
    assert keys.state("u1") == "P:v2:{s85}:state:u1"
    assert keys.profile("u1") == "P:v2:{s85}:profile:u1"
    assert keys.alias("anon:7") == "P:v2:{s89}:alias:anon:7"
    assert keys.audience(3, "rfm_segment", "At Risk") == "P:v2:{s3}:aud:rfm_segment:At Risk"
    assert keys.parse_audience("P:v2:{s3}:aud:rfm_segment:At Risk") == ("rfm_segment", "At Risk")
    assert keys.parse_state("P:v2:{s85}:state:u:with:colons") == "u:with:colons"
    assert [keys.due(0), keys.inflight(0), keys.rank(0, "r"), keys.erased(0), keys.outbox(0)] == [
        "P:v2:{s0}:due",
        "P:v2:{s0}:due:inflight",
        "P:v2:{s0}:rank:r",
        "P:v2:{s0}:privacy:erased",
        "P:v2:{s0}:outbox",
    ]
    assert [keys.model_examples(1), keys.shard_stats(1)] == ["P:v2:{s1}:models:examples", "P:v2:{s1}:stats"]
    assert [keys.clock, keys.clock_parts, keys.stats, keys.rfm_thresholds, keys.epoch, keys.layout] == [
        "P:v2:{g}:clock",
        "P:v2:{g}:clock:parts",
        "P:v2:{g}:stats",
        "P:v2:{g}:rfm:thresholds",
        "P:v2:{g}:meta:epoch",
        "P:v2:{g}:meta:layout",
    ]
    assert keys.previous_epochs() == ["P:v1:meta:epoch"]
    assert Keys("P", shards=1).state("u1") == "P:v2:{s0}:state:u1"


def test_every_key_of_a_shard_is_in_one_cluster_slot() -> None:
    from redis.crc import key_slot

    keys = Keys("P", shards=8)
    shard = keys.shard("u1")
    same = [keys.state("u1"), keys.profile("u1"), keys.alias("u1"), keys.due(shard), keys.audience(shard, "a", "b")]
    assert len({key_slot(k.encode()) for k in same}) == 1
    assert len({key_slot(keys.due(s).encode()) for s in range(8)}) == 8  # shards spread over slots


# -- the watermark rule ----------------------------------------------------------------------


def test_progress_read_to_the_end_is_caught() -> None:
    assert progress_updates({"t/0": "50.000000"}, {"t/0": (60.0, True)}) == {"t/0": CAUGHT}
    assert progress_updates({"t/0": CAUGHT}, {"t/0": (60.0, True)}) == {}  # unchanged: nothing to store


def test_progress_only_moves_an_event_time_forward() -> None:
    assert progress_updates({"t/0": "50.000000"}, {"t/0": (60.5, False)}) == {"t/0": 60.5}
    assert progress_updates({"t/0": "50.000000"}, {"t/0": (40.0, False)}) == {}
    assert progress_updates({"t/0": "50.000000"}, {"t/0": (None, False)}) == {}
    # after "caught", new messages arrived: the applied time counts again, however old
    assert progress_updates({"t/0": CAUGHT}, {"t/0": (40.0, False)}) == {"t/0": 40.0}


def test_progress_of_a_partition_with_nothing_applied_is_unstarted() -> None:
    assert progress_updates({}, {"t/1": (None, False)}) == {"t/1": UNSTARTED}
    assert progress_updates({"t/1": CAUGHT}, {"t/1": (None, False)}) == {"t/1": UNSTARTED}
    assert progress_updates({"t/1": UNSTARTED}, {"t/1": (None, False)}) == {}
    assert progress_updates({}, None) == {}


def test_watermark_is_the_clock_held_back_by_partitions_still_waiting() -> None:
    parts = {b"t/0": b"50.000000", b"t/1": b"caught", b"t/2": b"70.000000"}
    assert watermark(100.0, parts) == 50.0
    assert watermark(40.0, parts) == 40.0
    assert watermark(100.0, parts, {"t/0": (80.0, False)}) == 70.0
    assert watermark(100.0, parts, {"t/0": (None, True), "t/2": (None, True)}) == 100.0
    assert watermark(100.0, parts, {"t/1": (None, False)}) == 0.0
    assert watermark(100.0, {}) == 100.0


def test_store_open_closes_on_exit_and_on_error() -> None:
    closed: list[Store] = []

    class Recording(Store):
        async def close(self) -> None:
            closed.append(self)
            await super().close()

    settings = Settings(redis_url="redis://127.0.0.1:1/0", key_prefix="P")  # never connected

    async def adopt(self: Store) -> int:
        return self.keys.shards

    Recording.adopt_layout = adopt  # type: ignore[method-assign]

    async def use() -> None:
        async with Recording.open(settings) as store:
            assert isinstance(store, Recording) and store.keys == Keys("P")
        with pytest.raises(RuntimeError, match="boom"):
            async with Recording.open(settings) as store:
                raise RuntimeError("boom")

    asyncio.run(use())
    assert len(closed) == 2
