"""`ChunkEvents`: a stream's events, the common ones written from a cached head."""

from __future__ import annotations

import orjson
from hypothesis import given
from hypothesis import strategies as st

from areion.server.sse import ChunkEvents
from areion.types import StreamChunk, ToolCallDelta, Usage

_TEXT = st.text(max_size=40)  # any unicode: quotes, backslashes, control characters...

_CHUNKS = st.builds(
    StreamChunk,
    id=st.sampled_from(["chatcmpl-1", "chatcmpl-2", 'odd "id" \\']),
    model=st.sampled_from(["gpt-4o-mini", "m\u00e9", ""]),
    created=st.sampled_from([0, 1733356800, 2**53]),
    index=st.sampled_from([0, 0, 0, 1]),
    role=st.sampled_from([None, None, None, "assistant"]),
    content=st.one_of(st.none(), _TEXT, _TEXT),
    tool_calls=st.sampled_from([None, None, [ToolCallDelta(index=0, id="c", name="f")]]),
    finish_reason=st.sampled_from([None, None, None, "stop"]),
    usage=st.sampled_from([None, None, None, Usage(prompt_tokens=3, completion_tokens=5)]),
)


@given(st.lists(_CHUNKS, max_size=12))
def test_every_event_is_the_json_of_its_chunk(chunks: list[StreamChunk]) -> None:
    event = ChunkEvents()  # one per stream: its cached head follows the chunks' changes
    for chunk in chunks:
        assert event(chunk) == b"data: " + orjson.dumps(chunk.to_openai()) + b"\n\n"


def test_a_text_chunk_reads_back_as_openai_sends_it() -> None:
    chunk = StreamChunk(id="chatcmpl-9", model="gpt-4o-mini", created=7, content='say "hi"\n')
    data = ChunkEvents()(chunk)
    assert data.startswith(b"data: ") and data.endswith(b"\n\n")
    assert orjson.loads(data[6:]) == {
        "id": "chatcmpl-9",
        "object": "chat.completion.chunk",
        "created": 7,
        "model": "gpt-4o-mini",
        "choices": [
            {
                "index": 0,
                "delta": {"content": 'say "hi"\n'},
                "finish_reason": None,
                "logprobs": None,
            }
        ],
    }
