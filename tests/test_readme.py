"""The README is the user's contract: its configuration table and test command must match the code."""

from __future__ import annotations

import re
from pathlib import Path

from schemas.settings import PER_CLASS_FIELDS, Settings

ROOT = Path(__file__).resolve().parent.parent


def test_every_setting_is_documented_and_nothing_else() -> None:
    """One row per variable; a per-class family is one row, ``BRIGADE_CLASS_<NAME>_MODEL``."""
    readme = (ROOT / "README.md").read_text()
    documented = set(re.findall(r"^\| `(BRIGADE_[A-Z0-9_<>]+)` \|", readme, flags=re.MULTILINE))
    fields = {
        f"BRIGADE_CLASS_<NAME>_{PER_CLASS_FIELDS[name]}" if name in PER_CLASS_FIELDS else f"BRIGADE_{name.upper()}"
        for name in Settings.model_fields
    }
    assert documented == fields, (sorted(fields - documented), sorted(documented - fields))


def test_ci_runs_the_readme_test_command() -> None:
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in readme
    assert re.search(r"^make test$", ci, flags=re.MULTILINE)
