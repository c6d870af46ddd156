"""Callbacks end to end: a real replica finishes async tasks, the controller's tick turns them
into jobs on the `callbacks` RQ queue, a worker on that queue POSTs to a sink on loopback."""

from __future__ import annotations

import base64
import hashlib
import hmac
import http.server
import json
import logging
import ssl
import subprocess
import threading
import time

import django_rq
import pytest
from django.db import close_old_connections
from rq.job import Job

from tests.stack import api_for

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.xdist_group("callbacks")]


class Sink:
    """An HTTP server on loopback that records each POST and fails the first `failures`."""

    def __init__(self, failures: int = 0):
        self.failures = failures
        self.received: list[dict] = []
        self.attempts = 0
        sink = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                sink.attempts += 1
                if sink.attempts <= sink.failures:
                    self.send_response(503)
                    self.end_headers()
                    return
                sink.received.append({"headers": dict(self.headers), "raw": body, "body": json.loads(body)})
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait_for(self, count: int, timeout: float = 60) -> list[dict]:
        deadline = time.monotonic() + timeout
        while len(self.received) < count:
            assert time.monotonic() < deadline, (
                f"the sink got {len(self.received)} of {count} callbacks ({self.attempts} attempts); {_diagnosis()}"
            )
            time.sleep(0.05)
        return self.received


def _diagnosis() -> str:
    """What the control plane holds of callbacks, for a failure message."""
    import django_rq

    from endpoints import callbacks
    from launch_site.redis_client import get_redis

    redis = get_redis()
    configs = {key.decode(): redis.hgetall(key) for key in redis.scan_iter(match="launch:callback:*")}
    lists = {key.decode(): redis.lrange(key, 0, -1) for key in redis.scan_iter(match="launch:ep:*:callbacks")}
    endpoint_keys = sorted(key.decode() for key in redis.scan_iter(match="launch:ep:*"))[:40]
    return (f"configs {configs}; ended lists {lists}; retries {redis.zrange(callbacks.RETRY_KEY, 0, -1, withscores=True)}; "
            f"queued jobs {django_rq.get_queue('callbacks').count}; dbsize {redis.dbsize()}; endpoint keys {endpoint_keys}; "
            f"redis {redis.connection_pool.connection_kwargs.get('path') or redis.connection_pool.connection_kwargs}")


def verify(secret: str, headers: dict, raw: bytes) -> bool:
    """What a receiver does (docs/callbacks.md)."""
    fields = dict(part.split("=", 1) for part in headers["X-Launch-Signature"].split(","))
    expected = hmac.new(secret.encode(), f"{fields['t']}.".encode() + raw, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, fields["v1"])


def delivered_outcome(api, task_id: str, timeout: float = 15) -> dict:
    """The task's callback outcome once it says delivered: the sink has the POST a moment before
    the job records that it got through."""
    deadline = time.monotonic() + timeout
    while not (callback := api.get(f"/v1/async-tasks/{task_id}").json()["callback"])["delivered"]:
        assert time.monotonic() < deadline, callback
        time.sleep(0.05)
    return callback


@pytest.fixture
def callback_worker(live_stack, settings):
    """Works the callbacks queue in a thread of this process (an RQ worker installs signal
    handlers, which only the main thread may): pops each job and performs it, as the
    controller's worker does."""
    settings.CALLBACK_ALLOW_PRIVATE_TARGETS = True
    settings.CALLBACK_RETRY_BASE_SECONDS = 0.3
    stop = threading.Event()

    def work():
        queue = django_rq.get_queue("callbacks")
        while not stop.is_set():
            job_id = queue.connection.lpop(queue.key)
            if job_id is None:
                stop.wait(0.05)
                continue
            close_old_connections()  # as a request or an RQ job would: a fresh view of the database
            try:
                Job.fetch(job_id.decode(), connection=queue.connection).perform()
            except Exception:  # noqa: BLE001 - as an RQ worker would: the job fails, the worker goes on
                logging.getLogger(__name__).exception("callback job %s failed", job_id)

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    yield live_stack
    stop.set()
    thread.join(timeout=15)


def squarer():
    def load_predict_fn(model):
        def predict(x):
            if x < 0:
                raise ValueError("negative")
            return x * x

        return predict

    return {"model": None, "load_predict_fn": load_predict_fn}


def create_async(api, name: str, **fields) -> tuple[str, str]:
    bundle_id = api.upload_bundle(squarer(), name)
    body = {
        "name": name, "model_bundle_id": bundle_id, "endpoint_type": "async", "metadata": {}, "cpus": 1, "gpus": 0,
        "memory": "1Gi", "storage": None, "min_workers": 1, "max_workers": 1, "per_worker": 1, "labels": {}, **fields,
    }
    created = api.post("/v1/model-endpoints", json=body)
    assert created.status_code == 200, created.text
    answer = created.json()
    return answer["endpoint_creation_task_id"], answer["callback_signing_secret"]


