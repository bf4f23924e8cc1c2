"""When ``portrait demo`` keeps the dashboard up: ``--serve``/``--no-serve`` win; by default only
in a terminal and never under CI (so CI and the demo test never wait for Ctrl-C)."""

from __future__ import annotations

import io

import pytest
from portrait_dev.demo import should_serve


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize(
    ("ci", "tty", "flag", "serves"),
    [
        (None, True, None, True),  # a developer's terminal
        (None, False, None, False),  # piped or captured (pytest)
        ("true", True, None, False),  # CI, even with a terminal
        ("1", True, None, False),
        ("false", True, None, True),
        ("true", True, True, True),  # --serve wins
        (None, True, False, False),  # --no-serve wins
    ],
)
def test_serve_by_default_only_in_a_terminal_outside_ci(
    monkeypatch: pytest.MonkeyPatch, ci: str | None, tty: bool, flag: bool | None, serves: bool
) -> None:
    if ci is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", ci)
    monkeypatch.setattr("sys.stdin", Tty() if tty else io.StringIO())
    monkeypatch.setattr("sys.stdout", Tty() if tty else io.StringIO())
    assert should_serve(flag) is serves
