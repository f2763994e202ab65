"""Stop strings over streamed text.

Text that might be the start of a stop string is held back until the next piece decides it, so a
client never receives part of a stop string that later completes; the stop string itself is not sent.
"""

from __future__ import annotations

from collections.abc import Sequence


class StopMatcher:
    def __init__(self, stops: Sequence[str]) -> None:
        self._stops = tuple(s for s in stops if s)
        self._held = ""

    def push(self, text: str) -> tuple[str, bool]:
        """Text safe to send now, and whether a stop string has completed (nothing after it is sent)."""
        if not self._stops:
            return text, False
        buffer = self._held + text
        hits = [i for i in (buffer.find(s) for s in self._stops) if i >= 0]
        if hits:
            self._held = ""
            return buffer[: min(hits)], True
        hold = self._longest_prefix_suffix(buffer)
        self._held = buffer[len(buffer) - hold :]
        return buffer[: len(buffer) - hold], False

    def flush(self) -> str:
        """What was held back, once the sequence ends for another reason and no stop can complete."""
        held, self._held = self._held, ""
        return held

    def _longest_prefix_suffix(self, buffer: str) -> int:
        """Length of the longest end of ``buffer`` that some stop string starts with."""
        best = 0
        for stop in self._stops:
            for n in range(min(len(stop) - 1, len(buffer)), best, -1):
                if buffer.endswith(stop[:n]):
                    best = n
                    break
        return best
