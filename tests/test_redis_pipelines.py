"""The task routes' own Redis pipelines (launch_site/redis_pipelines.py), against the real Redis:
what a redis-py pipeline gave the gateway (replies in order, errors raised, timeouts and a Redis
that is gone as redis-py's exceptions, so 503), and what a connection pool of our own must never
do: hand a later caller the reply owed to an earlier one."""

from __future__ import annotations

import asyncio
import uuid

import pytest
import redis.exceptions
from django.conf import settings

from launch_site import redis_pipelines
from launch_site.redis_pipelines import MAX_IDLE_CONNECTIONS, PipelinePool


def _pool(url: str | None = None, timeout: float = 5.0) -> PipelinePool:
    return PipelinePool(url or settings.REDIS_URL, connect_timeout=2.0, timeout=timeout)


def run(coroutine):
    return asyncio.run(coroutine)


def test_replies_come_in_order_with_redis_py_arguments(key):
    async def go():
        pool = _pool()
        pipe = pool.pipeline()
        pipe.hset(f"{key}:h", mapping={"a": 1, "b": 2.5, "c": "x"})
        pipe.lpush(f"{key}:l", "one", b"two")
        pipe.eval("return {KEYS[1], ARGV[1]}", 1, f"{key}:k", 7)
        pipe.blpop([f"{key}:l"], timeout=1)
        pipe.hgetall(f"{key}:h")
        replies = await pool.execute(pipe)
        pool.close()
        return replies

    hset, lpush, evaled, popped, stored = run(go())
    assert (hset, lpush, evaled) == (3, 2, [f"{key}:k".encode(), b"7"])
    assert popped == [f"{key}:l".encode(), b"two"]
    assert stored == [b"a", b"1", b"b", b"2.5", b"c", b"x"]


