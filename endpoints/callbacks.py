"""Callbacks: after an async task ends, the control plane POSTs its outcome to a URL.

Where a callback comes from: the endpoint's `default_callback_url` (and `default_callback_auth`)
when its `post_inference_hooks` hold "callback", or the task's own `callback_url`
(`callback_auth`), which wins. Only async tasks get callbacks.

How it flows (credentials never reach the replica, which runs user code):

  gateway    writes the callback's URL and auth to the control plane's hash
             `launch:callback:<task_id>` (outside every endpoint prefix, so no replica ACL
             user reaches it) and a bare `callback` flag on the task hash.
  replica    its FINISH script (workers.protocol) LPUSHes the task id to `<prefix>callbacks`
             when the flag is there; so does the controller's script that fails a task.
  tick       `drain` pops those lists (and the retries that are due) into jobs on the
             `callbacks` RQ queue, which the controller process works.
  job        `deliver` makes one attempt; a failure is retried after 1, 2, 4... s
             (CALLBACK_RETRY_BASE_SECONDS, doubling, at most 5 min apart) until
             CALLBACK_RETRY_FOR_SECONDS after the first attempt. The outcome (delivered,
             attempts, last_error) stays on the callback hash, shown on GET /v1/async-tasks.

Each delivery is signed: `X-Launch-Signature: t=<unix seconds>,v1=<hex>` where hex is
HMAC-SHA256(endpoint's callback secret, f"{t}.{raw body}"). The secret is shown once, in the
answer that creates the endpoint (`callback_signing_secret`). See docs/callbacks.md.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import logging
import os
import secrets
import socket
import ssl
import tempfile
import time
import urllib.error
import urllib.request
from base64 import b64encode
from urllib.parse import urlsplit

from django.conf import settings

from launch_site.errors import FieldError
from launch_site.redis_client import get_redis
from workers import protocol

logger = logging.getLogger(__name__)

HOOK = "callback"
POST_INFERENCE_HOOKS = (HOOK,)
RETRY_KEY = "launch:callback:retry"  # sorted set: task id -> when its next attempt is due
SIGNATURE_HEADER = "X-Launch-Signature"
MAX_RETRY_DELAY_SECONDS = 300
DRAIN_BATCH = 100
# Counters of delivery outcomes, `<endpoint id>:<outcome>` -> n (the /metrics series).
OUTCOMES_KEY = "launch:callback:outcomes"
CALLBACK_OUTCOMES = ("delivered", "retried", "gave_up")


def config_key(task_id: str) -> str:
    return f"launch:callback:{task_id}"


def new_secret() -> str:
    return secrets.token_hex(32)


def sign(secret: str, body: bytes, timestamp: int) -> str:
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


# --- validation (endpoint and task writes) ------------------------------------------------


def _private_address(host: str) -> str | None:
    """The first private, loopback, link-local or otherwise non-public address `host`
    resolves to, or None. Raises OSError when it does not resolve."""
    for *_, sockaddr in socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP):
        address = ipaddress.ip_address(sockaddr[0])
        if not address.is_global:
            return str(address)
    return None


def check_target(url: str) -> None:
    """Raises ValueError when the URL may not be called back (scheme, host, private target)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("must be an http:// or https:// URL with a host")
    if settings.CALLBACK_ALLOW_PRIVATE_TARGETS:
        return
    try:
        private = _private_address(parts.hostname)
    except OSError as error:
        raise ValueError(f"its host {parts.hostname!r} does not resolve ({error})") from None
    if private is not None:
        raise ValueError(
            f"its host resolves to {private}, a private or loopback address; "
            "the operator can allow those with CALLBACK_ALLOW_PRIVATE_TARGETS=1"
        )


