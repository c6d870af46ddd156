"""The web server (launch_site.web_server): how a web worker stops (requests in flight are
answered, new connections are not taken, and what is still in flight at the kill timeout is cut
without a traceback), and the defaults of uvicorn and httptools it does not keep: no bound on a
request's head, idle keep-alive connections closed after 5 s, no bound on requests at once."""

from __future__ import annotations

import http.client
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

SERVER = """
import asyncio, sys
from launch_site import web_server
from launch_site.web_server import listening_socket, serve

web_server.WEB_HEAD_TIMEOUT_SECONDS = float(sys.argv[3])
web_server.WEB_BODY_IDLE_SECONDS = float(sys.argv[4])

async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            await send({"type": message["type"] + ".complete"})
            if message["type"] == "lifespan.shutdown":
                return
    if scope["method"] == "POST":  # the body's length
        size, more = 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":  # gone (or told so): no answer, as Django
                return
            size, more = size + len(message.get("body", b"")), message.get("more_body", False)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"read %d" % size})
        return
    await asyncio.sleep(float(scope["path"].strip("/")))
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"slept " + scope["path"].encode()})

serve(app, listening_socket("127.0.0.1", int(sys.argv[1])), kill_timeout=float(sys.argv[2]))
print("stopped", flush=True)
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _serve(port: int, kill_timeout: float, head_timeout: float = 30, body_timeout: float = 30) -> subprocess.Popen:
    process = subprocess.Popen([sys.executable, "-c", SERVER, str(port), str(kill_timeout), str(head_timeout),
                                str(body_timeout)], cwd=ROOT,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return process
        except OSError:
            assert process.poll() is None and time.monotonic() < deadline, process.communicate()
            time.sleep(0.1)


def _get_in_background(port: int, path: str) -> list:
    """GET path on a thread of its own: [(status, body)] once answered, [error] if cut."""
    result = []

    def get():
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        try:
            connection.request("GET", path)
            response = connection.getresponse()
            result.append((response.status, response.read()))
        except (OSError, http.client.HTTPException) as error:
            result.append(error)

    thread = threading.Thread(target=get)
    thread.start()
    result.append(thread)
    return result


def test_a_request_in_flight_at_the_stop_signal_is_answered_and_no_new_one_is_taken():
    port = _free_port()
    process = _serve(port, kill_timeout=20)
    in_flight = _get_in_background(port, "/1.5")
    time.sleep(0.5)
    process.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        refused = False
    except OSError:
        refused = True
    out, err = process.communicate(timeout=20)
    in_flight[0].join(5)
    assert in_flight[1] == (200, b"slept /1.5"), in_flight
    assert refused, "a new connection was taken after the stop signal"
    assert process.returncode == 0 and out.strip() == "stopped", err
    assert "Traceback" not in err, err


def test_a_request_still_in_flight_at_the_kill_timeout_is_cut_without_a_traceback():
    port = _free_port()
    process = _serve(port, kill_timeout=1)
    quick, slow = _get_in_background(port, "/0.5"), _get_in_background(port, "/30")
    time.sleep(0.2)
    stopped_at = time.monotonic()
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=20)
    took = time.monotonic() - stopped_at
    for request in (quick, slow):
        request[0].join(5)
    assert quick[1] == (200, b"slept /0.5"), quick
    assert isinstance(slow[1], Exception), slow  # its connection closed, no answer
    assert 0.9 < took < 5, took
    assert process.returncode == 0, err
    assert "requests still in flight 1 s after the stop signal" in err and "Traceback" not in err, err


def _raw(port: int, data: bytes) -> bytes:
    """Send `data` on a connection of its own, then read the answer until the server closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        try:
            sock.sendall(data)
        except OSError:  # closed while sending: the answer came before the rest was read
            pass
        answer = b""
        try:
            while chunk := sock.recv(65536):
                answer += chunk
        except OSError:
            pass
    return answer


