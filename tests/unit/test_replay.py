"""ReplayProvider over small RouterBench-format recordings written by the tests."""

from __future__ import annotations

import asyncio
import csv
from pathlib import Path

import pytest

from areion.config import ModelConfig
from areion.errors import ConfigError, ReplayMissError, UnknownModelError
from areion.providers import replay
from areion.providers.replay import ReplayProvider, load_table, normalize_prompt
from areion.types import ChatRequest, Message

MULTILINE = "Which is a mammal?\nA) shark\nB) whale\nPrint only the letter.\nAnswer:"
QUOTED = 'Here\'s "the" answer, with a comma.\nAnd a second line.'
LONG = "Write a function that " + "counts things " * 20


def _write(path: Path, models: list[str], rows: list[dict[str, object]]) -> Path:
    """A RouterBench-shaped CSV: list-literal prompts and answers, one score per model."""
    header = ["", "sample_id", "prompt", "eval_name", *models]
    header += [f"{m}|model_response" for m in models]
    header += [f"{m}|total_cost" for m in models]
    header.append("oracle_model_to_route_to")
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        for number, row in enumerate(rows):
            prompt = row["prompt"]
            out: list[object] = [number, row["id"], repr(prompt), row["task"]]
            answers = row["answers"]
            assert isinstance(answers, dict)
            out += [answers[m][2] for m in models]
            out += [repr([answers[m][0]]) for m in models]
            out += [answers[m][1] for m in models]
            out.append(models[0])
            writer.writerow(out)
    return path


@pytest.fixture
def recording(tmp_path: Path) -> Path:
    return _write(
        tmp_path / "arc.csv",
        ["gpt-4-1106-preview", "mistralai/mixtral-8x7b-chat"],
        [
            {
                "id": "arc.1",
                "task": "arc-challenge",
                "prompt": [MULTILINE],
                "answers": {
                    "gpt-4-1106-preview": ("B", 0.00533, 1.0),
                    "mistralai/mixtral-8x7b-chat": ("A\n", 0.0003192, 0.0),
                },
            },
            {
                "id": "mbpp.7",
                "task": "mbpp",
                "prompt": [LONG],
                "answers": {
                    "gpt-4-1106-preview": (QUOTED, 0.0064, 1.0),
                    "mistralai/mixtral-8x7b-chat": ("def f(): pass", 0.00018, ""),
                },
            },
            {
                "id": "two.1",
                "task": "chat",
                "prompt": ["First turn.", "Second turn."],
                "answers": {
                    "gpt-4-1106-preview": ("Both seen.", 0.001, 1.0),
                    "mistralai/mixtral-8x7b-chat": ("Second only.", 0.0001, 0.0),
                },
            },
        ],
    )


def _provider(data: Path, model: str = "gpt-4-1106-preview") -> ReplayProvider:
    config = ModelConfig(name="replayed", provider="replay", model=model, data=str(data))
    return ReplayProvider(config, deployment="replay-1")


def _ask(*messages: Message) -> ChatRequest:
    return ChatRequest(model="replayed", messages=list(messages))


async def test_answers_with_the_recorded_text_and_cost(recording: Path) -> None:
    provider = _provider(recording)
    response = await provider.complete(_ask(Message(role="user", content=MULTILINE)))
    assert response.message.role == "assistant"
    assert response.message.content == "B"
    assert response.choices[0].finish_reason == "stop"
    assert response.cost_usd == 0.00533
    assert response.usage is None
    assert response.model == "gpt-4-1106-preview"

    quoted = await provider.complete(_ask(Message(role="user", content=LONG)))
    assert quoted.message.content == QUOTED
    assert quoted.cost_usd == 0.0064


async def test_model_without_org_prefix_resolves(recording: Path) -> None:
    provider = _provider(recording, "mixtral-8x7b-chat")
    assert provider.model == "mistralai/mixtral-8x7b-chat"
    response = await provider.complete(_ask(Message(role="user", content=MULTILINE)))
    assert response.message.content == "A\n"
    assert response.cost_usd == 0.0003192


async def test_match_ignores_whitespace(recording: Path) -> None:
    provider = _provider(recording)
    messy = "  Which is a mammal?   A) shark\n\nB) whale Print only the letter.\tAnswer:  "
    response = await provider.complete(_ask(Message(role="user", content=messy)))
    assert response.message.content == "B"


async def test_user_messages_join_and_system_is_ignored(recording: Path) -> None:
    provider = _provider(recording)
    response = await provider.complete(
        _ask(
            Message(role="system", content="You are helpful."),
            Message(role="user", content="First turn."),
            Message(role="user", content=[{"type": "text", "text": "Second turn."}]),
        )
    )
    assert response.message.content == "Both seen."


async def test_whole_conversation_text_matches(recording: Path) -> None:
    provider = _provider(recording)
    response = await provider.complete(
        _ask(
            Message(role="system", content="First turn."),
            Message(role="user", content="Second turn."),
        )
    )
    assert response.message.content == "Both seen."


