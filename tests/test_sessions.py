"""The pure parts of conversation state: merging a turn into its history, trimming to the context."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from consumer.session import (
    CorruptSession,
    Fit,
    SessionDoc,
    drop_points,
    fit_history,
    merge_turn,
    new_turns_from,
    plan_turn,
)
from schemas.requests import ChatMessage


def sys(text: str) -> ChatMessage:
    return ChatMessage(role="system", content=text)


def u(text: str) -> ChatMessage:
    return ChatMessage(role="user", content=text)


def a(text: str) -> ChatMessage:
    return ChatMessage(role="assistant", content=text)


def words(conversation: list[ChatMessage]) -> int:
    """A stand-in tokenizer: one token per word plus one per message (its role marker)."""
    return sum(len(m.content.split()) + 1 for m in conversation)


H = [u("one"), a("two"), u("three"), a("four")]


@pytest.mark.parametrize(
    ("history", "incoming", "first_new"),
    [
        ([], [u("hi")], 0),  # a new conversation: everything is new
        (H, [u("five")], 0),  # only the new turn
        (H, [*H, u("five")], 4),  # the whole conversation resent (OpenAI style)
        (H, [u("zero"), a("half"), *H, u("five")], 6),  # resent with older turns than we kept (we trimmed)
        (H, [u("three"), a("four"), u("five")], 2),  # only a tail resent
        (H, [a("four"), u("five")], 1),
        (H, [u("three"), u("five")], 0),  # no run ending with the last reply: all new
        (H, [u("one"), a("two"), u("five")], 0),  # an older part only, not ending where history ends
        (H, [*H, u("five"), a("four"), u("six")], 4),  # the latest complete run counts
        (H, [*H], 4),  # nothing new: regenerate from the stored conversation
    ],
)
def test_new_turns_from(history: list[ChatMessage], incoming: list[ChatMessage], first_new: int) -> None:
    assert new_turns_from(history, incoming) == first_new


def test_merge_keeps_the_stored_system_and_a_new_one_replaces_it() -> None:
    stored = [sys("be brief"), *H]
    m = merge_turn(stored, [u("five")])
    assert m.system == sys("be brief") and not m.system_changed
    assert m.body == [*H, u("five")] and m.new == (u("five"),)

    resent = merge_turn(stored, [sys("be brief"), *H, u("five")])
    assert resent.new == (u("five"),) and not resent.system_changed

    changed = merge_turn(stored, [sys("be verbose"), u("five")])
    assert changed.system == sys("be verbose") and changed.system_changed
    assert changed.history == tuple(H)

    first = merge_turn([], [sys("hello"), u("hi")])
    assert first.system == sys("hello") and first.system_changed and first.new == (u("hi"),)


@pytest.mark.parametrize(
    ("body", "points"),
    [
        ([u("q")], [0]),
        ([u("q1"), a("r1"), u("q2")], [0, 2]),
        ([a("greeting"), u("q1"), a("r1"), u("q2")], [0, 1, 3]),
        ([u("q1"), a("r1"), u("q2"), a("r2"), u("q3"), u("q3b")], [0, 2, 4, 5]),
    ],
)
def test_drop_points_keep_a_user_turn_first(body: list[ChatMessage], points: list[int]) -> None:
    assert drop_points(body) == points


LONG = [u("a b c d"), a("e f g h"), u("i j k l"), a("m n o p"), u("q r s t")]  # 5 tokens each


@pytest.mark.parametrize(
    ("system", "budget", "expected"),
    [
        (None, 25, Fit(dropped=0, tokens=25, fits=True)),  # fits: nothing dropped
        (None, 24, Fit(dropped=2, tokens=15, fits=True)),  # one user+assistant pair goes
        (None, 15, Fit(dropped=2, tokens=15, fits=True)),
        (None, 14, Fit(dropped=4, tokens=5, fits=True)),  # only the turn being answered is left
        (None, 4, Fit(dropped=4, tokens=5, fits=False)),  # even that is too long
        (sys("x y"), 28, Fit(dropped=0, tokens=28, fits=True)),
        (sys("x y"), 27, Fit(dropped=2, tokens=18, fits=True)),  # the system message stays
        (sys("x y"), 8, Fit(dropped=4, tokens=8, fits=True)),
        (sys("x y"), 7, Fit(dropped=4, tokens=8, fits=False)),
    ],
)
def test_fit_history_trims_oldest_first_keeping_the_system_message(
    system: ChatMessage | None, budget: int, expected: Fit
) -> None:
    seen: list[list[ChatMessage]] = []

    def count(conversation: list[ChatMessage]) -> int:
        seen.append(conversation)
        if system is not None:
            assert conversation[0] == system, "the system message is never trimmed"
        assert conversation[-1] == LONG[-1], "the turn being answered is never trimmed"
        return words(conversation)

    assert fit_history(system, LONG, budget=budget, count=count) == expected
    if expected.dropped == 0:
        assert len(seen) == 1, "no trimming needed: one render"


@pytest.mark.parametrize(
    ("system", "budget", "headroom", "expected"),
    [
        (None, 25, 0.25, Fit(dropped=0, tokens=25, fits=True)),  # fits: no trim, whatever the headroom
        (None, 16, 0.0, Fit(dropped=2, tokens=15, fits=True)),  # the fewest that fit
        (None, 16, 0.25, Fit(dropped=4, tokens=5, fits=True)),  # 15 would leave 1 of 16 free: two more go
        (None, 20, 0.25, Fit(dropped=2, tokens=15, fits=True)),  # 15 leaves a quarter of 20 free
        (sys("x y"), 8, 0.25, Fit(dropped=4, tokens=8, fits=True)),  # no drop point leaves 2 free: the fewest that fit
    ],
)
def test_a_trim_leaves_headroom_so_the_next_turns_keep_their_start(
    system: ChatMessage | None, budget: int, headroom: float, expected: Fit
) -> None:
    assert fit_history(system, LONG, budget=budget, count=words, headroom=headroom) == expected


def test_fit_history_renders_logarithmically_many_times() -> None:
    body = [m for i in range(200) for m in (u(f"question {i}"), a(f"answer {i}"))] + [u("last")]
    calls = 0

    def count(conversation: list[ChatMessage]) -> int:
        nonlocal calls
        calls += 1
        return words(conversation)

    fit = fit_history(sys("s"), body, budget=50, count=count)
    assert fit.fits and fit.tokens <= 50 and fit.dropped % 2 == 0
    assert words([sys("s"), *body[fit.dropped - 2 :]]) > 50, "the fewest messages were dropped"
    assert calls <= 10


def test_plan_turn_splits_trimming_between_stored_history_and_new_turns() -> None:
    stored = SessionDoc(messages=(sys("x y"), *LONG[:4]), turns=2)
    turn, fit = plan_turn(stored, [LONG[4]], budget=27, count=words, session_id="s", model="m", ttl_s=60)
    assert fit.dropped == 2
    assert turn.messages == [sys("x y"), *LONG[2:]]
    assert turn.append.drop == 2 and turn.append.append == (LONG[4],) and turn.append.system is None
    assert turn.append.continues, "it continues a stored conversation"

    # a first call with a long conversation: the oldest of its own turns are trimmed and not stored
    turn, fit = plan_turn(SessionDoc(), LONG, budget=14, count=words, session_id="s", model="m", ttl_s=60)
    assert turn.append.drop == 0 and turn.append.append == (LONG[4],) and turn.append.trimmed == 4

    patch = json.loads(
        turn.append.patch_json(reply="ok", completion_tokens=1, request_id="r", now=datetime(2025, 1, 1, tzinfo=UTC))
    )
    assert patch["append"] == [{"role": "user", "content": "q r s t"}, {"role": "assistant", "content": "ok"}]
    assert patch["prompt_tokens"] == 5 and patch["request_id"] == "r" and "system" not in patch
    assert "continues" not in patch, "a first turn creates its session, whatever happened meanwhile"


def test_a_corrupt_stored_session_is_reported() -> None:
    assert SessionDoc.from_json(None) == SessionDoc()
    with pytest.raises(CorruptSession, match="DELETE"):
        SessionDoc.from_json('{"messages": [{"role": "robot", "content": "x"}]}')
    with pytest.raises(CorruptSession):
        SessionDoc.from_json("not json")
