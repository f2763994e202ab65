"""The ONNX engine on builtin:tiny, checked against a plain full recomputation; stop strings and limits."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pytest

from consumer.engine import onnx_engine
from consumer.engine.interface import GenerationInput, TokenDelta
from consumer.engine.onnx_engine import OnnxBatchRun, OnnxEngine, load_engine
from consumer.engine.sampling import Seen, penalize
from consumer.engine.sequence import SequenceState
from consumer.engine.stops import StopMatcher
from schemas.events import FinishReason
from schemas.requests import ChatMessage, SamplingParams
from schemas.settings import Settings

GREEDY = SamplingParams(temperature=0.0, ignore_eos=True)


@pytest.fixture(scope="module")
def engine(model_cache_dir: Path) -> Iterator[OnnxEngine]:
    eng = load_engine(Settings(model="builtin:tiny", model_cache_dir=model_cache_dir, device="cpu"))
    yield eng
    eng.close()


def run_all(run: OnnxBatchRun) -> dict[str, list[TokenDelta]]:
    out: dict[str, list[TokenDelta]] = {}
    while not run.finished:
        for delta in run.step():
            assert out.get(delta.request_id, [None])[-1] is None or out[delta.request_id][-1].finish_reason is None
            out.setdefault(delta.request_id, []).append(delta)
    return out


def text_of(deltas: Sequence[TokenDelta]) -> str:
    return "".join(d.text for d in deltas)


def no_cache_logits(engine: OnnxEngine, ids: Sequence[int]) -> np.ndarray:
    """The next token's logits from the whole sequence through the model, empty past (suppressed ids masked)."""
    layout, t = engine.layout, len(ids)
    feeds: dict[str, np.ndarray] = {
        "input_ids": np.array([ids], dtype=np.int64),
        "attention_mask": np.ones((1, t), dtype=np.int64),
        "position_ids": np.arange(t, dtype=np.int64)[None, :],
    }
    feeds |= {name: np.zeros((1, layout.kv_heads, 0, layout.head_dim), np.float32) for name in layout.past_names}
    logits: np.ndarray = engine.session.run(["logits"], feeds)[0][0, -1, : engine.sampled_vocab]
    logits[engine.suppress_ids] = -np.inf
    return logits


def no_cache_greedy(engine: OnnxEngine, prompt: list[int], n: int, params: SamplingParams = GREEDY) -> list[int]:
    """The reference: the whole sequence through the model at every step, one sequence, empty past
    (``params``' penalties applied to each step's logits)."""
    ids, seen = list(prompt), Seen(prompt)
    for _ in range(n):
        logits = no_cache_logits(engine, ids)
        penalize(logits, params, seen)
        ids.append(int(np.argmax(logits)))
        seen.add(ids[-1])
    return ids[len(prompt) :]


def test_batched_kv_cache_equals_one_at_a_time_recompute(engine: OnnxEngine) -> None:
    prompts = ["Hi", "The chef calls the order and the pass sends", "A", "Tickets pile up on the rail"]
    # The longest prompt stops first, so its padding columns get cut while others keep running.
    budgets = [12, 4, 9, 12]
    inputs = [
        GenerationInput(f"r{i}", engine.encode(p), n, GREEDY)
        for i, (p, n) in enumerate(zip(prompts, budgets, strict=True))
    ]
    assert len({len(i.prompt_ids) for i in inputs}) == len(inputs)
    run = engine.start(inputs)
    out = run_all(run)
    for item in inputs:
        expected = no_cache_greedy(engine, list(item.prompt_ids), item.max_new_tokens)
        assert run.token_ids(item.request_id) == expected, item.request_id
        last = out[item.request_id][-1]
        assert (last.finish_reason, last.completion_tokens) == (FinishReason.LENGTH, item.max_new_tokens)
        assert text_of(out[item.request_id]) == engine.tokenizer.decode(expected)


def test_sequences_joining_a_running_batch_equal_one_at_a_time_recompute(engine: OnnxEngine) -> None:
    """Continuous batching: rows joining mid-run (longer and shorter caches than the batch's) change nothing."""
    prompts = ["Hi", "The chef calls the order and the pass sends", "A", "Tickets pile up on the rail", "Oui"]
    inputs = [
        GenerationInput(f"r{i}", engine.encode(p), n, GREEDY)
        for i, (p, n) in enumerate(zip(prompts, [10, 3, 8, 6, 5], strict=True))
    ]
    run = engine.start(inputs[:1])
    out: dict[str, list[TokenDelta]] = {}
    joins = {2: inputs[1:3], 4: inputs[3:4], 9: inputs[4:]}  # step number -> who joins before it
    step = 0
    while not run.finished or step in joins:
        if step in joins:
            run.join(joins.pop(step))
        assert run.running > 0
        for delta in run.step():
            out.setdefault(delta.request_id, []).append(delta)
        step += 1
    for item in inputs:
        expected = no_cache_greedy(engine, list(item.prompt_ids), item.max_new_tokens)
        assert run.token_ids(item.request_id) == expected, item.request_id
        assert [d.finish_reason for d in out[item.request_id]][-1] is FinishReason.LENGTH
        assert sum(d.finish_reason is not None for d in out[item.request_id]) == 1
    assert run.running == 0


