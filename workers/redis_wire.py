"""The replica's Redis client: the commands the serve loop sends (workers.serve), on hiredis's
reply parser and the standard library. Plain Python, no Django, like the rest of the replica.

Why not redis-py: importing it (redis.asyncio, its observability, cluster and sentinel
modules...) was 9 of an idle replica's 33 MB RSS and 9 of its 23 MB PSS (BENCHMARKS.md, "A
replica without redis-py"), and a replica runs next to every model.

What it keeps of redis-py's ways:
- The URL forms the runtimes hand to replicas (`LAUNCH_REDIS_URL`): `unix:///path?db=N`,
  `redis://[user:password@]host[:port][/db]`, `rediss://` the same over TLS, credentials
  percent-encoded (workers.redis_acl.with_credentials). Anything else in the URL (other query
  parameters) is refused when the client is made, never ignored.
- On connect: AUTH (with the ACL user when the URL names one), then SELECT when the db is not
  0, both in one round trip. A connect or its handshake that fails is tried again, 10 times
  with a growing, jittered pause (10 ms to 1 s, redis-py's default), as redis-py does.
- Replies as hiredis gives them (bytes, int, list, None: what redis-py's connections return);
  an error reply is raised as ResponseError, and read_response leaves the connection in step
  after it (the serve loop reads the replies of a finished task's scripts that way).
- `connection()` is a connection of the caller's own (the serve loop's worker threads send a
  script before a task runs and read its reply after); `execute` and `pipeline` take a pooled
  connection, one per thread at a time, so the heartbeat thread never waits on a worker's.
- A pooled connection that Redis closed while it was idle (a Redis restart) is noticed before
  use (it reads as ready: its end of file) and replaced, as redis-py's pool does.

What differs, on purpose:
- No command is sent again once it was sent: its reply lost (Redis went away, a timeout), it
  may have run (a stream item pushed twice, a task's attempts counted twice). Only a pooled
  command that Redis refused with LOADING (it was loading its data after a restart, and ran
  nothing) is tried again, on the connect's schedule.
- A connection whose read or write failed or timed out is closed, never used again with a
  reply still owed; the next command on it connects afresh.
- Connections have no read timeout unless given one (redis-py's default too): the serve loop's
  blocking takes carry their own, and a Redis that stops answering is the heartbeat's to
  notice (workers.serve).
"""

from __future__ import annotations

import random
import select
import socket
import time
from collections import deque
from dataclasses import dataclass
from urllib.parse import parse_qs, unquote, urlsplit

import hiredis

READ_SIZE = 64 * 1024  # one recv_into; a 1 MB reply takes 16 (redis-py reads the same)
_MAX_BUFFERS_PER_SEND = 1024  # IOV_MAX on Linux: sendmsg refuses more
CONNECT_RETRIES = 10
BACKOFF_BASE_SECONDS, BACKOFF_CAP_SECONDS = 0.01, 1.0
TLS_CERT_REQS = ("none", "optional", "required")


class RedisError(Exception):
    """Anything that went wrong talking to Redis; the serve loop retries on it."""


class ResponseError(RedisError):
    """Redis answered a command with an error (its message is Redis's, e.g. "NOSCRIPT ...")."""


class DataError(RedisError):
    """An argument that is not bytes, str, int or float (redis-py's DataError)."""


class ConnectionFailed(RedisError):
    """Redis could not be reached, refused the handshake, or the connection broke; the
    connection is closed."""


class TimedOut(ConnectionFailed):
    """A read or write took longer than the connection's timeout; the connection is closed
    (a reply may still come, and must not be taken for the next command's)."""


class _ProtocolError(ConnectionFailed):
    """Bytes that are not RESP: the connection is out of step."""


@dataclass(frozen=True)
class Address:
    path: str = ""  # a unix socket; else host and port
    host: str = ""
    port: int = 6379
    tls: bool = False
    username: str | None = None
    password: str | None = None
    db: int = 0
    tls_cert_reqs: str = "required"
    tls_ca_certs: str | None = None
    tls_check_hostname: bool = True


