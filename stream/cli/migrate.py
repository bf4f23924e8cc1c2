"""``portrait migrate``: what layout a Redis holds for this prefix, and dropping an older one.

Layout v2 (state shards, docs/redis-keys.md) is rebuilt by a replay, not converted: a store of
layout v1 under the prefix is refused at start; ``portrait migrate --drop-v1 --yes`` deletes its
keys, and the retained topics (or an export, ``portrait replay FILE``) are replayed into v2.
"""

from __future__ import annotations

from typing import Annotated

import typer

from stream.cli.common import JsonOption, UserError, echo, print_json, redis_errors, run, settings_of
from stream.storage.store import Store


async def _layouts(store: Store, drop: bool) -> tuple[dict[str, int], int]:
    try:
        found = await store.previous_layouts()
        return found, await store.drop_previous() if drop and found else 0
    finally:
        await store.close()


def migrate(
    ctx: typer.Context,
    drop_v1: Annotated[bool, typer.Option("--drop-v1", help="Delete the v1 keys of this prefix.")] = False,
    yes: Annotated[bool, typer.Option("--yes", help="Confirm --drop-v1.")] = False,
    json: JsonOption = False,
) -> None:
    """Show the older store layouts under this prefix (v2 is rebuilt by a replay:
    docs/redis-keys.md 'From v1'); --drop-v1 --yes deletes them."""
    settings = settings_of(ctx)
    if drop_v1 and not yes:
        raise UserError("--drop-v1 deletes every v1 key of the prefix: add --yes to confirm")
    with redis_errors(settings):
        older, dropped = run(_layouts(Store.from_settings(settings), drop_v1))
    if json:
        print_json({"prefix": settings.key_prefix, "older_layouts": older, "dropped_keys": dropped})
        return
    if not older:
        echo(f"prefix {settings.key_prefix!r}: no older layout; nothing to migrate")
    elif drop_v1:
        echo(f"prefix {settings.key_prefix!r}: deleted {dropped} keys of {', '.join(older)}; now replay")
    else:
        counts = ", ".join(f"{schema}: {n} keys" for schema, n in older.items())
        echo(f"prefix {settings.key_prefix!r} holds {counts}; v2 is rebuilt by a replay (docs/redis-keys.md)")


def register(app: typer.Typer) -> None:
    app.command()(migrate)
