"""``portrait api``: the read API and the dashboard, in their own process (stream/api, docs/api.md)."""

from typing import Annotated

import typer

from stream.cli.common import UserError, run, settings_of, with_store


def api(
    ctx: typer.Context,
    host: Annotated[
        str | None, typer.Option(help="Bind address (default PORTRAIT_API_HOST, 127.0.0.1).", show_default=False)
    ] = None,
    port: Annotated[
        int | None,
        typer.Option(min=1, max=65535, help="TCP port (default PORTRAIT_API_PORT, 6067).", show_default=False),
    ] = None,
) -> None:
    """Serve the read API (OpenAPI at /docs) and the dashboard until Ctrl-C or SIGTERM.

    Binds to loopback unless told otherwise; another address needs PORTRAIT_API_TOKEN (a bearer token).
    """
    import uvicorn

    from stream.api.app import check_exposure, create_app

    settings = settings_of(ctx)
    updates = {k: v for k, v in (("api_host", host), ("api_port", port)) if v is not None}
    if updates:
        settings = settings.model_copy(update=updates)
    check_exposure(settings)
    run(with_store(settings, lambda store: store.client.ping()))  # unreachable Redis: one line
    app = create_app(settings)
    try:
        uvicorn.run(app, host=settings.api_host, port=settings.api_port, log_level=settings.log_level)
    except SystemExit as exc:  # uvicorn exits when it cannot bind
        raise UserError(f"cannot serve on {settings.api_host}:{settings.api_port} (port in use?)") from exc


def register(app: typer.Typer) -> None:
    app.command()(api)
