"""The forwarder: `python -m workers.forwarder`, the half of a runnable-image replica that is
ours. It runs in its own container that shares the user's container's network namespace, so
the user's server is at 127.0.0.1:<port> and only this process holds the replica's Redis
credentials (the user's container gets none).

It is the serve loop (workers.serve.Replica: the same queue protocol, scripts, heartbeats,
replica states and SIGTERM handling) with another way to load and to predict: loading is
waiting until the container's healthcheck route answers 200 (within the bundle's
readiness_initial_delay_seconds, else the replica reports `failed`), and predicting is an HTTP
POST of the task's `args` (as JSON) to the predict route. A 2xx answer is the task's result
(its JSON, or its text); anything else is a FAILURE carrying the status and the body.
No Django here, as in workers.serve. A user's container that dies takes the replica with it:
the docker runtime counts a replica alive only while both of its containers run.

A streaming request (a streaming_enhanced_runnable_image bundle, whose config names a
streaming_predict_route) is POSTed to that route instead, and the container's answer is read
as server-sent events: each event's data (JSON when it parses, else its text) is one item of
the stream, handed to the serve loop's emitter as it arrives (workers.serve.collect: the same
stream protocol as a cloudpickle bundle's generator). A client that goes away closes the
connection to the container, which is how an SSE server learns to stop.

Besides the serve loop's variables it reads LAUNCH_FORWARD_CONFIG, JSON: port,
predict_route, healthcheck_route, readiness_timeout_seconds, and streaming_predict_route for
the streaming flavor.
"""

from __future__ import annotations

import http.client
import json
import os
import sys
import time

from workers import allocator, protocol
from workers.serve import Replica

HEALTHCHECK_INTERVAL_SECONDS = 0.25
# A request to the user's server may take as long as the task may run; the controller's task
# timeout (queue_message_timeout_seconds) bounds it, not this process.
PREDICT_TIMEOUT_SECONDS = 24 * 3600


class ContainerError(Exception):
    """The user's server answered a task with an error status, or not at all."""


class Relay:
    """The predict function of a runnable image: POST to its predict route. Called as the serve
    loop calls a bundle's predict: keyword arguments for an `args` object, else one value."""

    def __init__(self, port: int, route: str):
        self.port, self.route = port, route

    def __call__(self, *args, **kwargs):
        body, content_type = _request_body(args, kwargs)
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=PREDICT_TIMEOUT_SECONDS)
        try:
            connection.request("POST", self.route, body=body, headers={"Content-Type": content_type})
            response = connection.getresponse()
            data = response.read()
        except OSError as error:
            raise ContainerError(f"the container's server did not answer POST {self.route}: {error!r}") from None
        finally:
            connection.close()
        text = data.decode(errors="replace")
        if not 200 <= response.status < 300:
            raise ContainerError(f"POST {self.route} answered {response.status}: {text[-4000:]}")
        try:
            return json.loads(text)
        except ValueError:
            return text


def _request_body(args, kwargs) -> tuple[bytes, str]:
    if kwargs:
        return json.dumps(kwargs).encode(), "application/json"
    if isinstance(args[0], bytes):  # a task given by `url`: the bytes at it
        return args[0], "application/octet-stream"
    return json.dumps(args[0]).encode(), "application/json"


class StreamRelay:
    """The streaming predict of a runnable image: POST to its streaming route and yield the
    data of each server-sent event as it arrives."""

    def __init__(self, port: int, route: str):
        self.port, self.route = port, route

    def __call__(self, *args, **kwargs):
        body, content_type = _request_body(args, kwargs)
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=PREDICT_TIMEOUT_SECONDS)
        try:
            try:
                connection.request("POST", self.route, body=body,
                                   headers={"Content-Type": content_type, "Accept": "text/event-stream"})
                response = connection.getresponse()
            except OSError as error:
                raise ContainerError(f"the container's server did not answer POST {self.route}: {error!r}") from None
            if not 200 <= response.status < 300:
                text = response.read().decode(errors="replace")
                raise ContainerError(f"POST {self.route} answered {response.status}: {text[-4000:]}")
            yield from server_sent_events(response, self.route)
        finally:
            # Also when the serve loop closes this generator early (the client went away).
            connection.close()


def server_sent_events(response, route: str):
    """The data of each event of an SSE body (`data:` lines up to a blank line), parsed as
    JSON when it is JSON; comments and other fields (event, id, retry) are skipped."""
    data: list[str] = []
    while True:
        try:
            raw = response.readline()
        except OSError as error:
            raise ContainerError(f"the stream from POST {route} broke off: {error!r}") from None
        if not raw:
            break
        line = raw.decode(errors="replace").rstrip("\r\n")
        if line:
            if line.startswith("data:"):
                data.append(line[5:].removeprefix(" "))
            continue
        if data:
            yield _event_value("\n".join(data))
            data = []
    if data:  # the last event, without its blank line
        yield _event_value("\n".join(data))


def _event_value(text: str):
    try:
        return json.loads(text)
    except ValueError:
        return text


def healthy(port: int, route: str, timeout: float = 5.0) -> bool:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request("GET", route)
        return connection.getresponse().status == 200
    except OSError:
        return False
    finally:
        connection.close()


class Forwarder(Replica):
    def __init__(self, env: dict[str, str]):
        super().__init__(env)
        config = json.loads(env["LAUNCH_FORWARD_CONFIG"])
        self.port = int(config["port"])
        self.healthcheck_route = config["healthcheck_route"]
        self.readiness_timeout = float(config["readiness_timeout_seconds"])
        self.relay = Relay(self.port, config["predict_route"])
        streaming_route = config.get("streaming_predict_route")
        self.stream_relay = StreamRelay(self.port, streaming_route) if streaming_route else None

    def predict_for(self, request: dict):
        if request.get("stream") and self.stream_relay is not None:
            return self.stream_relay
        return self.predict

    def load(self) -> None:
        """Wait for the container's healthcheck route to answer 200."""
        self.set_state(protocol.REPLICA_LOADING)
        started = time.monotonic()
        while not healthy(self.port, self.healthcheck_route):
            if self.stopping.is_set():
                return
            if time.monotonic() - started > self.readiness_timeout:
                error = (
                    f"the container's healthcheck route GET {self.healthcheck_route} on port {self.port} did not "
                    f"answer 200 within {self.readiness_timeout:.0f} s (readiness_initial_delay_seconds)"
                )
                print(error, file=sys.stderr, flush=True)
                self.set_state(protocol.REPLICA_FAILED, error=error)
                raise SystemExit(1)
            time.sleep(HEALTHCHECK_INTERVAL_SECONDS)
        self.predict = self.relay
        print(f"forwarder {self.replica_id}: container healthy after {time.monotonic() - started:.2f} s", flush=True)


def main() -> int:
    allocator.keep_freed_memory()  # as workers.serve's main
    return Forwarder(dict(os.environ)).run()


if __name__ == "__main__":
    sys.exit(main())