def test_dropped_sequences_leave_the_batch_and_change_nothing_for_the_rest(engine: OnnxEngine) -> None:
    """Cancelling: the longest prompt's row (the widest padding) and a joiner not yet prefilled are dropped; the
    others' tokens are what they would have been alone, and no step reports the dropped ones again."""
    prompts = ["Hi", "The chef calls the order and the pass sends", "A", "Tickets pile up"]
    inputs = [GenerationInput(f"r{i}", engine.encode(p), 8, GREEDY) for i, p in enumerate(prompts)]
    run = engine.start(inputs[:3])
    out: dict[str, list[TokenDelta]] = {}
    for step in range(8):
        if step == 2:
            run.join(inputs[3:])
            run.drop(["r1", "r3", "unknown"])
            assert run.running == 2
        for delta in run.step():
            out.setdefault(delta.request_id, []).append(delta)
    assert run.finished
    assert [d.completion_tokens for d in out["r1"]] == [1, 2], "nothing reported after the drop"
    assert "r3" not in out, "a joiner dropped before its prefill never runs"
    for rid in ("r0", "r2"):
        item = next(i for i in inputs if i.request_id == rid)
        assert run.token_ids(rid) == no_cache_greedy(engine, list(item.prompt_ids), 8), rid
    run.drop(["r0"])  # finished already: ignored
    assert out["r0"][-1].finish_reason is FinishReason.LENGTH


def test_penalties_apply_per_row_from_each_sequences_own_history(engine: OnnxEngine) -> None:
    penalized = GREEDY.model_copy(update={"repetition_penalty": 1.5, "frequency_penalty": 1.0})
    prompt = engine.encode("the pass the pass the pass")
    inputs = [
        GenerationInput("plain", prompt, 16, GREEDY),
        GenerationInput("penalized", prompt, 16, penalized),
        GenerationInput("short", engine.encode("A"), 3, penalized),  # leaves first: the rows compact under them
    ]
    run = engine.start(inputs)
    run_all(run)
    for item in inputs:
        expected = no_cache_greedy(engine, list(item.prompt_ids), item.max_new_tokens, item.sampling)
        assert run.token_ids(item.request_id) == expected, item.request_id
    assert run.token_ids("penalized") != run.token_ids("plain"), "the penalties changed nothing: the test tests nothing"