def clean_url(value, field: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > 1000:
        raise FieldError(field, "must be a URL of at most 1000 characters")
    try:
        check_target(value)
    except ValueError as error:
        raise FieldError(field, str(error)) from None
    return value


def clean_auth(value, field: str) -> dict | None:
    """The contract's CallbackAuth: {kind: basic, username, password} or {kind: mtls, cert, key}
    (PEM text). Keys of the other kind may be sent as null (the current client does)."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise FieldError(field, "must be an object with kind basic or mtls")
    kind = value.get("kind")
    needed = {"basic": ("username", "password"), "mtls": ("cert", "key")}.get(kind)
    if needed is None:
        raise FieldError(field, "kind must be basic or mtls")
    for name in needed:
        if not isinstance(value.get(name), str) or not value[name]:
            raise FieldError(field, f"{name} is required (a string) for kind {kind}")
    extra = [k for k, v in value.items() if k not in ("kind", *needed) and v is not None]
    if extra:
        raise FieldError(field, f"unexpected for kind {kind}: {', '.join(sorted(extra))}")
    cleaned = {"kind": kind, **{name: value[name] for name in needed}}
    if kind == "mtls":
        try:
            _tls_context(cleaned)  # a pair that cannot load would fail every delivery: say so now
        except (ssl.SSLError, ValueError) as error:
            raise FieldError(field, f"cert and key must be a matching PEM certificate and key ({error})") from None
    return cleaned


def clean_hooks(value, field: str = "post_inference_hooks") -> list | None:
    if value is None:
        return None
    unknown = [hook for hook in value if hook not in POST_INFERENCE_HOOKS]
    if unknown:
        raise FieldError(field, f"unknown hook {unknown[0]!r}; this server knows: {', '.join(POST_INFERENCE_HOOKS)}")
    return list(value)


def task_callback(endpoint, body: dict, *, async_task: bool) -> tuple[str, dict | None] | None:
    """The (url, auth) a task's outcome goes to, or None."""
    url = clean_url(body.get("callback_url"), "callback_url")
    auth = clean_auth(body.get("callback_auth"), "callback_auth")
    if (url or auth) and not async_task:
        raise FieldError("callback_url" if url else "callback_auth", "callbacks are sent for async tasks only")
    if url is not None:
        return url, auth or endpoint.default_callback_auth
    if auth is not None:
        if not endpoint.default_callback_url:
            raise FieldError("callback_auth", "needs a callback_url (the endpoint has no default_callback_url)")
        return endpoint.default_callback_url, auth
    # In this order: a sync task, or an endpoint without a default URL, never loads the hooks
    # (a deferred field on the inference path: one more query per request).
    if async_task and endpoint.default_callback_url and HOOK in (endpoint.post_inference_hooks or []):
        return endpoint.default_callback_url, endpoint.default_callback_auth
    return None


def add_task_callback(pipe, *, endpoint_id: str, task_id: str, url: str, auth: dict | None, ttl_seconds: int) -> None:
    key = config_key(task_id)
    pipe.hset(key, mapping={
        "endpoint_id": endpoint_id, "url": url, "auth": json.dumps(auth), "attempts": 0, "delivered": 0,
    })
    # Outlives the task record by the retry window, so the outcome can still be read.
    pipe.expire(key, ttl_seconds + int(settings.CALLBACK_RETRY_FOR_SECONDS))


def callback_state(client, task_id: str) -> dict | None:
    """What the task's reader sees of its callback, or None when it has none."""
    delivered, attempts, last_error = client.hmget(config_key(task_id), ["delivered", "attempts", "last_error"])
    if attempts is None:
        return None
    return {
        "delivered": delivered == b"1",
        "attempts": int(attempts),
        "last_error": last_error.decode() if last_error else None,
    }


# --- the control plane (tick hook and RQ job) ---------------------------------------------


def drain() -> int:
    """Tick hook: turn ended tasks with callbacks, and retries now due, into delivery jobs."""
    import django_rq

    from endpoints.models import ModelEndpoint

    client = get_redis()
    endpoint_ids = list(ModelEndpoint.objects.values_list("id", flat=True))
    with client.pipeline(transaction=False) as pipe:
        for endpoint_id in endpoint_ids:
            pipe.lpop(protocol.Keys(protocol.endpoint_prefix(endpoint_id)).callbacks, DRAIN_BATCH)
        now = time.time()
        pipe.zrangebyscore(RETRY_KEY, "-inf", now)
        pipe.zremrangebyscore(RETRY_KEY, "-inf", now)
        *ended, due, _ = pipe.execute()
    task_ids = [task_id.decode() for batch in ended if batch for task_id in batch]
    task_ids += [task_id.decode() for task_id in due]
    # At once, not on commit: the tick is no request and holds no transaction the jobs wait for
    # (and a stale on-commit hook of its thread's connection must not swallow them).
    queue = django_rq.get_queue("callbacks", commit_mode="auto")
    for task_id in task_ids:
        queue.enqueue(deliver, task_id, result_ttl=0, failure_ttl=24 * 3600, job_timeout=120)
    return len(task_ids)


def _body(task_id: str, record: dict) -> bytes:
    body: dict = {"task_id": task_id, "status": record["status"], "result": None}
    if record["status"] == protocol.SUCCESS:
        if record.get("result_pickled"):
            body["result"] = {"result_url": f"{settings.LAUNCH_INTERNAL_URL}/v1/task-results/{task_id}"}
        else:
            body["result"] = {"result": record.get("result")}
    else:
        body["traceback"] = record.get("traceback")
    return json.dumps(body).encode()


def _post(url: str, body: bytes, headers: dict[str, str], auth: dict | None) -> None:
    """One POST; raises on a network error or a status other than 2xx."""
    check_target(url)  # again at delivery: the name may resolve elsewhere by now
    headers = {"Content-Type": "application/json", "User-Agent": "launch-callbacks", **headers}
    if auth and auth["kind"] == "basic":
        token = b64encode(f"{auth['username']}:{auth['password']}".encode()).decode()
        headers["Authorization"] = f"Basic {token}"
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    opener = urllib.request.build_opener(urllib.request.HTTPSHandler(context=_tls_context(auth)), _NoRedirect)
    with opener.open(request, timeout=settings.CALLBACK_TIMEOUT_SECONDS) as response:
        response.read(65536)


def _tls_context(auth: dict | None) -> ssl.SSLContext:
    """The system's CAs plus CALLBACK_CA_FILE (an operator's private CA for its sinks), and the
    client certificate of an mtls auth. ssl takes a certificate only from files: they live in a
    0700 directory for as long as loading takes."""
    context = ssl.create_default_context()
    if settings.CALLBACK_CA_FILE:
        context.load_verify_locations(settings.CALLBACK_CA_FILE)
    if auth and auth["kind"] == "mtls":
        with tempfile.TemporaryDirectory(prefix="launch-callback-") as workdir:
            cert, key = os.path.join(workdir, "cert.pem"), os.path.join(workdir, "key.pem")
            for path, text in ((cert, auth["cert"]), (key, auth["key"])):
                with open(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600), "w") as f:
                    f.write(text)
            context.load_cert_chain(cert, key)
    return context


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A redirect would send the body (and basic credentials) to a target nobody checked."""

    def redirect_request(self, *args, **kwargs):
        return None


def deliver(task_id: str) -> bool:
    """RQ job: one delivery attempt of a task's callback; schedules the next on failure."""
    from endpoints.models import ModelEndpoint

    client = get_redis()
    key = config_key(task_id)
    config = {k.decode(): v.decode() for k, v in client.hgetall(key).items()}
    if not config or config.get("delivered") == "1":
        return False  # unknown (a replica can push any id), expired, or already delivered
    endpoint_id = config["endpoint_id"]
    if protocol.endpoint_id_of_task(task_id) != endpoint_id:
        return False
    record = protocol.read_task(client, protocol.Keys(protocol.endpoint_prefix(endpoint_id)), task_id)
    if record is None or record["status"] not in protocol.TERMINAL:
        return False
    endpoint = ModelEndpoint.objects.filter(pk=endpoint_id).only("callback_secret").first()
    if endpoint is None:
        # Deleted (its config expires with its TTL), or not visible to this worker yet: never
        # drop a callback on one lookup; try again later within the retry window.
        # A miss is no delivery attempt, so it shows as last_error only if it ends the retries.
        misses = client.hincrby(key, "endpoint_misses", 1)
        _retry_later(client, task_id, key, config, "the endpoint was not found", time.time(), attempts=misses,
                     attempted=False)
        return False
    body = _body(task_id, record)
    now = time.time()
    headers = {SIGNATURE_HEADER: sign(endpoint.callback_secret, body, int(now))}
    attempts = client.hincrby(key, "attempts", 1)
    first = float(config.get("first_attempt_at") or now)
    try:
        _post(config["url"], body, headers, json.loads(config.get("auth") or "null"))
    except Exception as error:  # noqa: BLE001 - any failure is this attempt's outcome
        _retry_later(client, task_id, key, config, _describe(error), now, attempts=attempts)
        return False
    client.hset(key, mapping={"delivered": 1, "delivered_at": time.time(), "first_attempt_at": first})
    _count_outcome(client, endpoint_id, "delivered")
    return True