def parse_url(url: str) -> Address:
    """An Address from a Redis URL, or ValueError naming what is not supported."""
    parts = urlsplit(url)
    if parts.scheme not in ("unix", "redis", "rediss"):
        raise ValueError(f"a Redis URL must start with unix://, redis:// or rediss://, not {url.split(':')[0]!r}")
    if parts.fragment:
        raise ValueError("a Redis URL has no #fragment")
    options: dict = {}
    query = parse_qs(parts.query, keep_blank_values=True, strict_parsing=bool(parts.query))
    for name, values in query.items():
        if len(values) != 1:
            raise ValueError(f"the Redis URL gives {name!r} {len(values)} times")
        value = values[0]
        if name == "db":
            options["db"] = _integer("db", value)
        elif name == "ssl_cert_reqs" and parts.scheme == "rediss":
            if value not in TLS_CERT_REQS:
                raise ValueError(f"ssl_cert_reqs in the Redis URL must be one of {', '.join(TLS_CERT_REQS)}")
            options["tls_cert_reqs"] = value
        elif name == "ssl_ca_certs" and parts.scheme == "rediss":
            options["tls_ca_certs"] = value
        elif name == "ssl_check_hostname" and parts.scheme == "rediss":
            if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError("ssl_check_hostname in the Redis URL must be true or false")
            options["tls_check_hostname"] = value.lower() in ("true", "1", "yes")
        else:
            raise ValueError(f"the replica's Redis client does not support {name!r} in the Redis URL")
    if parts.username:
        options["username"] = unquote(parts.username)
    if parts.password:
        options["password"] = unquote(parts.password)
    elif parts.username:
        raise ValueError("the Redis URL names a user but no password")
    if parts.scheme == "unix":
        if not parts.path:
            raise ValueError("a unix:// Redis URL needs the socket's path, e.g. unix:///run/redis.sock")
        return Address(path=unquote(parts.path), **options)
    path_db = unquote(parts.path).strip("/")
    if path_db:
        db = _integer("the path (the db)", path_db)
        if options.setdefault("db", db) != db:
            raise ValueError("the Redis URL gives two db numbers (its path and ?db=)")
    return Address(host=unquote(parts.hostname or "localhost"), port=parts.port or 6379,
                   tls=parts.scheme == "rediss", **options)


