"""The task routes' Redis round trip, on connections of our own (the event loop's side).

A sync task costs its web worker one pipeline: queue the task, then BLPOP its answer. Through
redis.asyncio's pipeline that round trip was 0.17-0.19 ms of the worker's CPU, here 0.03-0.04
ms (BENCHMARKS.md, "The task routes' Redis round trip"): redis.asyncio takes a pool lock,
encodes every argument through several layers, and wraps every read in a timeout scope and a
retry. What is kept of redis-py: its command methods (a `Commands` list records what the
protocol and gateway helpers put on it, with redis-py's argument conventions), its URL parsing
and its exceptions (a Redis that is down or slow is a ConnectionError or TimeoutError, which the
API answers with 503 as before). hiredis parses the replies.

What differs from a redis-py pipeline, on purpose:
- Replies are as hiredis gives them, without redis-py's response callbacks: a BLPOP answers a
  list (or None), EXPIRE an integer. The callers index them the same way.
- No retry once the commands are sent: they may have run (a task queued twice). A pooled
  connection that Redis closed meanwhile is noticed before use (its end of file was read by the
  event loop) and replaced.
- Every execute has a deadline (the whole round trip, the caller's wait included); past it the
  connection is closed, never reused with a reply still owed.
"""

from __future__ import annotations

import asyncio
import collections
import ssl

import hiredis
import redis.exceptions
from redis.commands.core import CoreCommands
from redis.connection import SSLConnection, parse_url

# Idle connections kept per pool; more are closed when handed back (a burst of long waits
# opens one connection per wait).
MAX_IDLE_CONNECTIONS = 64


class Commands(CoreCommands):
    """Commands recorded for one round trip, with redis-py's methods (pipe.eval, pipe.blpop...)."""

    def __init__(self):
        self.commands: list[tuple] = []

    def execute_command(self, *args, **options):
        # options are redis-py's hints for its response callbacks and cluster routing: unused here.
        if isinstance(args[0], str) and " " in args[0]:  # "CLIENT ID": two words, as redis-py sends it
            args = (*args[0].split(), *args[1:])
        self.commands.append(args)
        return self

    def __len__(self) -> int:
        return len(self.commands)


def _encode(value) -> bytes:
    """An argument as redis-py's Encoder writes it."""
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, bool):  # before int: a bool is an int in Python, and redis-py refuses it
        raise redis.exceptions.DataError("Invalid input of type: 'bool'. Convert to a bytes, string, int or float first.")
    if isinstance(value, int):
        return b"%d" % value
    if isinstance(value, float):
        return repr(value).encode()
    if isinstance(value, memoryview):
        return value.tobytes()
    raise redis.exceptions.DataError(f"Invalid input of type: {type(value).__name__!r}. Convert to a bytes, string, "
                                     "int or float first.")


# An argument this long (a large request body in its queue entry) is sent from its own buffer
# (the transport writes the buffers with one writev) instead of being copied into the packed one.
OWN_BUFFER_BYTES = 64 * 1024


def pack(commands: list[tuple]) -> list[bytes]:
    """The commands in RESP: one buffer, or several where an argument is OWN_BUFFER_BYTES or
    longer (the transport writes them in order)."""
    buffers, parts = [], []
    for args in commands:
        parts.append(b"*%d\r\n" % len(args))
        for arg in args:
            # str and bytes inline: a task's pipeline has some 35 arguments.
            kind = type(arg)
            data = arg.encode() if kind is str else arg if kind is bytes else _encode(arg)
            if len(data) < OWN_BUFFER_BYTES:
                parts += (b"$%d\r\n" % len(data), data, b"\r\n")
                continue
            parts.append(b"$%d\r\n" % len(data))
            buffers += (b"".join(parts), data)
            parts = [b"\r\n"]
    buffers.append(b"".join(parts))
    return buffers