async def test_unknown_prompt_is_a_replay_miss(recording: Path) -> None:
    provider = _provider(recording)
    prompt = "Tell me something that was never recorded " + "x" * 100
    with pytest.raises(ReplayMissError) as caught:
        await provider.complete(_ask(Message(role="user", content=prompt)))
    message = caught.value.message
    assert str(recording) in message
    assert prompt[:80] in message
    assert prompt[:81] not in message
    assert "not in the replay recording" in message


def test_unknown_model_fails_at_construction_naming_known_models(recording: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        _provider(recording, "claude-v9")
    assert "claude-v9" in caught.value.message
    assert "gpt-4-1106-preview" in caught.value.message
    assert "mistralai/mixtral-8x7b-chat" in caught.value.message


def test_table_lookup_of_unknown_model(recording: Path) -> None:
    table = load_table(recording)
    with pytest.raises(UnknownModelError, match="gpt-4-1106-preview"):
        table.lookup(MULTILINE, "claude-v9")


def test_missing_data_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        _provider(tmp_path / "nope.csv")
    with pytest.raises(ConfigError, match=r"no \.csv files"):
        _provider(tmp_path)


def test_load_table(recording: Path) -> None:
    table = load_table(recording)
    assert table is load_table(str(recording))
    assert table.models == ["gpt-4-1106-preview", "mistralai/mixtral-8x7b-chat"]
    assert len(table) == 3
    assert table.prompts[0] == MULTILINE
    assert table.prompts[2] == "First turn.\nSecond turn."
    assert table.sample_ids == ["arc.1", "mbpp.7", "two.1"]
    assert table.eval_names == ["arc-challenge", "mbpp", "chat"]
    record = table.lookup(normalize_prompt(LONG), "gpt-4-1106-preview")
    assert record is not None
    assert (record.response, record.cost_usd, record.score) == (QUOTED, 0.0064, 1.0)
    assert table.score(MULTILINE, "mixtral-8x7b-chat") == 0.0
    assert table.score(LONG, "mistralai/mixtral-8x7b-chat") is None
    assert table.lookup("unrecorded", "gpt-4-1106-preview") is None


async def test_provider_score(recording: Path) -> None:
    provider = _provider(recording)
    assert await provider.score(MULTILINE) == 1.0
    assert await provider.score(MULTILINE, "mistralai/mixtral-8x7b-chat") == 0.0
    assert await provider.score("unrecorded") is None


async def test_folder_of_csvs(tmp_path: Path) -> None:
    folder = tmp_path / "recordings"
    folder.mkdir()
    _write(
        folder / "a.csv",
        ["gpt-4-1106-preview", "claude-v2"],
        [
            {
                "id": "a.1",
                "task": "a",
                "prompt": ["Question from file a"],
                "answers": {"gpt-4-1106-preview": ("A!", 0.01, 1.0), "claude-v2": ("a", 0.02, 0.0)},
            }
        ],
    )
    _write(
        folder / "b.csv",
        ["gpt-4-1106-preview"],
        [
            {
                "id": "b.1",
                "task": "b",
                "prompt": ["Question from file b"],
                "answers": {"gpt-4-1106-preview": ("B!", 0.03, 1.0)},
            }
        ],
    )
    (folder / "notes.txt").write_text("not a recording")

    provider = _provider(folder)
    first = await provider.complete(_ask(Message(role="user", content="Question from file a")))
    second = await provider.complete(_ask(Message(role="user", content="Question from file b")))
    assert (first.message.content, first.cost_usd) == ("A!", 0.01)
    assert (second.message.content, second.cost_usd) == ("B!", 0.03)

    claude = _provider(folder, "claude-v2")
    with pytest.raises(ReplayMissError, match="no answer from claude-v2"):
        await claude.complete(_ask(Message(role="user", content="Question from file b")))
    assert load_table(folder).models == ["gpt-4-1106-preview", "claude-v2"]


async def test_stream_reassembles_the_recorded_text(recording: Path) -> None:
    provider = _provider(recording)
    chunks = [c async for c in provider.stream(_ask(Message(role="user", content=LONG)))]
    assert chunks[0].role == "assistant"
    assert chunks[-1].finish_reason == "stop"
    assert "".join(c.content or "" for c in chunks) == QUOTED
    pieces = [c.content for c in chunks[1:-1]]
    assert len(pieces) > 1
    assert all(p and len(p) <= 20 for p in pieces)
    assert all(c.usage is None for c in chunks)
    assert len({c.id for c in chunks}) == 1


async def test_stream_of_unknown_prompt_raises_before_any_chunk(recording: Path) -> None:
    provider = _provider(recording)
    stream = provider.stream(_ask(Message(role="user", content="unrecorded")))
    with pytest.raises(ReplayMissError):
        await anext(stream)


async def test_concurrent_first_calls_load_once(
    recording: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reads: list[Path] = []
    real = replay._read_table

    def counting(path: Path) -> replay.ReplayTable:
        reads.append(path)
        return real(path)

    monkeypatch.setattr(replay, "_read_table", counting)
    provider = _provider(recording)
    request = _ask(Message(role="user", content=MULTILINE))
    answers = await asyncio.gather(*(provider.complete(request) for _ in range(8)))
    assert {a.message.content for a in answers} == {"B"}
    assert len(reads) == 1