def test_models_without_logits_to_keep_prefill_in_row_groups(
    engine: OnnxEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A plain Optimum export returns logits for every prompt position; big prefills are split by rows."""
    monkeypatch.setattr(engine, "layout", dataclasses.replace(engine.layout, logits_to_keep=None))
    monkeypatch.setattr(onnx_engine, "_MAX_LOGITS", 2 * 10 * engine.model_vocab)  # two rows of ten positions
    prompts = ["Hi", "The chef calls the order and the pass sends", "A", "Tickets pile up on the rail"]
    inputs = [GenerationInput(f"r{i}", engine.encode(p), 6, GREEDY) for i, p in enumerate(prompts)]
    run = engine.start(inputs)
    run_all(run)
    for item in inputs:
        assert run.token_ids(item.request_id) == no_cache_greedy(engine, list(item.prompt_ids), 6)


def test_seeded_sampling_repeats_whatever_shares_the_batch(engine: OnnxEngine) -> None:
    seeded = SamplingParams(temperature=0.9, top_p=0.8, seed=1234)
    prompt = engine.encode("Once upon a time")
    alone = engine.start([GenerationInput("s", prompt, 16, seeded)])
    run_all(alone)
    crowd = engine.start(
        [
            GenerationInput("x", engine.encode("other work"), 5, SamplingParams(temperature=1.0)),
            GenerationInput("s", prompt, 16, seeded),
            GenerationInput("g", engine.encode("more"), 16, GREEDY),
        ]
    )
    run_all(crowd)
    assert alone.token_ids("s") == crowd.token_ids("s")
    other = engine.start([GenerationInput("s", prompt, 16, seeded.model_copy(update={"seed": 99}))])
    run_all(other)
    assert other.token_ids("s") != alone.token_ids("s")


def test_stop_string_cuts_the_text_and_is_not_sent(engine: OnnxEngine) -> None:
    prompt = engine.encode("The sauce chef")
    full = text_of(run_all(engine.start([GenerationInput("a", prompt, 24, GREEDY)]))["a"])
    stop = full[10:14]
    expected = full[: full.index(stop)]
    stopped = GREEDY.model_copy(update={"stop": ["never appears", stop]})
    deltas = run_all(engine.start([GenerationInput("a", prompt, 24, stopped)]))["a"]
    assert text_of(deltas) == expected
    assert deltas[-1].finish_reason == FinishReason.STOP
    assert deltas[-1].completion_tokens < 24


def test_context_limit_ends_with_length(engine: OnnxEngine) -> None:
    room = 3
    long_prompt = (engine.encode("the order " * 400))[: engine.max_context - room]
    too_long = engine.encode("the order " * 400)[: engine.max_context]
    run = engine.start(
        [GenerationInput("near", long_prompt, 50, GREEDY), GenerationInput("over", too_long, 50, GREEDY)]
    )
    out = run_all(run)
    assert (out["near"][-1].finish_reason, out["near"][-1].completion_tokens) == (FinishReason.LENGTH, room)
    assert out["over"] == [TokenDelta("over", "", 0, FinishReason.LENGTH)]


def test_builtin_output_is_printable(engine: OnnxEngine) -> None:
    inputs = [
        GenerationInput(
            f"p{seed}", engine.encode("Hello, how are you?"), 40, SamplingParams(temperature=1.5, seed=seed)
        )
        for seed in range(8)
    ]
    for deltas in run_all(engine.start(inputs)).values():
        text = text_of(deltas)
        assert text and text.isprintable(), repr(text)


def test_empty_prompt_and_chat_template(engine: OnnxEngine) -> None:
    out = run_all(engine.start([GenerationInput("e", [], 3, GREEDY)]))
    assert out["e"][-1].completion_tokens == 3
    rendered = engine.render_chat(
        [ChatMessage(role="system", content="Be brief."), ChatMessage(role="user", content="Hi")]
    )
    assert rendered == "system: Be brief.\nuser: Hi\nassistant:"


def test_warmup_then_close(model_cache_dir: Path) -> None:
    eng = load_engine(Settings(model="builtin:tiny", model_cache_dir=model_cache_dir))
    eng.warmup(batch_size=4)
    eng.close()
    with pytest.raises(RuntimeError, match="closed"):
        eng.start([GenerationInput("x", [1], 1, GREEDY)])


# --- pure parts: what ends a sequence, and stop strings over streamed pieces ---


def seq(engine: OnnxEngine, *, sampling: SamplingParams, budget: int = 10) -> SequenceState:
    item = GenerationInput("q", [1, 2], budget, sampling)
    return SequenceState(item, prompt_ids=[1, 2], decoder=engine.tokenizer, eos_ids={0}, max_context=100)


def chef_id(engine: OnnxEngine) -> int:
    word = engine.tokenizer.token_to_id("Ġchef")  # " chef", one token of the built-in vocabulary
    assert word is not None
    return word


def test_eos_stops_unless_ignored(engine: OnnxEngine) -> None:
    word = chef_id(engine)
    s = seq(engine, sampling=SamplingParams(temperature=0.0))
    assert s.advance(word) == TokenDelta("q", " chef", 1, None)
    assert s.advance(0) == TokenDelta("q", "", 2, FinishReason.STOP)
    s = seq(engine, sampling=GREEDY, budget=2)
    assert s.advance(0) == TokenDelta("q", "", 1, None)
    assert s.advance(word) == TokenDelta("q", " chef", 2, FinishReason.LENGTH)


def test_held_stop_prefix_is_released_when_the_sequence_ends(engine: OnnxEngine) -> None:
    word = chef_id(engine)
    s = seq(engine, sampling=SamplingParams(temperature=0.0, stop=[" chef!"]), budget=2)
    assert s.advance(word) == TokenDelta("q", "", 1, None)  # might be the start of " chef!"
    assert s.advance(0) == TokenDelta("q", " chef", 2, FinishReason.STOP)


@pytest.mark.parametrize(
    ("stops", "pieces", "sent", "stopped"),
    [
        ([], ["a", "b"], ["a", "b"], False),
        (["END"], ["abc E", "N", "D tail"], ["abc ", "", ""], True),
        (["END"], ["abc E", "N", "o"], ["abc ", "", "ENo"], False),
        (["\n\n", "###"], ["one\n", "\ntwo"], ["one", ""], True),
        (["ab", "b"], ["xab"], ["x"], True),  # the earliest match wins, whichever stop it is
        (["aab"], ["a", "a", "a", "b"], ["", "", "a", ""], True),
    ],
)
def test_stop_matcher(stops: list[str], pieces: list[str], sent: list[str], stopped: bool) -> None:
    matcher = StopMatcher(stops)
    results = [matcher.push(p) for p in pieces]
    assert [text for text, _ in results] == sent
    assert results[-1][1] is stopped
    assert not any(hit for _, hit in results[:-1])


def test_min_tokens_holds_off_stop_strings(engine: OnnxEngine) -> None:
    word = chef_id(engine)
    s = seq(engine, sampling=SamplingParams(temperature=0.0, stop=[" chef"], min_tokens=2))
    assert s.advance(word) == TokenDelta("q", " chef", 1, None)  # the first token is not searched
    assert s.advance(word) == TokenDelta("q", "", 2, FinishReason.STOP)
