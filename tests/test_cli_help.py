"""``brigade --help`` and every command's help, as a person reads them."""

from __future__ import annotations

import os
import subprocess
import sys
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


def test_a_closed_pipe_ends_a_command_quietly() -> None:
    """``brigade schema | head`` with the reader gone before the first write: no traceback, a failing status."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        done = subprocess.run(
            [sys.executable, "-m", "brigade", "schema"], stdout=write_end, stderr=subprocess.PIPE, timeout=60
        )
    finally:
        os.close(write_end)
    assert done.returncode == 1 and done.stderr == b"", done.stderr.decode(errors="replace")
