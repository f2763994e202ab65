"""docker-compose.yml without Docker: the compose spec, then the wiring the stack needs to come up.

Docker cannot run on the build machines, so this checks what ``docker compose config`` and a first ``up`` would:
the schema (vendored spec in ``deploy/compose/``), BRIGADE_* names, ports, healthchecks, depends_on, one worker
per class, and that Prometheus and Grafana point at what exists.
"""

from __future__ import annotations

import importlib
import json
import os
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from schemas.settings import Settings, field_of_variable

ROOT = Path(__file__).parent.parent
COMPOSE = ROOT / "docker-compose.yml"
SPEC = ROOT / "deploy" / "compose" / "compose-spec.json"
PROMETHEUS = ROOT / "deploy" / "prometheus" / "prometheus.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "brigade.json"
# Exporter images are FROM scratch: no shell, no wget, so no healthcheck; nothing waits on them.
NO_HEALTHCHECK = {"topic-init", "kafka-exporter", "redis-exporter"}

Compose = dict[str, Any]


@pytest.fixture(scope="module")
def compose() -> Compose:
    data: Compose = yaml.safe_load(COMPOSE.read_text())  # resolves the x-* anchors and `<<` merges
    return data


@pytest.fixture(scope="module")
def services(compose: Compose) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = compose["services"]
    return out


def _settings() -> Settings:
    return Settings(_env_file=None)


def _workers(services: dict[str, dict[str, Any]], *, gpu: bool) -> dict[str, dict[str, Any]]:
    return {
        name: svc
        for name, svc in services.items()
        if svc.get("command", [None])[0] == "worker" and ("gpu" in svc.get("profiles", [])) is gpu
    }


def test_matches_compose_spec(compose: Compose) -> None:
    try:
        jsonschema = importlib.import_module("jsonschema")
    except ImportError:
        if os.environ.get("CI"):
            raise
        pytest.skip("jsonschema not installed (pip install 'brigade[dev]')")
    validator = jsonschema.Draft7Validator(json.loads(SPEC.read_text()))
    errors = [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(compose)]
    assert not errors, errors


def test_brigade_names_exist_in_settings(services: dict[str, dict[str, Any]]) -> None:
    used = {key for svc in services.values() for key in svc.get("environment", {}) if key.startswith("BRIGADE_")}
    assert used, "no BRIGADE_* variables at all"
    unknown = {name for name in used if field_of_variable(name) is None}
    assert not unknown, f"not Settings fields: {sorted(unknown)}"


def test_ingress_and_workers_agree_on_each_class_model(services: dict[str, dict[str, Any]]) -> None:
    """The ingress counts tokens and routes by the models the workers load, so both read the same table."""
    tables = {}
    for name, svc in services.items():
        env = {k: str(v) for k, v in svc.get("environment", {}).items()}
        if any(k.startswith("BRIGADE_") for k in env):
            tables[name] = {k: v for k, v in env.items() if field_of_variable(k) in ("model", "class_models")}
    assert len({tuple(sorted(t.items())) for t in tables.values()}) == 1, tables


def test_environment_parses_into_settings(services: dict[str, dict[str, Any]], monkeypatch: pytest.MonkeyPatch) -> None:
    """Every brigade service's environment is a valid configuration, not just valid names."""
    for name, svc in services.items():
        env = svc.get("environment", {})
        if not any(k.startswith("BRIGADE_") for k in env):
            continue
        for key in [k for k in os.environ if k.startswith("BRIGADE_")]:
            monkeypatch.delenv(key)
        for key, value in env.items():
            monkeypatch.setenv(key, str(value))
        settings = Settings()
        assert settings.kafka_bootstrap == "kafka:9092", name
        assert settings.redis_url.startswith("redis://redis:"), name


def test_one_worker_per_class_cpu_and_gpu(services: dict[str, dict[str, Any]]) -> None:
    classes = set(_settings().classes)
    for gpu in (False, True):
        workers = _workers(services, gpu=gpu)
        by_class = {svc["command"][2]: svc for svc in workers.values()}
        assert set(by_class) == classes and len(workers) == len(classes), (gpu, sorted(workers))
        for cost_class, svc in by_class.items():
            assert svc["command"] == ["worker", "--class", cost_class]
            assert svc["environment"]["BRIGADE_WORKER_CLASS"] == cost_class
            devices = svc.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices", [])
            assert bool(devices) is gpu
            if gpu:
                assert devices[0]["capabilities"] == ["gpu"] and len(devices[0]["device_ids"]) == 1


