"""BRIGADE_* variables: one typed object, errors that name the variable."""

from __future__ import annotations

import subprocess
import sys

import pytest
from pydantic import ValidationError

from schemas.settings import Settings, field_of_variable


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


def test_per_class_models_and_devices_fall_back_to_the_shared_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BRIGADE_MODEL", "builtin:tiny")
    monkeypatch.setenv("BRIGADE_CLASS_LARGE_MODEL", "builtin:gpt2-small-shape")
    monkeypatch.setenv("BRIGADE_CLASS_LARGE_DEVICE", "cuda:1")
    s = Settings()
    assert [s.model_for(c) for c in s.classes] == ["builtin:tiny", "builtin:tiny", "builtin:gpt2-small-shape"]
    assert [s.device_for(c) for c in s.classes] == ["auto", "auto", "cuda:1"]
    assert s.served_models == ("builtin:tiny", "builtin:gpt2-small-shape")
    assert [c.name for c in s.classes_serving("builtin:tiny")] == ["small", "medium"]
    assert s.classes_serving("builtin:nope") == ()


def test_per_class_variable_matches_a_class_spelt_for_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BRIGADE_CLASSES", "fast-lane,slow")
    monkeypatch.setenv("BRIGADE_CLASS_MAX_COST", "100")
    monkeypatch.setenv("BRIGADE_CLASS_PARTITIONS", "1,1")
    monkeypatch.setenv("BRIGADE_CLASS_MAX_LAG", "10,5")
    monkeypatch.setenv("BRIGADE_WORKER_CLASS", "slow")
    monkeypatch.setenv("BRIGADE_CLASS_FAST_LANE_MODEL", "builtin:tiny-wide")
    assert Settings().class_models == {"fast-lane": "builtin:tiny-wide"}


def test_a_per_class_variable_for_an_unknown_class_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BRIGADE_CLASS_HUGE_MODEL", "builtin:tiny")
    with pytest.raises(ValidationError, match=r"BRIGADE_CLASS_HUGE_MODEL is set but BRIGADE_CLASSES \(small,medium"):
        Settings()
    with pytest.raises(ValidationError, match="BRIGADE_CLASS_HUGE_DEVICE is set"):
        Settings(_env_file=None, class_models={}, class_devices={"huge": "cpu"})


def test_per_class_fields_have_no_variable_of_their_own(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only the BRIGADE_CLASS_<NAME>_MODEL family sets class_models; a JSON BRIGADE_CLASS_MODELS is not read."""
    monkeypatch.setenv("BRIGADE_CLASS_MODELS", '{"small": "builtin:tiny-wide"}')
    assert Settings().class_models == {}
    assert field_of_variable("BRIGADE_CLASS_SMALL_MODEL") == "class_models"
    assert field_of_variable("BRIGADE_CLASS_MAX_LAG") == "class_max_lag"
    assert field_of_variable("BRIGADE_CLASS_MODELS") is None


def test_cli_names_the_per_class_variable() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "brigade", "topics", "create"],
        env={"BRIGADE_CLASS_HUGE_MODEL": "builtin:tiny", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2
    assert "  BRIGADE_CLASS_<NAME>_MODEL: BRIGADE_CLASS_HUGE_MODEL is set" in proc.stderr, proc.stderr


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
        class_models={"slow": "builtin:tiny-wide"},
    )
    env = s.to_env()
    assert env["BRIGADE_CLASS_SLOW_MODEL"] == "builtin:tiny-wide" and "BRIGADE_CLASS_MODELS" not in env
    assert env["BRIGADE_CLASS_PARTITIONS"] == "3,2" and env["BRIGADE_KAFKA_IDEMPOTENCE"] == "false"
    assert "BRIGADE_KAFKA_SASL_USERNAME" not in env
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert Settings(_env_file=None) == s
