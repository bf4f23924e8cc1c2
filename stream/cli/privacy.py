"""``portrait privacy erase|export``: a data subject's rights, on Redis and the confirmation topic."""

from typing import Annotated, Any

import typer

from stream.cli.common import echo, kafka_errors, print_json, redis_errors, run, settings_of, when, with_store

privacy_app = typer.Typer(help="Erase a user everywhere, or export what is stored about them.", no_args_is_help=True)

UserId = Annotated[str, typer.Argument(help="The user id.")]


@privacy_app.command("erase")
def erase(
    ctx: typer.Context,
    user_id: UserId,
    request_id: Annotated[
        str | None, typer.Option(help="Id echoed in the confirmation event (default: a random one).")
    ] = None,
    json: Annotated[bool, typer.Option("--json", help="Print the confirmation event as JSON.")] = False,
) -> None:
    """Erase a user's state, profile and memberships, add them to the suppression list, publish a confirmation."""
    from stream.service import privacy

    settings = settings_of(ctx)
    with redis_errors(settings), kafka_errors(settings):
        confirmation = run(privacy.erase_and_confirm(settings, user_id, request_id))
    if json:
        print_json(confirmation.model_dump(mode="json"))
        return
    removed = len(confirmation.removed)
    echo(
        f"erased {user_id} at {when(confirmation.erased_at)}: {removed} key{'' if removed == 1 else 's'} and "
        f"memberships removed{' (already erased)' if not removed else ''}"
    )
    echo(f"  request {confirmation.request_id}, suppression token {confirmation.suppression_token}")


@privacy_app.command("export")
def export(ctx: typer.Context, user_id: UserId) -> None:
    """Print everything stored about a user as one JSON document (profile, state, memberships...).

    The profile's values are typed as in `portrait profile --json`.
    """
    from stream.service import privacy
    from stream.tagging.definitions import load_catalogue
    from stream.tagging.profile import type_profile

    settings = settings_of(ctx)

    async def go(store: Any) -> dict[str, Any]:
        return await privacy.export(store, user_id)

    doc = run(with_store(settings, go))
    if isinstance(doc.get("profile"), dict):
        doc["profile"] = type_profile(doc["profile"], load_catalogue(settings.tags_file))
    print_json(doc)


def register(app: typer.Typer) -> None:
    app.add_typer(privacy_app, name="privacy")
