"""The connection to Redis that `RedisShared` and `RedisCounters` share.

One URL says where Redis is and how to use it::

    redis://[[user]:password@]host:port/db?prefix=areion:&timeout=1&connect_timeout=0.5

- `prefix` (default `areion:`) starts every key and channel, so several deployments
  of Areion (or tests) can share one Redis without seeing each other's state;
- `connect_timeout` and `timeout` (seconds) bound the TCP connect and each reply, so
  an operation on a Redis that is down fails within about a second instead of
  hanging a call.

Any other parameter goes to redis-py as it is (`rediss://` for TLS).

Operations go over one pipelined connection per process (`RedisPipe`): every caller
writes its command at once and the replies come back in order, matched to their
callers. Admission sends seven scripts per call, one after another; on the
development machine a PING took 50-60 µs through redis-py's pool and 20-25 µs over
the pipe, which is what brings admission over Redis under its 300 µs target.

Every error from Redis or the socket becomes `BackendUnavailableError`: the caller
refuses the call (503) rather than serving it unlimited.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
from collections.abc import Awaitable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from areion.errors import BackendUnavailableError, ConfigError

try:
    import hiredis
    import redis.asyncio as aioredis
    from redis.asyncio.connection import Connection, parse_url
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import NoScriptError, RedisError, ResponseError
    from redis.exceptions import TimeoutError as RedisTimeoutError
except ImportError as missing:  # pragma: no cover - the dev extra installs it
    raise ConfigError(
        "shared: a redis:// URL needs the redis and hiredis packages; install them with "
        "pip install 'areion[redis]'"
    ) from missing

__all__ = ["RedisOptions", "RedisPipe", "Script", "aioredis", "number", "unavailable"]

DEFAULT_PREFIX = "areion:"


@dataclass(slots=True, frozen=True, kw_only=True)
class RedisOptions:
    """Where Redis is and how long to wait for it."""

    url: str
    """The URL for redis-py (Areion's own parameters taken out)."""
    prefix: str = DEFAULT_PREFIX
    """Starts every key and channel."""
    connect_timeout_s: float = 0.5
    """TCP connect timeout."""
    timeout_s: float = 1.0
    """Longest wait for one reply."""

    @property
    def where(self) -> str:
        """host:port/db, for messages (never the password)."""
        parts = urlsplit(self.url)
        return f"{parts.hostname or '127.0.0.1'}:{parts.port or 6379}{parts.path or '/0'}"

    @classmethod
    def from_url(cls, url: str) -> RedisOptions:
        parts = urlsplit(url)
        if parts.scheme not in ("redis", "rediss"):
            raise ConfigError(
                f"shared: unsupported URL scheme '{parts.scheme}'; use "
                "redis://host:port/db?prefix=areion:"
            )
        ours: dict[str, str] = {}
        theirs: list[tuple[str, str]] = []
        for name, value in parse_qsl(parts.query, keep_blank_values=True):
            if name in ("prefix", "timeout", "connect_timeout"):
                ours[name] = value
            else:
                theirs.append((name, value))
        try:
            options = cls(
                url=urlunsplit(parts._replace(query=urlencode(theirs))),
                prefix=ours.get("prefix", DEFAULT_PREFIX),
                connect_timeout_s=float(ours.get("connect_timeout", 0.5)),
                timeout_s=float(ours.get("timeout", 1.0)),
            )
        except ValueError as error:
            raise ConfigError(f"shared: invalid parameter in the Redis URL: {error}") from error
        if not (options.timeout_s > 0 and options.connect_timeout_s > 0):
            raise ConfigError("shared: the Redis URL's timeout and connect_timeout must be > 0")
        return options

    def client(self) -> aioredis.Redis:
        """A redis-py client on a small pool of its own (the pub/sub listener's)."""
        return aioredis.Redis.from_url(
            self.url,
            max_connections=4,
            socket_connect_timeout=self.connect_timeout_s,
            socket_timeout=self.timeout_s,
            # No retries of its own (redis-py's default backs off for seconds): the
            # listener sees a broken connection at once and connects again itself.
            retry=Retry(NoBackoff(), 0),
        )


@contextlib.contextmanager
def unavailable(options: RedisOptions) -> Iterator[None]:
    """Turn whatever Redis or the socket raises into `BackendUnavailableError`."""
    try:
        yield
    except (RedisConnectionError, RedisTimeoutError, OSError) as error:
        raise BackendUnavailableError(
            f"the limit store (Redis at {options.where}) is down: {error or type(error)}; "
            "calls that need limits, budgets, slots or leases are refused until it is back",
            backend="redis",
        ) from error
    except RedisError as error:
        raise BackendUnavailableError(
            f"the limit store (Redis at {options.where}) failed: {error}", backend="redis"
        ) from error


def number(value: float) -> str:
    """A float as Lua reads it back exactly (`repr` round-trips a double)."""
    return repr(float(value))


@dataclass(slots=True, frozen=True)
class Script:
    """A Lua script and its SHA-1, run with EVALSHA (loaded again when Redis lost it)."""

    text: str
    sha: str

    @classmethod
    def of(cls, text: str) -> Script:
        return cls(text, hashlib.sha1(text.encode()).hexdigest())


# hiredis's stub declares a tuple of one argument; it takes any number.
_pack: Any = hiredis.pack_command


class _Link(asyncio.Protocol):
    """One open connection and the replies it owes, in order: (future, deadline).

    redis-py connects it (TLS, AUTH, SELECT), then this protocol takes its transport
    over: a reply is parsed (hiredis) and handed to its caller in the callback that
    received it, with no reader task in between, and a command is written straight
    to the transport, so the order of commands is the order of `pending`.
    """

    def __init__(self, conn: Connection, pipe: RedisPipe) -> None:
        self.conn = conn
        self.pipe = pipe
        self.pending: collections.deque[tuple[asyncio.Future[Any], float]] = collections.deque()
        self.parser = hiredis.Reader(replyError=ResponseError)
        self.transport: asyncio.WriteTransport = conn._writer.transport  # type: ignore[union-attr]
        self.transport.set_protocol(self)
        self.watchdog: asyncio.TimerHandle | None = None
        self.closed = False

    def send(self, args: tuple[str | bytes | int, ...], deadline: float) -> asyncio.Future[Any]:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.pending.append((future, deadline))
        self.transport.write(_pack(args))
        return future

    def data_received(self, data: bytes) -> None:
        self.parser.feed(data)
        pending = self.pending
        while (reply := self.parser.gets()) is not False:
            if not pending:
                self.fail(RedisConnectionError("Redis sent a reply nobody asked for"))
                return
            future = pending.popleft()[0]
            if future.done():  # its caller gave up (cancelled)
                continue
            if isinstance(reply, ResponseError):
                message = str(reply)
                future.set_exception(
                    NoScriptError(message) if message.startswith("NOSCRIPT") else reply
                )
            else:
                future.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self.fail(RedisConnectionError(f"connection to Redis lost: {exc or 'closed by Redis'}"))

    def fail(self, error: Exception) -> None:
        """Close the connection; every caller still waiting gets `error`."""
        if self.pipe._link is self:
            self.pipe._link = None
        if self.watchdog is not None:
            self.watchdog.cancel()
        while self.pending:
            future = self.pending.popleft()[0]
            if not future.done():
                future.set_exception(error)
        if not self.closed:
            self.closed = True
            self.transport.close()
            # What redis-py's own close does; it warns of a connection collected unclosed.
            self.conn._writer = self.conn._reader = None


class RedisPipe:
    """One pipelined connection: commands from every task, replies in order.

    It connects on first use, in the running event loop. When the connection breaks
    (Redis restarted, or the oldest reply is more than `timeout_s` late), every caller
    still waiting fails and the next call connects again. Deadlines are checked by
    one timer per connection, four times per `timeout_s`, rather than one timer per
    call: a late reply fails within 1.25 x `timeout_s`.
    """

    def __init__(self, options: RedisOptions) -> None:
        self._options = options
        kwargs: dict[str, Any] = dict(parse_url(options.url))
        self._connection_class: type[Connection] = kwargs.pop("connection_class", Connection)
        # redis-py reads only the handshake, bounded by `_connect`. RESP2: RESP3 would
        # let Redis push messages between the replies.
        self._kwargs = {
            **kwargs,
            "socket_connect_timeout": options.connect_timeout_s,
            "socket_timeout": None,
            "protocol": 2,
        }
        self._link: _Link | None = None
        self._connecting: asyncio.Lock | None = None

    async def call(self, *args: str | bytes | int) -> Any:
        """Send one command; its reply (an error reply raises)."""
        link = self._link or await self._connect()
        deadline = asyncio.get_running_loop().time() + self._options.timeout_s
        return await link.send(args, deadline)

    async def run(self, script: Script, keys: Sequence[str], args: Sequence[str]) -> Any:
        """Run a script: EVALSHA, or SCRIPT LOAD first if Redis does not have it (it
        keeps scripts only until it restarts)."""
        try:
            return await self.call("EVALSHA", script.sha, len(keys), *keys, *args)
        except NoScriptError:
            await self.call("SCRIPT", "LOAD", script.text)
            return await self.call("EVALSHA", script.sha, len(keys), *keys, *args)

    def start(self, script: Script, keys: Sequence[str], args: Sequence[str]) -> Awaitable[Any]:
        """`run`, with the command sent now if connected, so Redis runs it before anything
        sent after this returns; the awaitable of its reply."""
        link = self._link
        if link is None:
            return self.run(script, keys, args)  # connects when awaited
        deadline = asyncio.get_running_loop().time() + self._options.timeout_s
        sent = link.send(("EVALSHA", script.sha, len(keys), *keys, *args), deadline)
        return self._reply(sent, script, keys, args)

    async def _reply(
        self, sent: asyncio.Future[Any], script: Script, keys: Sequence[str], args: Sequence[str]
    ) -> Any:
        try:
            return await sent
        except NoScriptError:  # Redis restarted since: nothing ran
            return await self.run(script, keys, args)

    async def aclose(self) -> None:
        link, self._link = self._link, None
        if link is not None:
            link.fail(RedisConnectionError("closed"))

    async def _connect(self) -> _Link:
        if self._connecting is None:
            self._connecting = asyncio.Lock()
        async with self._connecting:
            if self._link is not None:
                return self._link
            conn = self._connection_class(**self._kwargs)
            try:
                # The handshake (HELLO, AUTH, SELECT) reads with no socket timeout.
                async with asyncio.timeout(
                    self._options.connect_timeout_s + self._options.timeout_s
                ):
                    await conn.connect()  # type: ignore[no-untyped-call]
            except BaseException:
                await conn.disconnect(nowait=True)
                raise
            link = _Link(conn, self)
            self._link = link
            self._watch(link)
            return link

    def _watch(self, link: _Link) -> None:
        loop = asyncio.get_running_loop()
        if link.pending and link.pending[0][1] < loop.time():
            # Its reply may still come, or never: start over on a new connection.
            link.fail(
                RedisTimeoutError(f"no reply within {self._options.timeout_s}s (the URL's timeout)")
            )
            return
        link.watchdog = loop.call_later(self._options.timeout_s / 4, self._watch, link)
