"""``portrait schemas``: the JSON Schemas of the wire models, for producers and consumers."""

from pathlib import Path
from typing import Annotated

import typer

from stream.cli.common import echo


def schemas(
    out: Annotated[Path, typer.Option(file_okay=False, help="Folder to write the *.schema.json files into.")] = Path(
        "docs/schemas"
    ),
) -> None:
    """Write the JSON Schemas of the events, dead letters, triggers and privacy messages."""
    from stream.contracts.schemas import write_schemas

    for path in write_schemas(out):
        echo(str(path))


def register(app: typer.Typer) -> None:
    app.command()(schemas)