def test_each_async_task_posts_one_signed_callback_with_its_outcome(callback_worker, owner):
    api = api_for(callback_worker, owner)
    sink = Sink()
    endpoint_id, secret = create_async(
        api, "called-back", post_inference_hooks=["callback"], default_callback_url=sink.url,
        default_callback_auth={"kind": "basic", "username": "hook", "password": "s3cret"},
    )
    assert "callback_signing_secret" not in api.endpoint(endpoint_id)  # shown once
    task_ids = [
        api.post(f"/v1/async-tasks?model_endpoint_id={endpoint_id}", json={"args": {"x": x}}).json()["task_id"]
        for x in (2, 3, -1)
    ]
    received = sink.wait_for(3)
    by_task = {r["body"]["task_id"]: r for r in received}
    assert set(by_task) == set(task_ids)
    assert by_task[task_ids[0]]["body"] == {"task_id": task_ids[0], "status": "SUCCESS", "result": {"result": "4"}}
    failed = by_task[task_ids[2]]["body"]
    assert failed["status"] == "FAILURE" and "ValueError: negative" in failed["traceback"]
    for record in received:
        assert verify(secret, record["headers"], record["raw"])
        assert not verify("another secret", record["headers"], record["raw"])
        assert record["headers"]["Authorization"] == "Basic " + base64.b64encode(b"hook:s3cret").decode()
    assert delivered_outcome(api, task_ids[0]) == {"delivered": True, "attempts": 1, "last_error": None}
    time.sleep(1)  # a duplicate would have arrived by now (the tick runs every 0.2 s)
    assert len(sink.received) == 3


def test_sink_that_fails_twice_gets_the_callback_on_the_third_try(callback_worker, owner):
    api = api_for(callback_worker, owner)
    sink = Sink(failures=2)
    endpoint_id, secret = create_async(api, "retried")
    task_id = api.post(
        f"/v1/async-tasks?model_endpoint_id={endpoint_id}", json={"args": {"x": 5}, "callback_url": sink.url}
    ).json()["task_id"]
    (record,) = sink.wait_for(1)
    assert sink.attempts == 3
    assert record["body"] == {"task_id": task_id, "status": "SUCCESS", "result": {"result": "25"}}
    assert verify(secret, record["headers"], record["raw"])
    callback = delivered_outcome(api, task_id)
    assert callback["attempts"] == 3
    assert callback["last_error"] == "HTTP 503 from the callback URL"
    # /metrics counts each attempt by outcome.
    assert delivery_counts(endpoint_id) == {"delivered": 1, "retried": 2, "gave_up": 0}


def delivery_counts(endpoint_id: str) -> dict[str, float]:
    from prometheus_client.parser import text_string_to_metric_families

    from workers.metrics import prometheus_text

    deadline = time.monotonic() + 5
    while True:  # the delivered count follows the delivered flag by one Redis call
        families = {f.name: f for f in text_string_to_metric_families(prometheus_text().decode())}
        counts = {
            sample.labels["outcome"]: sample.value
            for sample in families["launch_callback_deliveries"].samples
            if sample.labels["endpoint_id"] == endpoint_id and sample.name.endswith("_total")
        }
        if counts.get("delivered") or time.monotonic() > deadline:
            return counts
        time.sleep(0.05)


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"default_callback_url": "ftp://example.com/x"}, "default_callback_url"),
        ({"default_callback_url": "http://127.0.0.1:9/x"}, "default_callback_url"),
        ({"default_callback_url": "http://10.0.0.8/x"}, "default_callback_url"),
        ({"default_callback_auth": {"kind": "basic", "username": "u"}}, "default_callback_auth"),
        ({"default_callback_auth": {"kind": "token"}}, "default_callback_auth"),
        ({"post_inference_hooks": ["billing"]}, "post_inference_hooks"),
    ],
)
def test_bad_callback_settings_are_422_naming_the_field(owner, world_bundle, fields, field):
    body = {
        "name": "bad-callback", "model_bundle_id": world_bundle, "endpoint_type": "async", "metadata": {}, "cpus": 1,
        "gpus": 0, "memory": "1Gi", "storage": None, "min_workers": 0, "max_workers": 1, "per_worker": 1,
        "labels": {}, **fields,
    }
    response = owner.client.post("/v1/model-endpoints", body, format="json")
    assert response.status_code == 422, response.content
    assert response.json()["detail"][0]["loc"][-1] == field


