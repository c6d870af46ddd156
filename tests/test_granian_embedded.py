"""How a web worker of `launch up` stops (launch_site.granian_server.serve_embedded, granian's
embedded server): requests in flight are answered, new connections are not taken, and what is
still in flight at the kill timeout is cut without a traceback, as granian's process manager
cut its workers."""

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
from granian.constants import Interfaces
from launch_site.granian_server import serve_embedded

async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            await send({"type": message["type"] + ".complete"})
            if message["type"] == "lifespan.shutdown":
                return
    await asyncio.sleep(float(scope["path"].strip("/")))
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"slept " + scope["path"].encode()})

serve_embedded(app, kill_timeout=float(sys.argv[2]), address="127.0.0.1", port=int(sys.argv[1]),
               interface=Interfaces.ASGI, log_level="error")
print("stopped", flush=True)
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _serve(port: int, kill_timeout: float) -> subprocess.Popen:
    process = subprocess.Popen([sys.executable, "-c", SERVER, str(port), str(kill_timeout)], cwd=ROOT,
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
