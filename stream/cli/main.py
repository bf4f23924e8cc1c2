"""Entry point of the ``portrait`` command (``[project.scripts]`` in pyproject.toml).

The commands live in one module per area (profiles, operations, kafka, rules, models, privacy,
schemas) and the root app in ``stream.cli.app``.
"""

from stream.cli.app import build_app, main
from stream.cli.profiles import format_profile

__all__ = ["build_app", "format_profile", "main"]