def test_a_megabyte_goes_and_comes_back_whole(key):
    # Large arguments go from buffers of their own (redis_pipelines.OWN_BUFFER_BYTES): several
    # in one round trip, next to small ones, one exactly at the threshold, one a str.
    value = uuid.uuid4().bytes * (1024 * 1024 // 16)
    at_threshold = "é" * (redis_pipelines.OWN_BUFFER_BYTES // 2)

    async def go():
        pool = _pool()
        pipe = pool.pipeline()
        pipe.set(f"{key}:big", value)
        pipe.rpush(f"{key}:list", "a", value[: redis_pipelines.OWN_BUFFER_BYTES - 1], at_threshold, "b", value)
        pipe.get(f"{key}:big")
        pipe.lrange(f"{key}:list", 0, -1)
        replies = await pool.execute(pipe)
        pool.close()
        return replies

    replies = run(go())
    assert replies[2] == value
    assert replies[3] == [b"a", value[: redis_pipelines.OWN_BUFFER_BYTES - 1], at_threshold.encode(), b"b", value]


def test_an_error_reply_is_raised_and_the_connection_stays_good(key):
    async def go():
        pool = _pool()
        pipe = pool.pipeline()
        pipe.set(f"{key}:s", "text")
        pipe.lpush(f"{key}:s", "x")  # WRONGTYPE
        with pytest.raises(redis.exceptions.ResponseError, match="WRONGTYPE"):
            await pool.execute(pipe)
        pipe = pool.pipeline()
        pipe.get(f"{key}:s")
        reply = await pool.execute(pipe)
        pool.close()
        return reply

    assert run(go()) == [b"text"]


async def _timed_out(pool, pipe) -> None:
    with pytest.raises(redis.exceptions.TimeoutError):
        await pool.execute(pipe, timeout=0.3)


async def _cancelled(pool, pipe) -> None:
    waiting = asyncio.create_task(pool.execute(pipe))
    await asyncio.sleep(0.2)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting


@pytest.mark.parametrize("give_up", [_timed_out, _cancelled], ids=["past-its-deadline", "cancelled"])
def test_a_wait_given_up_never_leaves_its_reply_to_the_next_caller(key, redis_client, give_up):
    """The BLPOP of a round trip given up on still waits in Redis: if its connection went back
    to the pool, the next caller would read the value it pops as its own reply."""
    async def go():
        pool = _pool()
        pipe = pool.pipeline()
        pipe.blpop([f"{key}:late"], timeout=5)
        await give_up(pool, pipe)
        redis_client.rpush(f"{key}:late", "for the caller that gave up")
        pipe = pool.pipeline()
        pipe.echo("mine")
        reply = await pool.execute(pipe)
        pool.close()
        return reply

    assert run(go()) == [b"mine"]


def test_a_connection_redis_closed_is_replaced_before_use(key, redis_client):
    async def go():
        pool = _pool()
        pipe = pool.pipeline()
        pipe.client_id()
        (first_id,) = await pool.execute(pipe)
        redis_client.client_kill_filter(_id=first_id)
        await asyncio.sleep(0.1)  # the loop reads the end of file
        pipe = pool.pipeline()
        pipe.client_id()
        pipe.echo("after")
        replies = await pool.execute(pipe)
        pool.close()
        return first_id, replies

    first_id, (second_id, echoed) = run(go())
    assert second_id != first_id and echoed == b"after"


def test_redis_unreachable_is_a_connection_error():
    import socket

    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]

    async def go():
        pool = _pool(f"redis://127.0.0.1:{port}/0")
        pipe = pool.pipeline()
        pipe.ping()
        await pool.execute(pipe)

    with pytest.raises(redis.exceptions.ConnectionError):
        run(go())


def test_a_wrong_password_is_refused_as_a_connection_error():
    url = settings.REDIS_URL
    if "@" not in url:
        pytest.skip("this Redis takes no password")
    scheme, rest = url.split("://", 1)
    wrong = f"{scheme}://:not-the-password@{rest.split('@', 1)[1]}"

    async def go():
        pool = _pool(wrong)
        pipe = pool.pipeline()
        pipe.ping()
        await pool.execute(pipe)

    with pytest.raises(redis.exceptions.ConnectionError):
        run(go())


def test_many_waits_at_once_each_get_their_own_answer(key, redis_client):
    """Concurrent round trips each on a connection of their own; idle ones kept are bounded."""
    count = MAX_IDLE_CONNECTIONS + 36

    async def go():
        pool = _pool()

        async def wait(i: int):
            pipe = pool.pipeline()
            pipe.blpop([f"{key}:w{i}"], timeout=5)
            return await pool.execute(pipe)

        waits = [asyncio.create_task(wait(i)) for i in range(count)]
        await asyncio.sleep(0.3)
        for i in reversed(range(count)):
            redis_client.rpush(f"{key}:w{i}", f"answer {i}")
        answers = await asyncio.gather(*waits)
        idle = len(pool.idle)
        pool.close()
        return answers, idle

    answers, idle = run(go())
    assert [popped[1] for (popped,) in answers] == [f"answer {i}".encode() for i in range(count)]
    assert idle == MAX_IDLE_CONNECTIONS


def test_a_boolean_argument_is_refused_as_redis_py_does():
    pool = _pool()
    pipe = pool.pipeline()
    pipe.set("test:pipelines:never", True)
    with pytest.raises(redis.exceptions.DataError):
        run(pool.execute(pipe))


@pytest.mark.parametrize("url", ["redis://127.0.0.1:{port}/0", "redis://:secret@127.0.0.1:{port}/3"])
def test_a_redis_that_never_answers_is_a_redis_timeout(url):
    """Connected but silent (stuck, or not Redis at all): a redis-py TimeoutError (the API's
    503), whether it is silent at the handshake (AUTH, SELECT) or at the commands."""
    import socket

    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()

        async def go():
            pool = _pool(url.format(port=listener.getsockname()[1]), timeout=0.3)
            pipe = pool.pipeline()
            pipe.ping()
            await pool.execute(pipe)

        with pytest.raises(redis.exceptions.TimeoutError):
            run(go())
