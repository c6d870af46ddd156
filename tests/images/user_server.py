"""A user's own inference server, as a runnable-image bundle would ship it: GET /readyz,
POST /predict and POST /stream (server-sent events) on the port given as argv[1]. Started by the docker tests inside a container of
the test image (this machine's Python is mounted there). Standard library only."""

from __future__ import annotations

import json
import os
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

STARTED = time.monotonic()
READY_AFTER = float(os.environ.get("READY_AFTER_SECONDS", "0"))
# Streams whose reader went away (a write failed), reported by /predict.
STREAMS_CLOSED_BY_READER = 0


class Handler(BaseHTTPRequestHandler):
    def _answer(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):  # noqa: N802 - http.server's naming
        if self.path == "/readyz" and time.monotonic() - STARTED >= READY_AFTER:
            self._answer(200, {"ok": True})
        else:
            self._answer(503, {"ok": False})

    def _stream(self, body: dict) -> None:
        """`count` events (-1: until the reader goes away), `pause` seconds apart, as an LLM
        server streams tokens; the event stream holds a comment, an event name and a two-line
        data field to be parsed past."""
        global STREAMS_CLOSED_BY_READER
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        self.wfile.write(b": a comment line\n\n")
        count = int(body.get("count", 3))
        index = 0
        try:
            while count < 0 or index < count:
                event = {"token": f"{body.get('prefix', 't')}{index}", "index": index, "sent_at": time.time()}
                self.wfile.write(b"event: token\ndata: " + json.dumps(event).encode() + b"\n\n")
                self.wfile.flush()
                index += 1
                time.sleep(float(body.get("pause", 0)))
            self.wfile.write(b"data: two\ndata: lines\n\n")
            self.wfile.flush()
        except OSError:
            STREAMS_CLOSED_BY_READER += 1

    def do_POST(self):  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"null")
        if self.path == "/stream":
            if body.get("fail"):
                self._answer(500, {"error": "asked to fail the stream"})
            else:
                self._stream(body)
            return
        if self.path != "/predict":
            self._answer(404, {"error": self.path})
            return
        if isinstance(body, dict) and body.get("fail"):
            self._answer(500, {"error": "asked to fail"})
            return
        if isinstance(body, dict) and body.get("sleep"):
            time.sleep(float(body["sleep"]))
        probe = body.get("probe_path") if isinstance(body, dict) else None
        self._answer(200, {
            "doubled": body["x"] * 2 if isinstance(body, dict) and "x" in body else None,
            "greeting": os.environ.get("GREETING"),
            # What user code can see of ours: nothing (no LAUNCH_* variables, no Redis socket).
            "launch_env": sorted(k for k in os.environ if k.startswith("LAUNCH_") or "REDIS" in k),
            "probe_exists": os.path.exists(probe) if probe else None,
            "streams_closed_by_reader": STREAMS_CLOSED_BY_READER,
        })

    def log_message(self, *args):
        pass


if __name__ == "__main__":
    print(f"user server on port {sys.argv[1]}", flush=True)
    ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
