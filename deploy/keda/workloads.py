"""Deployments, the Service and the topics Job, built from the kubernetes client's typed models.

The models catch misspelt fields at construction (kubernetes>=37 models are pydantic with ``extra="forbid"``),
which hand-written YAML would only reveal at ``kubectl apply`` time.
"""

from __future__ import annotations

from kubernetes.client import (
    V1Capabilities,
    V1Container,
    V1ContainerPort,
    V1Deployment,
    V1DeploymentSpec,
    V1DeploymentStrategy,
    V1EmptyDirVolumeSource,
    V1EnvVar,
    V1ExecAction,
    V1HTTPGetAction,
    V1Job,
    V1JobSpec,
    V1LabelSelector,
    V1Lifecycle,
    V1LifecycleHandler,
    V1ObjectMeta,
    V1PodSecurityContext,
    V1PodSpec,
    V1PodTemplateSpec,
    V1Probe,
    V1ResourceRequirements,
    V1RollingUpdateDeployment,
    V1SecurityContext,
    V1Service,
    V1ServicePort,
    V1ServiceSpec,
    V1Volume,
    V1VolumeMount,
)

from deploy.keda import params
from deploy.keda.config import ClassDeploy, DeployConfig
from deploy.keda.env import ingress_env, topics_env, worker_env
from schemas.settings import Settings

APP = "brigade"
CLASS_LABEL = "brigade.io/class"
RUN_AS_USER = 10001  # the Dockerfile's USER; runAsNonRoot needs a numeric id
PROBE_PERIOD_S = 5


def worker_name(cost_class: str) -> str:
    return f"{APP}-worker-{cost_class}"


INGRESS_NAME = f"{APP}-ingress"
TOPICS_NAME = f"{APP}-topics"
# A Job's pod template cannot change once created: deleting the finished Job soon after lets the next apply of a
# changed manifest run it again (creating topics is idempotent) while its logs stay readable for a while.
TOPICS_JOB_TTL_S = 600
TOPICS_JOB_RETRIES = 6  # a broker still starting: the command exits 1 and the Job retries with backoff


def labels(component: str, cost_class: str | None = None) -> dict[str, str]:
    out = {"app.kubernetes.io/name": APP, "app.kubernetes.io/component": component}
    if cost_class is not None:
        out[CLASS_LABEL] = cost_class
    return out


def scrape_annotations(port: int) -> dict[str, str]:
    """The prometheus.io/* convention most Prometheus setups (and kube-prometheus' examples) scrape by."""
    return {"prometheus.io/scrape": "true", "prometheus.io/port": str(port), "prometheus.io/path": "/metrics"}


def _probe(path: str, port: str, *, period: int, failures: int) -> V1Probe:
    return V1Probe(
        http_get=V1HTTPGetAction(path=path, port=port),
        period_seconds=period,
        failure_threshold=failures,
        timeout_seconds=params.PROBE_TIMEOUT_S,
    )


def _prestop() -> V1Lifecycle:
    """Sleep before SIGTERM so Service endpoints and scrapers see the pod leave before it stops serving."""
    # `_exec` is the keyword every client release accepts (`exec` was reserved in Python 2); the typed models in
    # kubernetes>=37 name the field `var_exec` but only validate the `_exec`/`exec` aliases.
    sleep = V1ExecAction(command=["sleep", str(params.PRESTOP_S)])
    return V1Lifecycle(pre_stop=V1LifecycleHandler(_exec=sleep))  # type: ignore[call-arg]


def _container_security() -> V1SecurityContext:
    return V1SecurityContext(
        allow_privilege_escalation=False, capabilities=V1Capabilities(drop=["ALL"]), run_as_non_root=True
    )


def _worker_container(settings: Settings, cfg: ClassDeploy, *, cost_class: str, config: DeployConfig) -> V1Container:
    env: list[V1EnvVar] = worker_env(
        settings, cost_class=cost_class, model_cache_dir=config.model_cache_dir, secret=config.kafka_secret
    )
    limits = {"memory": "16Gi"}
    if cfg.device_resource:
        limits[cfg.device_resource] = "1"  # one process = one session = one device (GPU or MIG slice)
    return V1Container(
        name="worker",
        image=config.image,
        args=["worker", "--class", cost_class],
        env=env,
        ports=[V1ContainerPort(name="metrics", container_port=settings.metrics_port)],
        resources=V1ResourceRequirements(requests={"cpu": "1", "memory": "4Gi"}, limits=limits),
        # Liveness waits for the startup probe, so a slow model load is never mistaken for a hang.
        startup_probe=_probe(
            "/healthz",
            "metrics",
            period=PROBE_PERIOD_S,
            failures=params.startup_failure_threshold(cold_start_s=cfg.cold_start_s, period_s=PROBE_PERIOD_S),
        ),
        readiness_probe=_probe("/readyz", "metrics", period=PROBE_PERIOD_S, failures=2),
        liveness_probe=_probe("/healthz", "metrics", period=10, failures=3),
        lifecycle=_prestop(),
        volume_mounts=[V1VolumeMount(name="model-cache", mount_path=config.model_cache_dir)],
        security_context=_container_security(),
    )


