"""Start a server binary, wait until its port answers, stop it without leaving orphans."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def port_open(host: str, port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.2):
        return True
    return False


class ServiceFailed(RuntimeError):
    """A dev service did not come up; the message carries the tail of its log."""


@dataclass
class Service:
    """A child process with its log file; ``stop`` is idempotent."""

    name: str
    argv: Sequence[str]
    port: int
    log_path: Path
    env: dict[str, str] | None = None
    process: subprocess.Popen[bytes] | None = field(default=None, init=False)

    def start(self, *, timeout_s: float = 20.0, wait: bool = True) -> Service:
        """Launch the process; with ``wait``, return only once its port accepts connections."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, **(self.env or {})}
        with self.log_path.open("ab") as log:
            # A new session: Ctrl-C reaches only the supervisor, which stops children in order.
            self.process = subprocess.Popen(
                list(self.argv),
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
                preexec_fn=_die_with_parent if sys.platform == "linux" else None,
            )
        if wait:
            self.wait_port(timeout_s=timeout_s)
        return self

    def wait_port(self, *, timeout_s: float) -> None:
        assert self.process is not None, "start() first"
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ServiceFailed(f"{self.name} exited with {self.process.returncode}:\n{self.log_tail()}")
            if port_open("127.0.0.1", self.port):
                return
            time.sleep(0.05)  # a port has no readiness signal to wait on; bounded by the deadline
        self.stop()
        raise ServiceFailed(f"{self.name} did not open port {self.port} in {timeout_s}s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def terminate(self) -> None:
        """Ask the process group to stop (SIGTERM) without waiting: lets several drain side by side."""
        proc = self.process
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)

    def stop(self, *, timeout_s: float = 10.0) -> None:
        """SIGTERM, wait, then SIGKILL the whole process group if it overstays."""
        self.terminate()
        self.wait_stopped(timeout_s=timeout_s)

    def wait_stopped(self, *, timeout_s: float = 10.0) -> None:
        """Wait for an exit already asked for (``terminate``), then SIGKILL the group if it overstays.

        Never signals twice: a brigade process takes a second SIGTERM as "exit now, skip the drain".
        """
        proc = self.process
        if proc is None or proc.poll() is not None:
            return
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=timeout_s)


def _die_with_parent() -> None:
    """Linux: deliver SIGTERM to the child if the supervisor dies, even by SIGKILL — no orphans."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGTERM)
    except OSError:
        pass
