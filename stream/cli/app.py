"""The root ``portrait`` command: global options, the command areas, plugins and error handling.

Every user error (a bad argument or setting, a missing file, an unreachable broker or Redis) is
one line on stderr and exit code 2; ``--debug`` adds the traceback. A closed pipe (``portrait
profile u1 | head -3``) ends the command quietly (exit code 1). Development commands (``infra``, ``bench``,
``demo``) come from the ``portrait.commands`` entry points of the portrait-dev distribution: each
names a callable that takes the root ``typer.Typer`` and adds its commands to it.
"""

import os
import sys
import traceback
from collections.abc import Sequence
from contextlib import suppress
from importlib.metadata import entry_points
from pathlib import Path
from typing import Annotated

import typer

from stream import __version__
from stream.cli import api, kafka, migrate, models, operations, privacy, profiles, rules, schemas, trainer
from stream.cli.common import CliState, UserError, quiet_clients
from stream.settings import ConfigError

PLUGIN_GROUP = "portrait.commands"
USAGE_EXIT = 2


def _show_version(value: bool) -> None:
    if value:
        typer.echo(f"portrait {__version__}")
        raise typer.Exit()


def _root(
    ctx: typer.Context,
    version: Annotated[
        bool,
        typer.Option("--version", callback=_show_version, is_eager=True, help="Print the version and exit."),
    ] = False,
    debug: Annotated[
        bool, typer.Option("--debug", help="On errors, show the traceback and the clients' logs.")
    ] = False,
    state_file: Annotated[
        Path | None,
        typer.Option(
            "--state-file",
            dir_okay=False,
            help="Infra state file of `portrait infra up` (default: PORTRAIT_STATE_FILE, a .portrait/infra.json "
            "in this folder or above, else the per-user state directory).",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Real-time user portraits: behaviour tags from Kafka events, kept in Redis."""
    ctx.obj = CliState(state_file=state_file)
    if not debug and ctx.invoked_subcommand not in ("worker", "trainer"):
        # the Kafka/Redis clients log every failed connection attempt; the user gets one line instead
        ctx.with_resource(quiet_clients())


def build_app() -> typer.Typer:
    """The root app with every product command and the installed plugins' commands."""
    app = typer.Typer(
        name="portrait",
        help="Real-time user portraits: behaviour tags from Kafka events, kept in Redis.",
        no_args_is_help=True,
        pretty_exceptions_enable=False,
        context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
    )
    app.callback()(_root)
    for area in (profiles, operations, kafka, rules, models, privacy, schemas, api, trainer, migrate):
        area.register(app)
    for plugin in entry_points(group=PLUGIN_GROUP):
        plugin.load()(app)
    return app


def _one_line(text: str) -> str:
    return " ".join(part.strip() for part in text.strip().splitlines() if part.strip())


def _fail(message: str, debug: bool, code: int = USAGE_EXIT, *, per_line: bool = False) -> int:
    """``error: ...`` on stderr: one line, or one line per problem (``per_line``, e.g. a rules file
    with several mistakes, each line naming file, item and field)."""
    if debug:
        traceback.print_exc()
    lines = [line.strip() for line in message.splitlines() if line.strip()] if per_line else [_one_line(message)]
    sys.stderr.write("".join(f"error: {line}\n" for line in lines or ["?"]))
    return code


def _closed_pipe() -> int:
    """The reader went away (``| head``): stop writing, with no traceback and no second error at exit.

    Exit code 1, as Typer's parser (Click) gives when the pipe closes while it writes.
    """
    with suppress(OSError):
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 1


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``portrait`` with ``argv`` (default: the process arguments) and return the exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    command = typer.main.get_command(build_app())
    try:
        result = command.main(args=args, prog_name="portrait", standalone_mode=False)
        sys.stdout.flush()
    except BrokenPipeError:
        return _closed_pipe()
    except typer.TyperException as exc:  # the argument parser's errors (Typer's own copy of Click)
        ctx = getattr(exc, "ctx", None)
        if type(exc).__name__ == "NoArgsIsHelpError" and ctx is not None:
            typer.echo(ctx.get_help())
            return USAGE_EXIT
        path = ctx.command_path if ctx is not None else "portrait"
        return _fail(f"{path}: {exc.format_message()} (see '{path} --help')", debug)
    except typer.Abort:
        sys.stderr.write("aborted\n")
        return 130
    except KeyboardInterrupt:
        return 130
    except (UserError, ConfigError) as exc:
        return _fail(str(exc), debug, per_line=True)
    except OSError as exc:
        if exc.filename is not None:
            return _fail(f"{exc.filename}: {exc.strerror or exc}", debug)
        return _fail(f"internal error: {type(exc).__name__}: {exc} (rerun with --debug for the traceback)", debug, 1)
    except Exception as exc:
        return _fail(f"internal error: {type(exc).__name__}: {exc} (rerun with --debug for the traceback)", debug, 1)
    if isinstance(result, int):
        return result
    return 0
