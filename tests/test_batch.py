"""``brigade batch``: an OpenAI Batch API file checked whole, run through a real fleet's OpenAI endpoints, its
answers written as OpenAI's batch output, and a rerun sending only what is not answered yet."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from brigade.batch import BatchInputError, BatchLine, answered_ids, read_batch, run_batch, unanswered
from brigade.cli import app
from brigade.inprocess import fleet
from schemas.settings import Settings
from tests.kafka_reader import read_records


def line(custom_id: str, url: str = "/v1/chat/completions", **body: Any) -> str:
    return json.dumps({"custom_id": custom_id, "method": "POST", "url": url, "body": body})


@pytest.mark.parametrize(
    ("lines", "needle"),
    [
        (["{not json"], "line 1: not JSON"),
        (["[1]"], "line 1: a JSON object is expected"),
        ([line("a"), "", line("a")], "line 3: custom_id 'a' is also line 1's"),
        (
            [json.dumps({"custom_id": "a", "method": "GET", "url": "/v1/completions", "body": {}})],
            'method must be "POST"',
        ),
        ([line("a", url="/v1/embeddings")], "url must be one of /v1/chat/completions, /v1/completions"),
        ([line("a", stream=True)], "body.stream must be false or absent"),
        ([json.dumps({"custom_id": "", "method": "POST", "url": "/v1/completions", "body": {}})], "custom_id must be"),
    ],
)
def test_a_bad_file_is_refused_whole_naming_the_line(lines: list[str], needle: str) -> None:
    with pytest.raises(BatchInputError, match=needle):
        read_batch(lines)


def test_answers_already_written_are_not_sent_again(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    lines = [BatchLine("a", "/v1/completions", {}), BatchLine("b", "/v1/completions", {})]
    assert unanswered(lines, out) == lines
    out.write_text(json.dumps({"custom_id": "a"}) + '\n{"custom_id": "b", "respo')  # b's line torn by a kill
    assert answered_ids(out.read_text().splitlines()) == {"a"}
    assert unanswered(lines, out) == lines[1:]


async def test_a_batch_runs_through_the_fleet_and_resumes(
    settings: Settings, topics: list[str], tmp_path: Path
) -> None:
    model = settings.model
    source = tmp_path / "in.jsonl"
    source.write_text(
        "\n".join(
            [
                line("chat-1", model=model, messages=[{"role": "user", "content": "Hi"}], max_tokens=3),
                line("text-1", url="/v1/completions", model=model, prompt="Once", max_tokens=2, n=2),
                line("bad-1", model=model, messages=[{"role": "user", "content": "Hi"}], max_tokens=99999),
            ]
        )
        + "\n"
    )
    out = tmp_path / "out.jsonl"
    requests = read_batch(source.read_text().splitlines())
    async with fleet(settings, classes=["small"]) as f:
        first = await run_batch(f.url, unanswered(requests, out)[:2], out, in_flight=2, priority=5)
        assert (first.sent, first.ok, first.refused, first.failed) == (2, 2, 0, 0)
        rest = unanswered(requests, out)
        assert [r.custom_id for r in rest] == ["bad-1"], "a rerun sends only what has no answer"
        second = await run_batch(f.url, rest, out)
    assert (second.sent, second.ok, second.refused) == (1, 0, 1)
    answers = {a["custom_id"]: a for a in map(json.loads, out.read_text().splitlines())}
    assert set(answers) == {"chat-1", "text-1", "bad-1"}
    chat = answers["chat-1"]["response"]
    assert chat["status_code"] == 200 and chat["body"]["object"] == "chat.completion"
    assert chat["request_id"] == chat["body"]["id"] and answers["chat-1"]["error"] is None
    assert chat["body"]["usage"]["completion_tokens"] <= 3
    assert len(answers["text-1"]["response"]["body"]["choices"]) == 2
    bad = answers["bad-1"]["response"]
    assert bad["status_code"] == 422 and "max_tokens=99999" in bad["body"]["error"]["message"]
    published = await read_records(settings.kafka_bootstrap, settings.names.request_topic("small"), count=3)
    assert [json.loads(r.value)["priority"] for r in published] == [5, 5, 5], "--priority where a body sets none"


def test_the_command_refuses_a_bad_file_before_sending(tmp_path: Path) -> None:
    source = tmp_path / "in.jsonl"
    source.write_text(line("a") + "\n" + line("a") + "\n")
    result = CliRunner().invoke(app, ["batch", str(source), "-o", str(tmp_path / "out.jsonl")])
    assert result.exit_code == 2
    assert "line 2: custom_id 'a' is also line 1's" in result.output
    assert not (tmp_path / "out.jsonl").exists()
