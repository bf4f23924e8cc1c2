"""Build the zstd dictionary the state blob is compressed against (``stream/tagging/state.py``).

The dictionary is trained (zstd's COVER trainer) on the state documents the worker stores for
synthetic users: the offline driver (``stream.offline.driver``, the worker's processor in event
time with the default rules and models) replays them into a scratch namespace of an embedded
Valkey and the stored states are read back. A shipped dictionary never changes (states in Redis
were compressed against it); a new one gets a new version byte and file next to the old ones:

    python -m portrait_dev.zdict stream/tagging/state-zdict-v2.bin --users 1000 --seed 101

Seed 101 is not the bench's (seed 7), so the memory scenario measures users the dictionary has not
seen.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
from pathlib import Path
from typing import Any

import orjson
import zstandard

from portrait_dev import infra, synth


def state_documents(users: int, seed: int) -> list[bytes]:
    """The JSON documents of the states the worker stores for ``users`` synthetic users."""
    from portrait_dev.harness import worker_definitions
    from stream.offline.driver import drive
    from stream.settings import Settings
    from stream.tagging.state import UserState

    work = Path(tempfile.mkdtemp(prefix="portrait-zdict-"))
    proc, url = infra.start_valkey(work / "valkey", work / "valkey.log")
    docs: list[bytes] = []
    try:
        settings = Settings(redis_url=url, key_prefix="zdict", clock="event", state_file=work / "none.json")
        catalogue, rules, models = worker_definitions(settings)

        async def collect(store: Any) -> None:
            async for key in store.client.scan_iter(match=store.keys.state_pattern, count=1000):
                blob = await store.client.hget(key, "blob")
                if blob:
                    docs.append(orjson.dumps(UserState.from_bytes(blob).to_doc()))

        events = synth.generate(users=users, events=users * 25, seed=seed)
        asyncio.run(drive(settings, events, catalogue=catalogue, rules=rules, models=models, inspect=collect))
    finally:
        proc.stop()
    return sorted(docs)


def build(users: int, seed: int, size: int) -> bytes:
    """A trained dictionary of ``size`` bytes (deterministic for the same inputs)."""
    samples: list[bytes | bytearray | memoryview[int]] = [*state_documents(users, seed)]
    trained = zstandard.train_dictionary(size, samples, level=3, threads=0)
    return trained.as_bytes()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=101)
    parser.add_argument("--size", type=int, default=32768)
    args = parser.parse_args()
    if args.out.exists():
        raise SystemExit(f"{args.out} exists: a shipped dictionary never changes (use a new version)")
    args.out.write_bytes(build(args.users, args.seed, args.size))
    print(f"wrote {args.out} ({args.out.stat().st_size:,} bytes)")


if __name__ == "__main__":
    main()