class _Connection(asyncio.Protocol):
    def __init__(self):
        self.reader = hiredis.Reader(replyError=redis.exceptions.ResponseError)
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.replies: list = []
        self.expected = 0
        self.waiter: asyncio.Future | None = None

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        while len(self.replies) < self.expected:
            reply = self.reader.gets()
            if reply is False:
                return
            self.replies.append(reply)
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    def connection_lost(self, exc) -> None:
        self.closed = True
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(redis.exceptions.ConnectionError(f"Redis closed the connection: {exc or 'end of file'}"))

    def usable(self) -> bool:
        return not self.closed and not self.transport.is_closing()

    async def round_trip(self, buffers: list[bytes], count: int) -> list:
        """Send `count` packed commands (pack's buffers) and wait for their replies."""
        self.replies, self.expected = [], count
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.writelines(buffers)
        await self.waiter
        self.waiter = None
        return self.replies

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


class PipelinePool:
    """Connections to one Redis URL, for one event loop."""

    def __init__(self, url: str, *, connect_timeout: float, timeout: float):
        self.options = parse_url(url)
        self.connect_timeout = connect_timeout
        self.timeout = timeout
        self.idle: collections.deque[_Connection] = collections.deque()

    def pipeline(self) -> Commands:
        return Commands()

    async def execute(self, commands: Commands, *, timeout: float | None = None) -> list:
        """Send the commands in one write and read their replies. The first error reply is
        raised (as a redis-py pipeline does); past `timeout` (the pool's by default), the
        round trip ends with redis.exceptions.TimeoutError."""
        if not commands.commands:
            return []
        data = pack(commands.commands)  # before a connection is taken: DataError leaves nothing behind
        connection = self.idle.pop() if self.idle else None
        while connection is not None and not connection.usable():
            connection = self.idle.pop() if self.idle else None
        if connection is None:
            connection = await self._connect()
        done = False
        try:
            async with asyncio.timeout(self.timeout if timeout is None else timeout):
                replies = await connection.round_trip(data, len(commands))
            done = True
        except TimeoutError:
            raise redis.exceptions.TimeoutError("Timeout reading from Redis") from None
        except OSError as error:
            raise redis.exceptions.ConnectionError(f"Error writing to Redis: {error}") from None
        finally:
            if not done:
                connection.close()  # a reply may still come: the connection is not reused
            elif len(self.idle) < MAX_IDLE_CONNECTIONS:
                self.idle.append(connection)
            else:
                connection.close()
        for reply in replies:
            if isinstance(reply, redis.exceptions.ResponseError):
                raise reply
        return replies

    async def _connect(self) -> _Connection:
        options, loop = self.options, asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.connect_timeout):
                if "path" in options:
                    _, connection = await loop.create_unix_connection(_Connection, options["path"])
                else:
                    tls = ssl.create_default_context() if options.get("connection_class") is SSLConnection else None
                    _, connection = await loop.create_connection(
                        _Connection, options.get("host", "localhost"), options.get("port", 6379), ssl=tls,
                    )
        except (OSError, TimeoutError) as error:
            raise redis.exceptions.ConnectionError(f"Error connecting to Redis: {error or 'timed out'}") from None
        setup = []
        if options.get("password") is not None:
            username = options.get("username")
            setup.append(("AUTH", *((username,) if username else ()), options["password"]))
        if options.get("db"):
            setup.append(("SELECT", options["db"]))
        if setup:
            try:
                async with asyncio.timeout(self.timeout):
                    replies = await connection.round_trip(pack(setup), len(setup))
            except TimeoutError:
                connection.close()
                raise redis.exceptions.TimeoutError("Timeout reading from Redis") from None
            except BaseException:
                connection.close()
                raise
            for reply in replies:
                if isinstance(reply, redis.exceptions.ResponseError):
                    connection.close()
                    raise redis.exceptions.AuthenticationError(str(reply))
        return connection

    def close(self) -> None:
        while self.idle:
            self.idle.pop().close()