def test_healthchecks_and_depends_on(services: dict[str, dict[str, Any]]) -> None:
    for name, svc in services.items():
        if name not in NO_HEALTHCHECK:
            assert "healthcheck" in svc and svc["healthcheck"]["test"], f"{name} has no healthcheck"
        for target, dep in svc.get("depends_on", {}).items():
            assert target in services, f"{name} depends on unknown service {target}"
            condition = dep["condition"]
            if condition == "service_healthy":
                assert "healthcheck" in services[target], f"{name} waits for {target} to be healthy; it has no check"
            elif condition == "service_completed_successfully":
                assert services[target].get("restart") == "no", f"{target} must be one-shot"
            else:
                pytest.fail(f"{name} → {target}: use service_healthy or service_completed_successfully")


def test_brigade_services_wait_for_topics(services: dict[str, dict[str, Any]]) -> None:
    assert services["topic-init"]["command"] == ["topics", "create"]
    for name, svc in services.items():
        if svc.get("command", [None])[0] in ("worker", "ingress"):
            assert svc["depends_on"]["topic-init"]["condition"] == "service_completed_successfully", name
            assert {"kafka", "redis"} <= set(svc["depends_on"]), name


def test_ports_match_settings(services: dict[str, dict[str, Any]]) -> None:
    settings = _settings()
    ingress = services["ingress"]
    assert f"{settings.port}:{settings.port}" in ingress["ports"]
    assert f"localhost:{settings.port}/readyz" in " ".join(ingress["healthcheck"]["test"])
    for name, svc in {**_workers(services, gpu=False), **_workers(services, gpu=True)}.items():
        port = int(svc["environment"].get("BRIGADE_METRICS_PORT", settings.metrics_port))
        assert f"localhost:{port}/readyz" in " ".join(svc["healthcheck"]["test"]), name
        assert str(port) in svc["expose"], name


def test_redis_appendonly_and_kafka_kraft(services: dict[str, dict[str, Any]]) -> None:
    redis_cmd = services["redis"]["command"]
    assert redis_cmd[redis_cmd.index("--appendonly") + 1] == "yes"
    kafka = services["kafka"]
    assert kafka["image"].startswith("apache/kafka:")
    assert kafka["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"


def test_bind_mounts_exist(services: dict[str, dict[str, Any]]) -> None:
    for name, svc in services.items():
        for volume in svc.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (ROOT / source).exists(), f"{name} mounts missing {source}"


def test_prometheus_scrapes_every_part(services: dict[str, dict[str, Any]]) -> None:
    config = yaml.safe_load(PROMETHEUS.read_text())
    targets = {t for job in config["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]}
    hosts = {t.split(":")[0] for t in targets}
    settings = _settings()
    assert f"ingress:{settings.port}" in targets
    for name in {**_workers(services, gpu=False), **_workers(services, gpu=True)}:
        assert f"{name}:{settings.metrics_port}" in targets
    assert {"kafka-exporter", "redis-exporter"} <= hosts
    assert hosts - {"localhost"} <= set(services), f"scrapes unknown services {hosts - set(services)}"


def test_dashboard_has_the_metrics_users_read() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = " ".join(t["expr"] for panel in dashboard["panels"] for t in panel["targets"])
    for metric in (
        "brigade_time_to_first_token_seconds",
        "brigade_time_per_output_token_seconds",
        "brigade_generation_tokens_total",
        "brigade_consumer_lag",
        "brigade_batch_size",
        "brigade_gpu_memory_used_bytes",
    ):
        assert metric in exprs, metric
    datasources = {t["datasource"]["uid"] for panel in dashboard["panels"] for t in panel["targets"]}
    provisioned = yaml.safe_load((ROOT / "deploy/grafana/provisioning/datasources/prometheus.yml").read_text())
    assert datasources == {ds["uid"] for ds in provisioned["datasources"]}


def test_dockerfile_entrypoint_and_user() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim", text, re.M)
    assert 'ENTRYPOINT ["brigade"]' in text
    assert re.search(r"^USER 10001$", text, re.M), "the manifests' runAsUser"
