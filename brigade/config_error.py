"""Settings the world contradicts, found while a process starts: one message naming the variable, exit 2.

``Settings`` validation catches a value malformed on its face. These are values well formed but wrong about
something outside the process: a model that is not there, credentials a server refuses, a Redis that is (or is
not) a cluster, a port already taken. They surface deep in start-up (in uvicorn's lifespan, on the engine's
thread, at the socket's bind), far from the variable that caused them, so
they carry enough to name it, and ``brigade ingress`` and ``brigade worker`` report them as they report a
validation error instead of as a traceback.
"""

from __future__ import annotations

from schemas.settings import Settings


class ConfigurationError(Exception):
    """A start-up failure that a changed ``BRIGADE_*`` variable fixes; the message says how."""

    variable = "settings"
    summary = "invalid configuration"  # the first line of the report

    def variable_in(self, settings: Settings) -> str:
        """The variable to change, as these settings spell it (a per-class family may decide which)."""
        return self.variable
