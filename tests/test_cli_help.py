"""``brigade --help`` and every command's help, as a person reads them."""

from __future__ import annotations

from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from brigade.cli import app


def command_paths(command: Any, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every command and group under ``command`` (a group has ``commands``; Typer vendors its own click)."""
    paths = [prefix]
    for name, sub in getattr(command, "commands", {}).items():
        paths += command_paths(sub, (*prefix, name))
    return paths


@pytest.mark.parametrize("path", command_paths(typer.main.get_command(app)), ids=lambda p: " ".join(p) or "brigade")
def test_help_shows_no_type_beside_a_flag(path: tuple[str, ...]) -> None:
    """Typer 0.29 printed ``--help <bool>`` (pyproject excludes it): a flag takes no value, so none is shown."""
    result = CliRunner().invoke(app, [*path, "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "Show this message and exit." in result.output
    assert "<bool>" not in result.output, result.output
