"""The replica's bundle download (workers.serve.fetch_bundle): a plain 200 over http:// on a
socket of its own, everything else through urllib.request as before, with urllib's results
and errors; and the modules a replica no longer loads for it."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from workers import serve

BODY = os.urandom(3 * 1024 * 1024 + 17)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    seen: list[dict] = []

    def do_GET(self):  # noqa: N802 - http.server's name
        Handler.seen.append({"path": self.path, **{name.lower(): value for name, value in self.headers.items()}})
        if self.path.startswith("/plain"):
            self.answer(200, {"Content-Length": str(len(BODY))}, BODY)
        elif self.path == "/chunked":
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for start in range(0, len(BODY), 1 << 20):
                piece = BODY[start:start + (1 << 20)]
                self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            self.wfile.write(b"0\r\n\r\n")
        elif self.path == "/redirect":
            self.answer(302, {"Location": "/plain?from=redirect", "Content-Length": "0"}, b"")
        elif self.path == "/short":
            self.answer(200, {"Content-Length": "100", "Connection": "close"}, b"x" * 10)
        else:
            self.answer(404, {"Content-Length": "9"}, b"not found")

    def answer(self, status: int, headers: dict, body: bytes) -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)
        if headers.get("Connection") == "close":
            self.close_connection = True

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(autouse=True)
def no_waits(monkeypatch):
    monkeypatch.setattr(serve.time, "sleep", lambda seconds: None)
    for name in list(os.environ):
        if name.lower().endswith("_proxy"):
            monkeypatch.delenv(name)


def urllib_alone(url: str) -> bytes:
    """What fetch_bundle did before: urllib.request only, five tries."""
    last = None
    for _ in range(5):
        try:
            with urllib.request.urlopen(url, timeout=60) as response:
                return response.read()
        except OSError as exc:
            last = exc
    raise serve.BundleLoadError(f"could not download the bundle: {last}")


def outcome(fetch, url):
    try:
        return bytes(fetch(url))
    except Exception as exc:  # noqa: BLE001 - compared as it is
        return type(exc), str(exc)


def test_a_plain_200_is_read_on_its_own_socket_with_urllibs_request(server, monkeypatch):
    def no_urllib(url):
        raise AssertionError("urllib.request was used")

    monkeypatch.setattr(serve, "_urlopen_read", no_urllib)
    Handler.seen.clear()
    assert serve.fetch_bundle(f"{server}/plain?token=a%3Ab") == BODY
    (request,) = Handler.seen
    assert request["path"] == "/plain?token=a%3Ab"
    assert request["host"] == server.removeprefix("http://")
    assert request["user-agent"] == f"Python-urllib/{sys.version_info.major}.{sys.version_info.minor}"
    assert request["accept-encoding"] == "identity"
    assert request["connection"] == "close"


@pytest.mark.parametrize("path", ["/chunked", "/redirect", "/missing", "/short"])
def test_any_other_answer_is_urllibs_result_or_error(server, path):
    url = f"{server}{path}"
    expected = outcome(urllib_alone, url)
    assert outcome(serve.fetch_bundle, url) == expected
    if path in ("/chunked", "/redirect"):
        assert expected == BODY
    if path == "/missing":
        assert expected == (serve.BundleLoadError, "could not download the bundle: HTTP Error 404: Not Found")


def test_a_refused_connection_fails_with_urllibs_error():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{sock.getsockname()[1]}/plain"  # bound, not listening: refused
        expected = outcome(urllib_alone, url)
        assert outcome(serve.fetch_bundle, url) == expected
    assert expected[0] is serve.BundleLoadError and "Connection refused" in expected[1]


@pytest.mark.parametrize("url", ["https://127.0.0.1:1/plain", "http://user:secret@127.0.0.1:1/plain", "ftp://x/y",
                                 "http://127.0.0.1:port/plain"])
def test_https_credentials_and_other_schemes_go_to_urllib(url, monkeypatch):
    asked = []
    monkeypatch.setattr(serve, "_urlopen_read", lambda url: asked.append(url) or b"from urllib")
    assert serve.fetch_bundle(url) == b"from urllib"
    assert asked == [url]


def test_a_proxy_in_the_environment_goes_to_urllib(server, monkeypatch):
    monkeypatch.setenv("http_proxy", "http://127.0.0.1:1")
    assert serve._plain_http_get(f"{server}/plain") is None


def test_a_replica_loads_no_http_client_ssl_zip_hashlib_or_ctypes_util():
    code = (
        "import sys, workers.serve\n"
        "from workers import allocator\n"
        "assert allocator.keep_freed_memory()\n"
        "print(' '.join(sorted(m for m in ('urllib.request', 'http.client', 'email', 'ssl', 'zipfile', "
        "'tempfile', 'ctypes.util', 'subprocess', 'hashlib') if m in sys.modules)))"
    )
    root = Path(serve.__file__).resolve().parent.parent
    result = subprocess.run([sys.executable, "-c", code], cwd=root, env={**os.environ, "PYTHONPATH": str(root)},
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == ""
