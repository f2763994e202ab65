"""deploy.keda: the scaling arithmetic (table tests), the rendered objects, drift and the CRD schemas."""

from __future__ import annotations

import importlib
import math
import os
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from deploy.keda import params
from deploy.keda.config import ClassDeploy, DeployConfig, reference_settings
from deploy.keda.render import RENDERED_DIR, drift, manifests, render_all, render_documents
from producer.topics import desired_topics
from schemas.settings import Settings, field_of_variable

CRD_DIR = Path(__file__).parent.parent / "deploy" / "keda" / "crds"


# --- arithmetic -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("throughput", "wait", "expected"),
    [
        (4.0, 5.0, 20),  # 4 req/s × 5 s
        (8.0, 10.0, 80),
        (0.5, 10.0, 5),
        (0.05, 10.0, 1),  # floored at 1: 0.5 rounds down to 0, which KEDA would treat as "always scale"
        (2.5, 3.0, 7),  # 7.5 floors: never promise a wait longer than the target
    ],
)
def test_lag_threshold(throughput: float, wait: float, expected: int) -> None:
    assert params.lag_threshold(throughput_rps=throughput, target_wait_s=wait) == expected


@pytest.mark.parametrize(("throughput", "wait"), [(0.0, 5.0), (-1.0, 5.0), (1.0, 0.0)])
def test_lag_threshold_rejects_nonsense(throughput: float, wait: float) -> None:
    with pytest.raises(ValueError, match="must be > 0"):
        params.lag_threshold(throughput_rps=throughput, target_wait_s=wait)


@pytest.mark.parametrize(
    ("partitions", "tolerance", "expected"),
    [
        (1, 0.1, 1),
        (2, 0.1, 1),  # headroom: fewer replicas than partitions
        (6, 0.1, 5),
        (12, 0.1, 11),
        (64, 0.1, 59),  # the 63-of-64 trap: 64/63 is within tolerance, 64/58 = 1.10 is not
        (64, 0.0, 63),
        (100, 0.1, 91),
    ],
)
def test_max_replica_count(partitions: int, tolerance: float, expected: int) -> None:
    top = params.max_replica_count(partitions=partitions, tolerance=tolerance)
    assert top == expected
    assert params.reachable(max_replicas=top, partitions=partitions, tolerance=tolerance)
    assert top < partitions or partitions == 1


@pytest.mark.parametrize(
    ("max_replicas", "partitions", "ok"),
    [(64, 64, False), (63, 64, False), (59, 64, True), (13, 12, False), (1, 1, True), (11, 12, True)],
)
def test_reachable(max_replicas: int, partitions: int, ok: bool) -> None:
    assert params.reachable(max_replicas=max_replicas, partitions=partitions) is ok


@pytest.mark.parametrize(("cold", "expected"), [(0.0, 300), (60.0, 300), (150.0, 300), (151.0, 302), (600.0, 1200)])
def test_cooldown_covers_two_cold_starts(cold: float, expected: int) -> None:
    assert params.cooldown_period_s(cold_start_s=cold) == expected


@pytest.mark.parametrize(("drain", "expected"), [(0.0, 15), (30.0, 45), (29.5, 45), (120.0, 135)])
def test_termination_grace(drain: float, expected: int) -> None:
    assert params.termination_grace_s(drain_timeout_s=drain) == expected


@pytest.mark.parametrize(
    ("lag", "replicas", "rps", "expected"), [(0, 0, 1.0, 0.0), (10, 0, 1.0, math.inf), (20, 2, 5.0, 2.0)]
)
def test_expected_wait(lag: int, replicas: int, rps: float, expected: float) -> None:
    assert params.expected_wait_s(lag=lag, replicas=replicas, throughput_rps=rps) == expected


# --- config validation ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cfg", "message"),
    [
        (ClassDeploy(max_replicas=12), "cannot be reached with 12 partitions"),
        (ClassDeploy(min_replicas=-1), "min_replicas must be >= 0"),
        (ClassDeploy(min_replicas=5, max_replicas=3), "below min_replicas"),
        (ClassDeploy(activation_lag=-1), "activation_lag"),
        (ClassDeploy(fallback_replicas=50), "fallback_replicas"),
    ],
)
def test_validate_names_class_and_field(cfg: ClassDeploy, message: str) -> None:
    config = DeployConfig(classes={"small": cfg})
    with pytest.raises(ValueError, match=message) as exc:
        config.validate(reference_settings())
    assert "'small'" in str(exc.value)


def test_validate_rejects_unknown_class() -> None:
    with pytest.raises(ValueError, match="not in BRIGADE_CLASSES"):
        DeployConfig(classes={"huge": ClassDeploy()}).validate(reference_settings())


# --- rendered objects -----------------------------------------------------------------------------------------


def _docs(settings: Settings | None = None, config: DeployConfig | None = None) -> list[dict[str, Any]]:
    files = manifests(settings or reference_settings(), config or DeployConfig())
    return [doc for docs in files.values() for doc in docs]