def test_callback_on_a_sync_task_is_refused(owner, world_bundle):
    body = {
        "name": "sync-cb", "model_bundle_id": world_bundle, "endpoint_type": "sync", "metadata": {}, "cpus": 1,
        "gpus": 0, "memory": "1Gi", "storage": None, "min_workers": 1, "max_workers": 1, "per_worker": 1, "labels": {},
    }
    endpoint_id = owner.client.post("/v1/model-endpoints", body, format="json").json()["endpoint_creation_task_id"]
    response = owner.client.post(
        f"/v1/sync-tasks?model_endpoint_id={endpoint_id}", {"args": {"x": 1}, "callback_url": "https://example.com/"},
        format="json",
    )
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"][-1] == "callback_url"


@pytest.fixture
def world_bundle(db, owner):
    from tests.factories import make_bundle

    return make_bundle(team=owner.team).id


def _self_signed(workdir, name: str) -> tuple[str, str]:
    """A certificate for 127.0.0.1 and its key, PEM text (openssl, as an operator would make one)."""
    cert, key = workdir / f"{name}.crt", workdir / f"{name}.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", f"/CN={name}",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )
    return cert.read_text(), key.read_text()


class MutualTLSSink(Sink):
    """The Sink over https that takes only connections presenting `client_cert`."""

    def __init__(self, workdir, client_cert: str):
        super().__init__()
        server_cert, server_key = _self_signed(workdir, "sink")
        (workdir / "sink.pem").write_text(server_cert + server_key)
        (workdir / "trusted-client.crt").write_text(client_cert)
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(workdir / "trusted-client.crt"))
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_cert_chain(str(workdir / "sink.pem"))
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.url = self.url.replace("http://", "https://")
        self.ca_file = str(workdir / "sink.crt")
        (workdir / "sink.crt").write_text(server_cert)


def test_mtls_callback_presents_the_client_certificate_and_a_wrong_one_is_not_delivered(
    callback_worker, owner, tmp_path, settings,
):
    api = api_for(callback_worker, owner)
    client_cert, client_key = _self_signed(tmp_path, "client")
    stranger_cert, stranger_key = _self_signed(tmp_path, "stranger")
    sink = MutualTLSSink(tmp_path, client_cert)
    settings.CALLBACK_CA_FILE = sink.ca_file  # the sink's certificate comes from a private CA
    endpoint_id, secret = create_async(
        api, "mtls-hook", post_inference_hooks=["callback"], default_callback_url=sink.url,
        default_callback_auth={"kind": "mtls", "cert": client_cert, "key": client_key},
    )
    good = api.post(f"/v1/async-tasks?model_endpoint_id={endpoint_id}", json={"args": {"x": 6}}).json()["task_id"]
    (record,) = sink.wait_for(1)
    assert record["body"] == {"task_id": good, "status": "SUCCESS", "result": {"result": "36"}}
    assert verify(secret, record["headers"], record["raw"])
    assert delivered_outcome(api, good)["attempts"] == 1

    # A task that names the same sink with a certificate the sink does not trust: the handshake
    # fails, the outcome says so, and nothing reaches the sink.
    refused = api.post(
        f"/v1/async-tasks?model_endpoint_id={endpoint_id}",
        json={"args": {"x": 7}, "callback_url": sink.url,
              "callback_auth": {"kind": "mtls", "cert": stranger_cert, "key": stranger_key}},
    ).json()["task_id"]
    deadline = time.monotonic() + 30
    while (callback := api.get(f"/v1/async-tasks/{refused}").json()["callback"])["attempts"] < 2:
        assert time.monotonic() < deadline, callback
        time.sleep(0.1)
    assert callback["delivered"] is False
    # TLS 1.3 may report the refusal at the handshake or as the connection closing after it.
    assert callback["last_error"] and "HTTP" not in callback["last_error"], callback
    assert len(sink.received) == 1


def test_mtls_auth_that_cannot_load_is_422_naming_the_field(owner, world_bundle, tmp_path):
    cert, _ = _self_signed(tmp_path, "client")
    _, other_key = _self_signed(tmp_path, "other")
    for auth in ({"kind": "mtls", "cert": "not a certificate", "key": other_key},
                 {"kind": "mtls", "cert": cert, "key": other_key}):  # a key that is not the cert's
        body = {
            "name": "bad-mtls", "model_bundle_id": world_bundle, "endpoint_type": "async", "metadata": {}, "cpus": 1,
            "gpus": 0, "memory": "1Gi", "storage": None, "min_workers": 0, "max_workers": 1, "per_worker": 1,
            "labels": {}, "default_callback_auth": auth,
        }
        response = owner.client.post("/v1/model-endpoints", body, format="json")
        assert response.status_code == 422, response.content
        assert "default_callback_auth" in response.content.decode()
    assert owner.client.get("/v1/model-endpoints").json()["model_endpoints"] == []
