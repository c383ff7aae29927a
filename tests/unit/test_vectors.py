"""The embedding cache's keys and the vector encodings of the embeddings API."""

from __future__ import annotations

import base64
import struct

from areion.cache.vectors import embedding_keys
from areion.types import EmbeddingRequest, EmbeddingResponse, pack_vector, unpack_vector


def _request(**fields: object) -> EmbeddingRequest:
    values: dict[str, object] = {"model": "emb", "input": ["a", "b", "a"], **fields}
    return EmbeddingRequest(**values)  # type: ignore[arg-type]


def test_each_input_has_its_key_and_a_repeat_the_same() -> None:
    first, second, third = embedding_keys("acme", _request())
    assert first == third != second


def test_whatever_changes_the_vector_changes_the_key() -> None:
    base = embedding_keys("acme", _request())[0]
    others = [
        embedding_keys("globex", _request())[0],
        embedding_keys("acme", _request(model="emb-2"))[0],
        embedding_keys("acme", _request(dimensions=64))[0],
        embedding_keys("acme", _request(extra={"input_type": "query"}))[0],
        embedding_keys("acme", _request(input=["a "]))[0],  # texts are keyed as sent
    ]
    assert base not in others and len(set(others)) == len(others)
    # What does not change the vector does not change the key.
    assert embedding_keys("acme", _request(user="u-7"))[0] == base


def test_a_token_array_is_not_its_text() -> None:
    assert (
        embedding_keys("acme", _request(input=[[64]]))[0]
        != embedding_keys("acme", _request(input=["a"]))[0]
    )


def test_base64_is_little_endian_float32_of_the_float_vector() -> None:
    vector = unpack_vector(pack_vector([0.1, -2.5, 3.0]))  # float32 values
    answer = EmbeddingResponse(model="m", vectors=[vector]).to_openai("base64")
    raw = base64.b64decode(answer["data"][0]["embedding"])
    assert list(struct.unpack("<3f", raw)) == vector
    floats = EmbeddingResponse(model="m", vectors=[vector]).to_openai()
    assert floats["data"][0]["embedding"] == vector
    assert floats["usage"] == {"prompt_tokens": 0, "total_tokens": 0}
    assert floats["object"] == "list" and floats["data"][0]["object"] == "embedding"