def _by_kind(kind: str, docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def test_checked_in_yaml_matches_generator() -> None:
    stale = drift(RENDERED_DIR)
    assert not stale, f"{stale} drifted from deploy.keda; run deploy.keda.render.render_reference()"


def test_render_all_writes_and_prunes(tmp_path: Path) -> None:
    settings = reference_settings()
    written = render_all(settings, tmp_path)
    assert sorted(p.name for p in written) == sorted(render_documents(settings))
    plain = Settings(
        _env_file=None,
        classes="a,b",
        class_max_cost="10",
        class_partitions="3,3",
        class_max_lag="5,5",
        worker_class="a",
    )
    render_all(plain, tmp_path, config=DeployConfig(classes={}))
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "ingress.yaml",
        "topics.yaml",
        "worker-a.yaml",
        "worker-b.yaml",
    ]


def test_one_worker_and_scaler_per_class() -> None:
    docs = _docs()
    settings = reference_settings()
    deployments = {d["metadata"]["name"] for d in _by_kind("Deployment", docs)}
    assert deployments == {"brigade-ingress"} | {f"brigade-worker-{c}" for c in settings.classes}
    for so in _by_kind("ScaledObject", docs):
        assert so["spec"]["scaleTargetRef"]["name"] in deployments


def test_trigger_metadata_are_strings_and_names_match() -> None:
    settings = reference_settings()
    for so in _by_kind("ScaledObject", _docs()):
        cost_class = so["metadata"]["labels"]["brigade.io/class"]
        (trigger,) = so["spec"]["triggers"]
        meta = trigger["metadata"]
        assert all(isinstance(v, str) for v in meta.values()), meta
        assert meta["consumerGroup"] == settings.names.consumer_group(cost_class) == f"brigade-{cost_class}"
        assert meta["topic"] == settings.names.request_topic(cost_class) == f"brigade.requests.{cost_class}"
        assert meta["allowIdleConsumers"] == "false"
        assert int(meta["lagThreshold"]) >= 1
        assert so["spec"]["maxReplicaCount"] < settings.cost_class(cost_class).partitions
        assert so["spec"]["cooldownPeriod"] >= 300
        behavior = so["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
        assert behavior["scaleDown"]["stabilizationWindowSeconds"] > 0
        assert behavior["scaleUp"]["policies"]


def test_large_scales_to_zero_and_small_stays_warm() -> None:
    spec = {so["metadata"]["name"]: so["spec"] for so in _by_kind("ScaledObject", _docs())}
    assert spec["brigade-worker-large"]["minReplicaCount"] == 0
    assert spec["brigade-worker-small"]["minReplicaCount"] >= 1


def test_plaintext_kafka_has_no_trigger_authentication() -> None:
    settings = Settings(_env_file=None, kafka_security_protocol="PLAINTEXT")
    docs = _docs(settings)
    assert not _by_kind("TriggerAuthentication", docs)
    assert all("authenticationRef" not in so["spec"]["triggers"][0] for so in _by_kind("ScaledObject", docs))
    env_names = {
        e["name"] for d in _by_kind("Deployment", docs) for e in d["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert "BRIGADE_KAFKA_SASL_PASSWORD" not in env_names


def test_worker_pod_contract() -> None:
    settings = reference_settings()
    for dep in _by_kind("Deployment", _docs()):
        if dep["metadata"]["name"] == "brigade-ingress":
            continue
        cost_class = dep["metadata"]["labels"]["brigade.io/class"]
        assert "replicas" not in dep["spec"], "the HPA owns replicas"
        pod = dep["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        env = {e["name"]: e for e in container["env"]}
        assert env["BRIGADE_WORKER_CLASS"]["value"] == cost_class
        assert env["BRIGADE_KAFKA_SASL_PASSWORD"]["valueFrom"]["secretKeyRef"]["key"] == "password"
        assert "value" not in env["BRIGADE_KAFKA_SASL_PASSWORD"]
        assert container["args"] == ["worker", "--class", cost_class]
        assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
        assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
        assert container["lifecycle"]["preStop"]
        assert pod["terminationGracePeriodSeconds"] >= settings.drain_timeout_s
        limits = container["resources"]["limits"]
        assert sum(1 for k in limits if k.startswith("nvidia.com/")) == 1
        annotations = dep["spec"]["template"]["metadata"]["annotations"]
        assert annotations["prometheus.io/port"] == str(settings.metrics_port)


def test_mig_profile_per_class() -> None:
    limits = {
        d["metadata"]["name"]: d["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]
        for d in _by_kind("Deployment", _docs())
    }
    assert limits["brigade-worker-small"]["nvidia.com/mig-1g.10gb"] == "1"
    assert limits["brigade-worker-large"]["nvidia.com/gpu"] == "1"
    cpu_only = DeployConfig(classes={"small": ClassDeploy(device_resource="")})
    small = next(d for d in _by_kind("Deployment", _docs(config=cpu_only)) if d["metadata"]["name"].endswith("small"))
    assert not any(
        k.startswith("nvidia.com/") for k in small["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    )


def test_env_names_exist_in_settings() -> None:
    for dep in _by_kind("Deployment", _docs()):
        for env in dep["spec"]["template"]["spec"]["containers"][0]["env"]:
            assert field_of_variable(env["name"]) is not None, env["name"]


def test_each_worker_gets_its_class_model_and_the_ingress_gets_all(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = reference_settings().model_copy(
        update={"class_models": {"large": "builtin:gpt2-small-shape"}, "class_devices": {"small": "cpu"}}
    )
    for dep in _by_kind("Deployment", _docs(settings)):
        (container,) = dep["spec"]["template"]["spec"]["containers"]
        env = {e["name"]: e.get("value", "from-secret") for e in container["env"]}
        models = {k: v for k, v in env.items() if k.startswith("BRIGADE_CLASS_") and k.endswith("_MODEL")}
        cost_class = dep["metadata"]["labels"].get("brigade.io/class")
        if cost_class is None:  # the ingress routes by every class's model
            assert models == {
                "BRIGADE_CLASS_SMALL_MODEL": "builtin:tiny",
                "BRIGADE_CLASS_MEDIUM_MODEL": "builtin:tiny",
                "BRIGADE_CLASS_LARGE_MODEL": "builtin:gpt2-small-shape",
            }
            continue
        assert models == {f"BRIGADE_CLASS_{cost_class.upper()}_MODEL": settings.model_for(cost_class)}
        assert ("BRIGADE_CLASS_SMALL_DEVICE" in env) == (cost_class == "small")
        for key in [k for k in os.environ if k.startswith("BRIGADE_")]:
            monkeypatch.delenv(key)
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        pod = Settings()
        assert (pod.model_for(cost_class), pod.device_for(cost_class)) == (
            settings.model_for(cost_class),
            settings.device_for(cost_class),
        )


def test_rendered_env_round_trips_through_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """What the manifests set is what the pod's Settings reads back."""
    dep = next(d for d in _by_kind("Deployment", _docs()) if d["metadata"]["name"] == "brigade-worker-medium")
    for env in dep["spec"]["template"]["spec"]["containers"][0]["env"]:
        monkeypatch.setenv(env["name"], env.get("value", "from-secret"))
    pod = Settings()
    ref = reference_settings()
    assert pod.worker_class == "medium"
    assert pod.cost_classes == ref.cost_classes
    assert (pod.kafka_bootstrap, pod.redis_url, pod.drain_timeout_s) == (
        ref.kafka_bootstrap,
        ref.redis_url,
        ref.drain_timeout_s,
    )


def test_the_topics_job_creates_the_topics_the_fleet_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    """Its env makes the same topic table (names, partitions) as the ingress's and the workers'."""
    (job,) = _by_kind("Job", _docs())
    pod = job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["args"] == ["topics", "create"]
    assert pod["restartPolicy"] == "Never" and job["spec"]["backoffLimit"] > 0
    assert job["spec"]["ttlSecondsAfterFinished"] > 0, "a finished Job must go, or a changed one cannot be applied"
    secret_backed = {e["name"] for e in container["env"] if "valueFrom" in e}
    assert secret_backed == {"BRIGADE_KAFKA_SASL_USERNAME", "BRIGADE_KAFKA_SASL_PASSWORD"}
    for env in container["env"]:
        monkeypatch.setenv(env["name"], env.get("value", "from-secret"))
    assert desired_topics(Settings()) == desired_topics(reference_settings())


# --- KEDA's own CRD schemas (vendored; jsonschema is a dev dependency) ----------------------------------------


def _jsonschema() -> ModuleType:
    """jsonschema, imported by name so mypy needs no stubs; skipped locally without it, an error in CI."""
    try:
        return importlib.import_module("jsonschema")
    except ImportError:
        if os.environ.get("CI"):
            raise
        pytest.skip("jsonschema not installed (pip install 'brigade[dev]')")


def _crd_schema(file: str) -> dict[str, Any]:
    crd = yaml.safe_load((CRD_DIR / file).read_text())
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1alpha1"]
    schema: dict[str, Any] = version["schema"]["openAPIV3Schema"]
    return schema


@pytest.mark.parametrize(
    ("kind", "crd"),
    [("ScaledObject", "keda.sh_scaledobjects.yaml"), ("TriggerAuthentication", "keda.sh_triggerauthentications.yaml")],
)
def test_custom_objects_match_keda_crds(kind: str, crd: str) -> None:
    jsonschema = _jsonschema()
    validator = jsonschema.Draft7Validator(_crd_schema(crd))
    rendered = [d for text in render_documents(reference_settings()).values() for d in yaml.safe_load_all(text)]
    objects = _by_kind(kind, rendered)
    assert objects
    for obj in objects:
        errors = [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(obj)]
        assert not errors, errors


def test_crd_schema_catches_a_numeric_lag_threshold() -> None:
    """Guard the guard: the vendored schema really rejects a non-string trigger value."""
    jsonschema = _jsonschema()
    so = _by_kind("ScaledObject", _docs())[0]
    so["spec"]["triggers"][0]["metadata"]["lagThreshold"] = 10
    assert list(jsonschema.Draft7Validator(_crd_schema("keda.sh_scaledobjects.yaml")).iter_errors(so))