def worker_deployment(settings: Settings, config: DeployConfig, cost_class: str) -> V1Deployment:
    """One class's consumer Deployment. No ``replicas``: the ScaledObject's HPA owns that field."""
    cfg = config.for_class(cost_class)
    pod_labels = labels("worker", cost_class)
    container = _worker_container(settings, cfg, cost_class=cost_class, config=config)
    pod = V1PodSpec(
        containers=[container],
        termination_grace_period_seconds=params.termination_grace_s(drain_timeout_s=settings.drain_timeout_s),
        volumes=[V1Volume(name="model-cache", empty_dir=V1EmptyDirVolumeSource())],
        security_context=V1PodSecurityContext(run_as_user=RUN_AS_USER, run_as_group=RUN_AS_USER, fs_group=RUN_AS_USER),
    )
    return V1Deployment(
        api_version="apps/v1",
        kind="Deployment",
        metadata=V1ObjectMeta(name=worker_name(cost_class), namespace=config.k8s_namespace, labels=pod_labels),
        spec=V1DeploymentSpec(
            selector=V1LabelSelector(match_labels=pod_labels),
            # maxSurge 0: a rollout must not need a spare GPU that the cluster does not have.
            strategy=V1DeploymentStrategy(
                type="RollingUpdate", rolling_update=V1RollingUpdateDeployment(max_surge=0, max_unavailable=1)
            ),
            template=V1PodTemplateSpec(
                metadata=V1ObjectMeta(labels=pod_labels, annotations=scrape_annotations(settings.metrics_port)),
                spec=pod,
            ),
        ),
    )


def ingress_deployment(settings: Settings, config: DeployConfig) -> V1Deployment:
    """The HTTP ingress: stateless, CPU only, a fixed replica count (it is cheap next to a GPU)."""
    pod_labels = labels("ingress")
    container = V1Container(
        name="ingress",
        image=config.image,
        args=["ingress"],
        env=ingress_env(settings, secret=config.kafka_secret),
        ports=[V1ContainerPort(name="http", container_port=settings.port)],
        resources=V1ResourceRequirements(requests={"cpu": "500m", "memory": "512Mi"}, limits={"memory": "1Gi"}),
        readiness_probe=_probe("/readyz", "http", period=PROBE_PERIOD_S, failures=2),
        liveness_probe=_probe("/healthz", "http", period=10, failures=3),
        lifecycle=_prestop(),
        security_context=_container_security(),
    )
    return V1Deployment(
        api_version="apps/v1",
        kind="Deployment",
        metadata=V1ObjectMeta(name=INGRESS_NAME, namespace=config.k8s_namespace, labels=pod_labels),
        spec=V1DeploymentSpec(
            replicas=config.ingress_replicas,
            selector=V1LabelSelector(match_labels=pod_labels),
            template=V1PodTemplateSpec(
                metadata=V1ObjectMeta(labels=pod_labels, annotations=scrape_annotations(settings.port)),
                spec=V1PodSpec(
                    containers=[container],
                    # In-flight publishes wait at most request_timeout_s for the broker's ack.
                    termination_grace_period_seconds=params.termination_grace_s(
                        drain_timeout_s=settings.request_timeout_s
                    ),
                    security_context=V1PodSecurityContext(run_as_user=RUN_AS_USER, run_as_group=RUN_AS_USER),
                ),
            ),
        ),
    )


def ingress_service(settings: Settings, config: DeployConfig) -> V1Service:
    return V1Service(
        api_version="v1",
        kind="Service",
        metadata=V1ObjectMeta(name=INGRESS_NAME, namespace=config.k8s_namespace, labels=labels("ingress")),
        spec=V1ServiceSpec(
            type="ClusterIP",
            selector=labels("ingress"),
            ports=[V1ServicePort(name="http", port=80, target_port="http", protocol="TCP")],
        ),
    )


def topics_job(settings: Settings, config: DeployConfig) -> V1Job:
    """``brigade topics create`` once per apply, as docker-compose's topic-init does: the class topics with
    their partitions and the DLQ, three replicas (fewer only on a smaller cluster), existing topics untouched."""
    container = V1Container(
        name="topics",
        image=config.image,
        args=["topics", "create"],
        env=topics_env(settings, secret=config.kafka_secret),
        resources=V1ResourceRequirements(requests={"cpu": "100m", "memory": "256Mi"}, limits={"memory": "512Mi"}),
        security_context=_container_security(),
    )
    return V1Job(
        api_version="batch/v1",
        kind="Job",
        metadata=V1ObjectMeta(name=TOPICS_NAME, namespace=config.k8s_namespace, labels=labels("topics")),
        spec=V1JobSpec(
            backoff_limit=TOPICS_JOB_RETRIES,
            ttl_seconds_after_finished=TOPICS_JOB_TTL_S,
            template=V1PodTemplateSpec(
                metadata=V1ObjectMeta(labels=labels("topics")),
                spec=V1PodSpec(
                    containers=[container],
                    restart_policy="Never",  # each failed try keeps its pod and log
                    security_context=V1PodSecurityContext(run_as_user=RUN_AS_USER, run_as_group=RUN_AS_USER),
                ),
            ),
        ),
    )
