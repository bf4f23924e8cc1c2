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


def test_every_lua_file_is_a_named_script_and_package_data() -> None:
    assert {p.stem for p in LUA_FILES} == set(SCRIPT_NAMES)
    globs = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["stream"]
    for path in LUA_FILES:
        relative = path.relative_to(ROOT / "stream").as_posix()
        assert any(fnmatch(relative, g) for g in globs), f"{relative} is not in the wheel's package data"


@pytest.mark.parametrize("name", SCRIPT_NAMES)
def test_scripts_load_through_importlib_resources(name: str) -> None:
    source = script_source(name)
    assert source == (SCRIPTS / f"{name}.lua").read_text()
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


def test_keys_keep_the_v1_names() -> None:
    keys = Keys("P")
    assert keys.state("u1") == "P:v1:{u1}:state"
    assert keys.profile("u1") == "P:v1:{u1}:profile"
    assert keys.alias("anon:7") == "P:v1:{anon:7}:alias"
    assert keys.audience("rfm_segment", "At Risk") == "P:v1:aud:rfm_segment:At Risk"
    assert keys.audience_prefix == "P:v1:aud:"
    assert [keys.due, keys.inflight, keys.clock, keys.clock_parts, keys.stats] == [
        "P:v1:due",
        "P:v1:due:inflight",
        "P:v1:clock",
        "P:v1:clock:parts",
        "P:v1:stats",
    ]
    assert [keys.rank("r"), keys.rfm_thresholds, keys.erased, keys.outbox, keys.model_examples] == [
        "P:v1:rank:r",
        "P:v1:rfm:thresholds",
        "P:v1:privacy:erased",
        "P:v1:outbox",
        "P:v1:models:examples",
    ]


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

    async def use() -> None:
        async with Recording.open(settings) as store:
            assert isinstance(store, Recording) and store.keys == Keys("P")
        with pytest.raises(RuntimeError, match="boom"):
            async with Recording.open(settings) as store:
                raise RuntimeError("boom")

    asyncio.run(use())
    assert len(closed) == 2
