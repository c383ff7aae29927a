"""`provider: local`: embeddings from the bundled all-MiniLM-L6-v2, with no upstream.

The model is the runtime's shared `MiniLMEmbedder` (the one the semantic cache uses):
one copy of the weights per process, and concurrent calls, from here and from the
semantic tiers alike, are micro-batched into one ONNX Runtime run (see
`cache.embedding`). Vectors have 384 dimensions and unit length.

- Texts only: a token array names tokens of another tokenizer (OpenAI's), so it is
  refused (400); send the text.
- A text is read up to its first 256 word pieces, as sentence-transformers reads it
  (the model was trained on that).
- `dimensions` (1 to 384): the vector's first `dimensions` values, renormalized to unit
  length. MiniLM was not trained for shorter vectors (as Matryoshka models are), so
  they lose more than a model made for it; cosine similarity still works on them.
- Usage is counted with Areion's tokenizer (cl100k), the unit its `price` (0 unless
  configured) is in.

It serves no chat: a chat request is refused (400), by the runtime before it gets here.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, cast

import numpy as np

from areion.config import ModelConfig
from areion.errors import RequestError
from areion.tokenizer import count_each
from areion.types import (
    ChatRequest,
    ChatResponse,
    EmbeddingRequest,
    EmbeddingResponse,
    StreamChunk,
    Usage,
)

if TYPE_CHECKING:
    from areion.cache.embedding import Embedder

__all__ = ["LocalEmbeddingProvider"]

# Vectors shortened with `dimensions` are renormalized; a zero vector stays zero.
_TINY = 1e-12


class LocalEmbeddingProvider:
    """Embeddings from the runtime's shared MiniLM embedder, in this process."""

    def __init__(
        self, config: ModelConfig, *, deployment: str, embedder: Callable[[], Embedder]
    ) -> None:
        self.deployment = deployment
        self.model = config.upstream_model
        self.group = config.name
        self._embedder = embedder  # the runtime's, loaded on first use; not ours to close

    def _chat_refused(self) -> RequestError:
        return RequestError(
            f"model '{self.group}' serves embeddings only (provider local); send it to "
            "POST /v1/embeddings",
            param="model",
        )

    async def complete(self, request: ChatRequest) -> ChatResponse:
        raise self._chat_refused()

    async def stream(self, request: ChatRequest) -> AsyncIterator[StreamChunk]:
        raise self._chat_refused()
        yield  # an async generator, like the other providers' streams

    async def embed(self, request: EmbeddingRequest) -> EmbeddingResponse:
        if any(not isinstance(item, str) for item in request.input):
            raise RequestError(
                f"model '{self.group}' (provider local) takes text, not token arrays: its "
                "tokenizer is not the one they come from; send the texts",
                param="input",
            )
        texts = cast(list[str], request.input)
        embedder = self._embedder()
        dimensions = request.dimensions
        if dimensions is not None and not 1 <= dimensions <= embedder.dim:
            raise RequestError(
                f"model '{self.group}' makes vectors of {embedder.dim} dimensions; "
                f"dimensions must be 1 to {embedder.dim}, not {dimensions}",
                param="dimensions",
            )
        vectors = await embedder.embed(texts)
        if dimensions is not None and dimensions < embedder.dim:
            vectors = vectors[:, :dimensions]
            norms = np.linalg.norm(vectors, axis=1, keepdims=True)
            vectors = vectors / np.maximum(norms, _TINY)
        return EmbeddingResponse(
            model=self.model,
            vectors=vectors.astype(np.float32, copy=False).tolist(),
            usage=Usage(prompt_tokens=sum(count_each(texts))),
        )

    async def aclose(self) -> None:
        pass  # the embedder is the runtime's