def _retry_later(client, task_id: str, key: str, config: dict, message: str, now: float, *, attempts: int = 0,
                 attempted: bool = True) -> None:
    """Schedule the next attempt with a doubling delay, or give up past CALLBACK_RETRY_FOR_SECONDS."""
    first = float(config.get("first_attempt_at") or now)
    fields = {"first_attempt_at": first}
    if attempted:
        fields["last_error"] = message
    client.hset(key, mapping=fields)
    delay = min(settings.CALLBACK_RETRY_BASE_SECONDS * 2 ** max(attempts - 1, 0), MAX_RETRY_DELAY_SECONDS)
    if now + delay - first <= settings.CALLBACK_RETRY_FOR_SECONDS:
        client.zadd(RETRY_KEY, {task_id: now + delay})
        if attempted:  # a lookup miss is no delivery attempt
            _count_outcome(client, config["endpoint_id"], "retried")
    else:
        client.hset(key, "last_error", f"{message}; gave up after {attempts} attempts")
        _count_outcome(client, config["endpoint_id"], "gave_up")


def _count_outcome(client, endpoint_id: str, outcome: str) -> None:
    client.hincrby(OUTCOMES_KEY, f"{endpoint_id}:{outcome}", 1)


def callback_outcome_counts() -> dict[str, dict[str, int]]:
    """{endpoint id: {outcome: deliveries}} since the counters began (Redis keeps them)."""
    counts: dict[str, dict[str, int]] = {}
    for field, value in get_redis().hgetall(OUTCOMES_KEY).items():
        endpoint_id, _, outcome = field.decode().rpartition(":")
        counts.setdefault(endpoint_id, {})[outcome] = int(value)
    return counts


def _describe(error: Exception) -> str:
    if isinstance(error, urllib.error.HTTPError):
        return f"HTTP {error.code} from the callback URL"
    return f"{type(error).__name__}: {error}"[:500]
