"""What every vector index of the semantic cache offers, and the checks they share.

A vector is stored and searched L2-normalized, so the similarity of two entries is
their dot product: cosine similarity, in [-1, 1], higher is closer. The embedder
already returns unit vectors; the indexes normalize again anyway (a few microseconds)
so a stray unnormalized vector cannot silently outrank every real match.

Keys are the cache's own integer ids (signed 64-bit). Indexes do not own the entries:
they only answer "which keys are nearest to this vector".
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

__all__ = [
    "DIM",
    "Hit",
    "Keys",
    "Vector",
    "VectorIndex",
    "Vectors",
    "as_batch",
    "as_key",
    "as_vector",
]

# all-MiniLM-L6-v2's sentence embedding size.
DIM = 384

Vector = npt.NDArray[np.float32]
Vectors = npt.NDArray[np.float32]
Keys = npt.NDArray[np.int64]
# (key, cosine similarity), best first in every result list.
Hit = tuple[int, float]


@runtime_checkable
class VectorIndex(Protocol):
    """Nearest neighbours by cosine similarity over (key, vector) entries.

    Adding a key that is already present replaces its vector. Not thread-safe: the
    cache calls an index from its event loop only (see each implementation).
    """

    @property
    def dim(self) -> int: ...

    def add(self, key: int, vector: npt.ArrayLike) -> None: ...

    def add_many(self, keys: Sequence[int] | npt.ArrayLike, vectors: npt.ArrayLike) -> None: ...

    def remove(self, key: int) -> None:
        """Forget `key`; `KeyError` if it is not in the index."""
        ...

    def search(self, vector: npt.ArrayLike, k: int) -> list[Hit]:
        """Up to `k` entries nearest to `vector`, most similar first."""
        ...

    def snapshot(self) -> tuple[Keys, Vectors]:
        """Copies of every live key and its (normalized) vector, in no particular order."""
        ...

    def __len__(self) -> int: ...

    def __contains__(self, key: object) -> bool: ...


def as_key(key: int) -> int:
    """`key` as a plain int that fits the indexes' signed 64-bit key arrays."""
    value = operator.index(key)
    if not -(2**63) <= value < 2**63:
        raise ValueError(f"key {value} does not fit in a signed 64-bit integer")
    return value


def as_vector(vector: npt.ArrayLike, dim: int) -> Vector:
    """`vector` as a fresh, contiguous, L2-normalized float32 array of shape (dim,)."""
    array = np.asarray(vector, dtype=np.float32)
    if array.shape != (dim,):
        raise ValueError(f"expected a vector of shape ({dim},), got {array.shape}")
    norm = float(np.sqrt(np.dot(array, array)))
    # NaN and infinity both fail this test, as does the zero vector (no direction).
    if not (norm > 0.0 and np.isfinite(norm)):
        raise ValueError("vector must be finite and non-zero")
    return array / np.float32(norm)


def as_batch(
    keys: Sequence[int] | npt.ArrayLike, vectors: npt.ArrayLike, dim: int
) -> tuple[Keys, Vectors]:
    """Keys and normalized vectors of a batch; where a key repeats, its last vector wins."""
    key_array = np.asarray(keys)
    if key_array.size == 0:
        key_array = key_array.astype(np.int64)
    if key_array.ndim != 1 or not np.issubdtype(key_array.dtype, np.integer):
        raise ValueError("keys must be a one-dimensional sequence of integers")
    if key_array.dtype == np.uint64 and key_array.size and int(key_array.max()) >= 2**63:
        raise ValueError("keys must fit in a signed 64-bit integer")
    key_array = key_array.astype(np.int64, copy=False)
    matrix = np.asarray(vectors, dtype=np.float32)
    if matrix.ndim != 2 or matrix.shape != (len(key_array), dim):
        raise ValueError(f"expected vectors of shape ({len(key_array)}, {dim}), got {matrix.shape}")
    norms = np.sqrt(np.einsum("ij,ij->i", matrix, matrix))
    if not bool(np.all(np.isfinite(norms) & (norms > 0.0))):
        raise ValueError("every vector must be finite and non-zero")
    matrix = matrix / norms[:, None]
    unique, first = np.unique(key_array[::-1], return_index=True)
    if len(unique) != len(key_array):
        # Reversed, np.unique's first occurrence is the last one of the original order.
        last = np.sort(len(key_array) - 1 - first)
        key_array, matrix = key_array[last], matrix[last]
    return key_array, np.ascontiguousarray(matrix, dtype=np.float32)