def _integer(name: str, value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise ValueError(f"{name} in the Redis URL must be a number, not {value!r}") from None
    if number < 0:
        raise ValueError(f"{name} in the Redis URL must not be negative")
    return number


def pack_command(args: tuple) -> bytes:
    """One command in RESP, as redis-py packs it (hiredis: floats as repr writes them)."""
    try:
        return hiredis.pack_command(args)
    except TypeError as error:
        raise DataError(f"{error} (a {args[0]!r} command)") from None


def pack_command_in_pieces(args: tuple) -> list:
    """One command as pack_command writes it, but in buffers: an argument given as a tuple of
    bytes is one value made of them, sent as they are (a large result is not joined and then
    copied again into the packed command: workers.protocol.final_record_parts)."""
    buffers = [b"*%d\r\n" % len(args)]
    for arg in args:
        if type(arg) is tuple:
            buffers += (b"$%d\r\n" % sum(map(len, arg)), *arg, b"\r\n")
        else:
            buffers.append(pack_command((arg,))[len(b"*1\r\n"):])  # the value as hiredis writes it
    return buffers


def backoff(failures: int) -> float:
    """The pause before try number `failures` + 1 (redis-py's ExponentialWithJitterBackoff)."""
    return min(BACKOFF_CAP_SECONDS, random.random() * BACKOFF_BASE_SECONDS * 2**failures)


class Connection:
    """One connection to Redis, for one thread at a time. It connects on the first command
    (and again after close)."""

    def __init__(self, address: Address, *, connect_timeout: float | None, timeout: float | None = None,
                 connect_retries: int = CONNECT_RETRIES):
        self.address = address
        self.connect_timeout = connect_timeout
        self.timeout = timeout
        self.connect_retries = connect_retries
        self.sock: socket.socket | None = None
        self.reader = _reader()
        self.buffer = bytearray(READ_SIZE)

    def connect(self) -> None:
        failures = 0
        while True:
            try:
                self._connect_once()
                return
            except ConnectionFailed:
                if failures >= self.connect_retries:
                    raise
                failures += 1
                time.sleep(backoff(failures))

    def _connect_once(self) -> None:
        address = self.address
        where = address.path or f"{address.host}:{address.port}"
        sock = None
        try:
            if address.path:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                sock.settimeout(self.connect_timeout)
                sock.connect(address.path)
            else:
                sock = socket.create_connection((address.host, address.port), timeout=self.connect_timeout)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                if address.tls:
                    sock = _tls_context(address).wrap_socket(sock, server_hostname=address.host)
        except OSError as error:
            if sock is not None:
                sock.close()
            if isinstance(error, TimeoutError):
                raise TimedOut(f"timed out connecting to Redis at {where}") from None
            raise ConnectionFailed(f"could not connect to Redis at {where}: {error}") from None
        self.sock = sock  # self.reader is fresh: made with the connection, and again by close()
        handshake = []
        if address.password is not None:
            handshake.append(("AUTH", address.username, address.password) if address.username
                             else ("AUTH", address.password))
        if address.db:
            handshake.append(("SELECT", address.db))
        # The handshake's replies within the connect timeout (a server that accepts and never
        # answers must not hold a connection without a read timeout forever).
        self.send(b"".join(pack_command(command) for command in handshake))
        for command in handshake:
            try:
                self.read_response()
            except ResponseError as error:
                self.close()
                raise ConnectionFailed(f"Redis at {where} refused {command[0]}: {error}") from None
        sock.settimeout(self.timeout)

    def send_command(self, *args) -> None:
        """Send one command (not read its reply); an argument may be a tuple of bytes, sent as
        one value (pack_command_in_pieces)."""
        if any(type(arg) is tuple for arg in args):
            self.send(pack_command_in_pieces(args))
        else:
            self.send(pack_command(args))

    def send(self, data: bytes | list) -> None:
        """Send packed commands, as one buffer or a list of them (connecting first if need be)."""
        if self.sock is None:
            self.connect()
        try:
            if type(data) is not list:
                self.sock.sendall(data)
            elif self.address.tls:  # an SSL socket has no sendmsg: one buffer
                self.sock.sendall(b"".join(data))
            else:
                _send_buffers(self.sock, data)
        except TimeoutError:
            self.close()
            raise TimedOut("timed out writing to Redis") from None
        except OSError as error:
            self.close()
            raise ConnectionFailed(f"could not write to Redis: {error}") from None

    def read_response(self):
        """The next reply; an error reply is raised as ResponseError (the connection stays in
        step). Anything else that fails closes the connection."""
        try:
            reply = self.reader.gets()
            while reply is False:
                self._receive()
                reply = self.reader.gets()
        except _ProtocolError:
            self.close()
            raise
        if type(reply) is ResponseError:
            raise reply
        return reply

    def _receive(self) -> None:
        if self.sock is None:
            raise ConnectionFailed("the connection to Redis is closed")
        try:
            count = self.sock.recv_into(self.buffer)
        except TimeoutError:
            self.close()
            raise TimedOut("timed out reading from Redis") from None
        except OSError as error:
            self.close()
            raise ConnectionFailed(f"could not read from Redis: {error}") from None
        if not count:
            self.close()
            raise ConnectionFailed("Redis closed the connection")
        self.reader.feed(self.buffer, 0, count)

    def ready_for_a_command(self) -> bool:
        """False when Redis closed it (its end of file is ready to read) or something else is
        waiting to be read: either way the next reply would not be the next command's."""
        if self.sock is None:
            return True  # connects on its next command
        if self.reader.has_data():
            return False
        poller = select.poll()
        poller.register(self.sock, select.POLLIN)
        return not poller.poll(0)

    def close(self) -> None:
        # A fresh reader too: what the old one holds (the rest of a pipelined reply, a
        # protocol error) is the old connection's.
        self.reader = _reader()
        if self.sock is not None:
            try:
                self.sock.close()
            finally:
                self.sock = None


def _send_buffers(sock: socket.socket, buffers: list) -> None:
    """sendall for several buffers, written from where they are (sendmsg: one writev a call)."""
    views = [memoryview(buffer) for buffer in buffers if len(buffer)]
    while views:
        sent = sock.sendmsg(views[:_MAX_BUFFERS_PER_SEND])
        while views and sent >= len(views[0]):
            sent -= len(views.pop(0))
        if sent:
            views[0] = views[0][sent:]


def _reader() -> hiredis.Reader:
    return hiredis.Reader(replyError=ResponseError, protocolError=_ProtocolError)


def _tls_context(address: Address):
    import ssl  # only for rediss://

    context = ssl.create_default_context(cafile=address.tls_ca_certs)
    context.check_hostname = address.tls_check_hostname and address.tls_cert_reqs != "none"
    context.verify_mode = {"none": ssl.CERT_NONE, "optional": ssl.CERT_OPTIONAL,
                           "required": ssl.CERT_REQUIRED}[address.tls_cert_reqs]
    return context


def _is_loading(reply) -> bool:
    return type(reply) is ResponseError and str(reply).startswith("LOADING")


class Client:
    """Commands on pooled connections, each taken by one thread for one round trip."""

    def __init__(self, url: str, *, connect_timeout: float | None = 5.0, connect_retries: int = CONNECT_RETRIES):
        self.address = parse_url(url)
        self.connect_timeout = connect_timeout
        self.connect_retries = connect_retries
        # As many as threads that used the client at once (a deque's append and pop are atomic).
        self.idle: deque[Connection] = deque()

    def connection(self, *, timeout: float | None = None) -> Connection:
        """A connection of the caller's own, not pooled; close it when done."""
        return Connection(self.address, connect_timeout=self.connect_timeout, timeout=timeout,
                          connect_retries=self.connect_retries)

    def execute(self, *args):
        """One command; its reply, or its error reply raised as ResponseError."""
        return self.pipeline(args)[0]

    def pipeline(self, *commands: tuple) -> list:
        """Several commands in one round trip (not a transaction): their replies. When some
        were errors, every reply is read first (the connection stays usable), then the first
        error is raised, as redis-py's pipeline does."""
        data = b"".join(pack_command(command) for command in commands)
        failures = 0
        while True:
            connection = self._take()
            replies = []
            try:
                connection.send(data)
                for _ in commands:
                    try:
                        replies.append(connection.read_response())
                    except ResponseError as error:
                        replies.append(error)
            except BaseException:
                connection.close()  # a reply may be owed (a KeyboardInterrupt too): not reused
                raise
            self.idle.append(connection)
            if _is_loading(replies[0]) and failures < self.connect_retries:
                failures += 1  # Redis is loading its data after a restart: nothing ran
                time.sleep(backoff(failures))
                continue
            for reply in replies:
                if type(reply) is ResponseError:
                    raise reply
            return replies

    def script(self, source: str) -> Script:
        return Script(self, source)

    def _take(self) -> Connection:
        while True:
            try:
                connection = self.idle.pop()
            except IndexError:
                return self.connection()
            if connection.ready_for_a_command():
                return connection
            connection.close()

    def close(self) -> None:
        while self.idle:
            self.idle.pop().close()


class Script:
    """A Lua script run by its SHA1 (EVALSHA), sent whole (EVAL) when Redis does not have it
    yet (NOSCRIPT: a fresh or restarted Redis), which also caches it there."""

    def __init__(self, client: Client, source: str):
        self.client = client
        self.source = source
        import hashlib  # here: it loads OpenSSL's libcrypto, 3.6 MB, for the few processes that run a Script

        self.sha = hashlib.sha1(source.encode()).hexdigest()

    def __call__(self, keys=(), args=()):
        try:
            return self.client.execute("EVALSHA", self.sha, len(keys), *keys, *args)
        except ResponseError as error:
            if not str(error).startswith("NOSCRIPT"):
                raise
        return self.client.execute("EVAL", self.source, len(keys), *keys, *args)
