"""BRIGADE_* variables: one typed object, errors that name the variable."""

from __future__ import annotations

import subprocess
import sys

import pytest
from pydantic import ValidationError

from schemas.settings import Settings


def test_defaults_route_three_classes() -> None:
    s = Settings(_env_file=None)
    assert [c.name for c in s.cost_classes] == ["small", "medium", "large"]
    assert s.cost_class("large").max_cost == float("inf")


def test_comma_lists_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BRIGADE_CLASSES", "fast,slow")
    monkeypatch.setenv("BRIGADE_CLASS_MAX_COST", "100")
    monkeypatch.setenv("BRIGADE_CLASS_PARTITIONS", "3, 2")
    monkeypatch.setenv("BRIGADE_CLASS_MAX_LAG", "10,5")
    monkeypatch.setenv("BRIGADE_WORKER_CLASS", "slow")
    s = Settings()
    assert [(c.name, c.partitions, c.max_lag) for c in s.cost_classes] == [("fast", 3, 10), ("slow", 2, 5)]


def test_mismatched_lists_name_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BRIGADE_CLASS_PARTITIONS", "3,3")
    with pytest.raises(ValidationError, match="BRIGADE_CLASS_PARTITIONS has 2 comma-separated values"):
        Settings()


def test_unknown_worker_class(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BRIGADE_WORKER_CLASS", "huge")
    with pytest.raises(ValidationError, match="BRIGADE_WORKER_CLASS='huge' is not in BRIGADE_CLASSES"):
        Settings()


def test_cli_reports_bad_variable_without_traceback() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "brigade", "schema"],
        env={"BRIGADE_MAX_BATCH_SIZE": "0", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    # `schema` does not need settings; a command that does must fail cleanly.
    assert proc.returncode == 0, proc.stderr
    proc = subprocess.run(
        [sys.executable, "-m", "brigade", "topics", "create"],
        env={"BRIGADE_MAX_BATCH_SIZE": "0", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2
    assert "BRIGADE_MAX_BATCH_SIZE" in proc.stderr and "Traceback" not in proc.stderr


def test_to_env_reads_back_to_the_same_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """Child processes (``brigade reliability``, the fault tests) get their configuration this way."""
    s = Settings(
        _env_file=None,
        classes=("fast", "slow"),
        class_max_cost=(100,),
        class_partitions=(3, 2),
        class_max_lag=(10, 5),
        worker_class="slow",
        kafka_idempotence=False,
        drain_timeout_s=2.5,
        kafka_session_timeout_ms=6000,
    )
    env = s.to_env()
    assert env["BRIGADE_CLASS_PARTITIONS"] == "3,2" and env["BRIGADE_KAFKA_IDEMPOTENCE"] == "false"
    assert "BRIGADE_KAFKA_SASL_USERNAME" not in env
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert Settings(_env_file=None) == s