def test_a_request_head_past_64_kib_is_refused_with_431_and_a_large_body_is_not():
    """Neither httptools nor uvicorn bounds a request's headers: a client sending them without
    end made a worker hold them all (200 MB of headers, 219 MB of memory)."""
    port = _free_port()
    process = _serve(port, kill_timeout=1)
    try:
        many = b"".join(b"X-Filler-%d: %s\r\n" % (i, b"a" * 1000) for i in range(200))
        for head in (b"GET /0 HTTP/1.1\r\nHost: x\r\n" + many + b"\r\n",
                     b"GET /0 HTTP/1.1\r\nHost: x\r\nX-One: " + b"a" * 10_000_000 + b"\r\n\r\n",
                     b"GET /0?" + b"q" * 300_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n"):
            answer = _raw(port, head)
            assert answer.startswith(b"HTTP/1.1 431 "), answer[:200]
            assert b"the request line and headers take more than 64 KiB" in answer
        # Within the bound, with a 5 MB body sent in the same writes as its head: read whole.
        body = b"x" * 5_000_000
        answer = _raw(port, b"POST /0 HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: %d\r\n"
                             b"X-Filler: %s\r\n\r\n%s" % (len(body), b"a" * 60_000, body))
        assert answer.startswith(b"HTTP/1.1 200 ") and b"\r\nread 5000000\r\n" in answer, answer[:200]
        # And the worker still serves.
        assert b"\r\nslept /0\r\n" in _raw(port, b"GET /0 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    finally:
        process.kill()
        process.wait()


def _two_requests_on_one_connection(port: int, method: str, body: bytes | None, answer: bytes, *,
                                    idle_between: float) -> None:
    """Two requests to /0 on one keep-alive connection, idle for `idle_between` seconds between
    them; each must be answered `answer` (http.client does not reconnect: a closed connection
    fails the second)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        for request in range(2):
            if request:
                time.sleep(idle_between)
            connection.request(method, "/0", body=body)
            response = connection.getresponse()
            assert (response.status, response.read()) == (200, answer)
    finally:
        connection.close()


def test_a_request_head_that_does_not_arrive_in_time_is_refused_with_408():
    """Slowloris: uvicorn waits for a request's head for ever, so a client holding connections
    open with nothing or a trickle held them all."""
    port = _free_port()
    process = _serve(port, kill_timeout=1, head_timeout=1)
    try:
        silent = socket.create_connection(("127.0.0.1", port), timeout=10)
        trickling = socket.create_connection(("127.0.0.1", port), timeout=10)
        started = time.monotonic()
        for byte in b"GET /0 HTTP/1.1\r\nHost: x\r\n":  # a byte every 0.1 s: 2.8 s in all
            try:
                trickling.sendall(bytes([byte]))
            except OSError:
                break
            time.sleep(0.1)
        for sock in (silent, trickling):
            answer = sock.makefile("rb").read()
            assert answer.startswith(b"HTTP/1.1 408 "), answer
            assert b"the request line and headers did not arrive within 1 s" in answer
            sock.close()
        assert time.monotonic() - started < 5
        # A kept-alive connection may stay idle past the head timeout: it applies from the
        # next request's first byte.
        _two_requests_on_one_connection(port, "GET", None, b"slept /0", idle_between=1.5)
    finally:
        process.kill()
        process.wait()


def test_a_body_that_stops_coming_is_refused_with_408_and_a_slow_steady_one_is_read():
    """A client sending its body a byte a minute would hold one of the worker's request slots
    for as long as it liked. A body larger than uvicorn buffers before the app reads it (64 KiB)
    is read in pieces: the pauses between them are the server's, and do not count."""
    port = _free_port()
    process = _serve(port, kill_timeout=1, body_timeout=1)
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as stalled:
            started = time.monotonic()
            stalled.sendall(b"POST /0 HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n0123456789")
            answer = stalled.makefile("rb").read()
            assert answer.startswith(b"HTTP/1.1 408 "), answer
            assert answer.endswith(b"no byte of the request body came for 1 s") and 0.9 < time.monotonic() - started < 5
        with socket.create_connection(("127.0.0.1", port), timeout=10) as steady:
            steady.sendall(b"POST /0 HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 8\r\n\r\n")
            for _ in range(8):  # 2.4 s in all, never 1 s without a byte
                time.sleep(0.3)
                steady.sendall(b"x")
            answer = steady.makefile("rb").read()
            assert answer.startswith(b"HTTP/1.1 200 ") and b"\r\nread 8\r\n" in answer, answer
        answer = _raw(port, b"POST /0 HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 20000000\r\n\r\n"
                            + b"x" * 20_000_000)
        assert answer.startswith(b"HTTP/1.1 200 ") and b"\r\nread 20000000\r\n" in answer, answer[:200]
    finally:
        process.kill()
        process.wait()


def test_an_idle_keep_alive_connection_outlives_uvicorns_5_s_default():
    """A pooling client (requests, the scale-launch clients) that sends its next request as
    the server closes an idle connection gets an error on a POST, which it does not retry:
    uvicorn closes idle connections after 5 s unless told otherwise."""
    port = _free_port()
    process = _serve(port, kill_timeout=1)
    try:
        _two_requests_on_one_connection(port, "POST", b"abc", b"read 3", idle_between=6.5)
    finally:
        process.kill()
        process.wait()


def test_a_worker_serves_at_most_its_limit_of_requests_at_once_and_the_rest_wait_their_turn():
    import asyncio

    from launch_site.web_server import with_request_limit

    running, most_seen, done = 0, 0, []

    async def app(scope, receive, send):
        nonlocal running, most_seen
        running += 1
        most_seen = max(most_seen, running)
        await asyncio.sleep(0.05)
        running -= 1
        done.append(scope["path"])

    limited = with_request_limit(app, 3)

    async def main():
        await asyncio.gather(*(limited({"type": "http", "path": f"/{i}"}, None, None) for i in range(10)))

    asyncio.run(main())
    assert most_seen == 3 and sorted(done) == sorted(f"/{i}" for i in range(10))
