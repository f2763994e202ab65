"""Out of memory on the device: the batch limit halves and the cut-off requests run again, none lost.

The engine is the scripted word engine with a device that holds only ``rows`` sequences: a step with
more raises ``OutOfMemory`` (after ``after_steps`` good steps, so tokens of the cut-off attempt are
already in the streams). The broker and redis-server are real.
"""

from __future__ import annotations

from collections.abc import Sequence

import redis.asyncio as aioredis

from consumer.engine.interface import BatchRun, GenerationInput, OutOfMemory, TokenDelta
from consumer.engine.onnx_engine import is_out_of_memory
from producer.stream_reader import Answer, AttemptFilter
from schemas.events import DoneEvent, ErrorCode, ErrorEvent
from schemas.settings import Settings
from tests.test_worker import publish_requests, request, run_until_idle, stream, worker_metrics
from tests.test_worker_engine import ForwardingRun, WordEngine, expected_text


class _SmallDeviceRun(ForwardingRun):
    def __init__(self, inner: BatchRun, *, rows: int, after_steps: int) -> None:
        super().__init__(inner)
        self._rows, self._after, self._steps = rows, after_steps, 0

    def step(self) -> list[TokenDelta]:
        self._steps += 1
        if self._steps > self._after and self.running > self._rows:
            raise OutOfMemory(f"{self.running} sequences on a device that holds {self._rows}")
        return super().step()


class SmallDeviceEngine(WordEngine):
    def __init__(self, *, rows: int, after_steps: int = 0) -> None:
        super().__init__()
        self.rows, self.after_steps = rows, after_steps

    def start(self, inputs: Sequence[GenerationInput]) -> BatchRun:
        return _SmallDeviceRun(super().start(inputs), rows=self.rows, after_steps=self.after_steps)


async def test_out_of_memory_mid_decode_halves_the_batch_and_every_request_completes_once(
    settings: Settings, topics: list[str], redis_client: aioredis.Redis
) -> None:
    settings = settings.model_copy(update={"max_batch_size": 8})
    reqs = [request(f"r{i}", f"s{i}", max_new_tokens=5) for i in range(8)]
    await publish_requests(settings, reqs)
    engine = SmallDeviceEngine(rows=2, after_steps=2)

    worker = await run_until_idle(settings, engine)

    assert worker.batcher.max_batch_size == 2, "8 → 4 → 2: halved until the batch fits"
    finals = 0
    for session in {r.session_id for r in reqs}:
        events = await stream(redis_client, settings, session)
        attempts = AttemptFilter()
        answer = Answer()
        for event in events:
            answer.add(event, attempts.judge(event))
        done = [e for e in events if isinstance(e, DoneEvent | ErrorEvent)]
        assert len(done) == 1 and isinstance(done[0], DoneEvent), events
        assert done[0].attempt >= 2, "every request of the first batch was cut off once"
        assert "".join(answer.text) == expected_text(5), "the reader shows one clean answer"
        finals += 1
    assert finals == len(reqs)
    assert b'brigade_out_of_memory_total{class="small"} 2.0' in worker_metrics(worker)


async def test_out_of_memory_at_one_sequence_answers_with_an_error(
    settings: Settings, topics: list[str], redis_client: aioredis.Redis
) -> None:
    settings = settings.model_copy(update={"max_batch_size": 2})
    reqs = [request(f"r{i}", f"s{i}", max_new_tokens=3) for i in range(2)]
    await publish_requests(settings, reqs)

    await run_until_idle(settings, SmallDeviceEngine(rows=0))

    for r in reqs:
        events = await stream(redis_client, settings, r.session_id)
        assert len(events) == 1 and isinstance(events[0], ErrorEvent), events
        assert events[0].code is ErrorCode.INTERNAL and "holds 0" in events[0].message


def test_allocation_failures_are_recognised_in_onnx_runtime_words() -> None:
    assert is_out_of_memory(RuntimeError("[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : CUDA failure 2: out of memory"))
    assert is_out_of_memory(
        RuntimeError("BFCArena::AllocateRawInternal Failed to allocate memory for requested buffer")
    )
    assert is_out_of_memory(MemoryError())
    assert not is_out_of_memory(RuntimeError("Invalid input name: past_key_values.0.key"))
