"""Settings, all from environment variables (DESIGN §5)."""

from __future__ import annotations

import secrets
from pathlib import Path

from launch_site.embedded_redis import embedded_redis_url
from launch_site.env import (
    ConfigError,
    database_from_url,
    env_bool,
    env_choice,
    env_float,
    env_int,
    env_mounts,
    env_str,
    env_uid_range,
    external_redis_url,
)
from launch_site.home import secure_launch_home
from launch_site.lean_imports import import_drf_compat

BASE_DIR = Path(__file__).resolve().parent.parent
LAUNCH_HOME = Path(env_str("LAUNCH_HOME") or BASE_DIR / ".launch").resolve()
LAUNCH_HOME.mkdir(parents=True, exist_ok=True)
secure_launch_home(LAUNCH_HOME)

DEBUG = env_bool("DEBUG", False)
# The embedded stack (no DATABASE_URL) is a single-machine developer setup; production sets
# DATABASE_URL and then must also set SECRET_KEY and ALLOWED_HOSTS.
EMBEDDED = not env_str("DATABASE_URL")


def _secret_key() -> str:
    key = env_str("SECRET_KEY")
    if key:
        return key
    if not EMBEDDED:
        raise ConfigError("SECRET_KEY is required when DATABASE_URL is set")
    key_file = LAUNCH_HOME / "secret_key"
    if not key_file.exists():
        # Write then rename: concurrent first starts (test workers) must not read a half file.
        tmp = key_file.with_name(f"secret_key.{secrets.token_hex(4)}")
        tmp.write_text(secrets.token_urlsafe(50))
        tmp.chmod(0o600)
        tmp.rename(key_file)
    return key_file.read_text().strip()


SECRET_KEY = _secret_key()
# LAUNCH_SECURE=1 (production behind HTTPS): Secure cookies, HSTS, and ALLOWED_HOSTS required
# (never "*"). Off by default: the embedded stack is served over plain HTTP on 127.0.0.1.
LAUNCH_SECURE = env_bool("LAUNCH_SECURE", False)
ALLOWED_HOSTS = [h for h in (env_str("ALLOWED_HOSTS") or ("*" if EMBEDDED and not LAUNCH_SECURE else "")).split(",") if h]
if LAUNCH_SECURE:
    if not ALLOWED_HOSTS or "*" in ALLOWED_HOSTS:
        raise ConfigError("LAUNCH_SECURE=1 requires ALLOWED_HOSTS: the host names this server answers to (not '*')")
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 31_536_000, minimum=0)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", False)
    SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", False)
    if env_bool("LAUNCH_BEHIND_TLS_PROXY", False):
        # Only when a proxy in front sets it and strips it from clients.
        SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SAMESITE = "Lax"
# The address clients use to reach this server: the base of every URL it hands out (upload
# URLs, result URLs). Empty: the request's own host (the embedded stack on 127.0.0.1).
LAUNCH_PUBLIC_URL = (env_str("LAUNCH_PUBLIC_URL") or "").rstrip("/")
if LAUNCH_SECURE and not LAUNCH_PUBLIC_URL:
    raise ConfigError("LAUNCH_SECURE=1 requires LAUNCH_PUBLIC_URL (signed URLs must not follow the Host header)")
CSRF_TRUSTED_ORIGINS = [o for o in (env_str("CSRF_TRUSTED_ORIGINS") or "").split(",") if o]

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "django_rq",
    "django_htmx",
    "launch_site",
    "accounts",
    "bundles",
    "endpoints",
    "batchjobs",
    "workers",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "launch_site.middleware.ContentSecurityPolicyMiddleware",
    # Before CsrfViewMiddleware, which reads a form body in its process_view.
    "launch_site.middleware.RequestSizeMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
    # Last, so its process_exception sees a view's exception first: Redis down -> 503.
    "launch_site.middleware.RedisUnavailableMiddleware",
]

ROOT_URLCONF = "launch_site.urls"
WSGI_APPLICATION = "launch_site.wsgi.application"  # tests (live server), a WSGI server if you run one
ASGI_APPLICATION = "launch_site.asgi.application"  # what `launch up` and the web image serve
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "launch_site.context_processors.runtime_warning",
            ]
        },
    }
]

DATABASE_URL = env_str("DATABASE_URL") or f"sqlite:///{LAUNCH_HOME / 'launch.sqlite3'}"
DATABASES = {"default": database_from_url(DATABASE_URL)}
if DATABASES["default"]["ENGINE"].endswith("sqlite3"):
    # A file, not the in-memory default: live-server tests share it with the controller thread.
    DATABASES["default"]["TEST"] = {"NAME": str(LAUNCH_HOME / "test.sqlite3")}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# Without REDIS_URL the embedded redis-server (started by `manage.py launch up`) listens on a
# unix socket under LAUNCH_HOME, its `default` user guarded by LAUNCH_HOME/redis_password.
EMBEDDED_REDIS_SOCKET = LAUNCH_HOME / "run" / "redis.sock"
REDIS_URL = external_redis_url() or embedded_redis_url(LAUNCH_HOME)
RQ_QUEUES = {
    "control": {"URL": REDIS_URL, "DEFAULT_TIMEOUT": 600},
    # Callback deliveries (endpoints.callbacks), apart so a slow sink never delays a deploy.
    "callbacks": {"URL": REDIS_URL, "DEFAULT_TIMEOUT": 120},
}
RQ = {"COMMIT_MODE": "on_db_commit"}

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = False
USE_TZ = True

STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = LAUNCH_HOME / "staticfiles"
LOGIN_URL = "/accounts/login/"
LOGIN_REDIRECT_URL = "/"

PORT = env_int("PORT", 8000, minimum=1)
# Where replicas reach this server (bundle downloads, result uploads).
LAUNCH_INTERNAL_URL = env_str("LAUNCH_INTERNAL_URL") or f"http://127.0.0.1:{PORT}"
LAUNCH_RUNTIME = env_choice("LAUNCH_RUNTIME", "local", ("local", "docker", "ray"))
# The local runtime, when the server runs as root with setpriv installed, runs each replica
# under a uid of its own from this range ("first-last"; no passwd entry is needed), or "off".
LOCAL_REPLICA_UIDS = env_uid_range("LOCAL_REPLICA_UIDS", (200_000, 265_535))
# The local runtime's GPUs: this command is run with -L (nvidia-smi's list, one "GPU <index>:
# <name> (UUID: ...)" line per device); tests point it at a fake printing such lines.
LOCAL_NVIDIA_SMI = env_str("LAUNCH_LOCAL_NVIDIA_SMI") or "nvidia-smi"
# A bundle's requirements run on the local runtime from a virtualenv per requirements hash
# under LAUNCH_HOME/venvs, installed by a control-queue job bounded by this.
LOCAL_VENV_INSTALL_TIMEOUT_SECONDS = env_float("LAUNCH_LOCAL_VENV_INSTALL_TIMEOUT_SECONDS", 900.0)
LAUNCH_ACCESS_LOG = env_bool("LAUNCH_ACCESS_LOG", False)  # the web server's access log in `launch up`
# Each replica gets a Redis ACL user limited to its endpoint's keys (when the server has ACLs
# and lets us create users); off: replicas get REDIS_URL's own credentials.
LAUNCH_REDIS_ACL = env_bool("LAUNCH_REDIS_ACL", True)
# The Redis URL handed to replicas, when they reach Redis by another address than this process.
LAUNCH_REPLICA_REDIS_URL = env_str("LAUNCH_REPLICA_REDIS_URL") or ""
REPLICA_STOP_GRACE_SECONDS = env_float("REPLICA_STOP_GRACE_SECONDS", 60.0)
REPLICA_START_TIMEOUT_SECONDS = env_float("REPLICA_START_TIMEOUT_SECONDS", 600.0)
# Each local replica log (and its one rotated copy) is kept near this size; see workers.runtimes.local.
REPLICA_LOG_MAX_BYTES = env_int("REPLICA_LOG_MAX_BYTES", 10 * 1024**2, minimum=4096)
BUNDLE_STORE_DIR = Path(env_str("BUNDLE_STORE_DIR") or LAUNCH_HOME / "store")
BUNDLE_STORE_BUCKET = env_str("BUNDLE_STORE_BUCKET") or "launch-bundles"
MAX_UPLOAD_BYTES = env_int("MAX_UPLOAD_BYTES", 2 * 1024**3, minimum=1)
MAX_REQUEST_BYTES = env_int("MAX_REQUEST_BYTES", 10 * 1024**2, minimum=1)
# A replica's bundle URL: it downloads at start, so minutes are enough; the URL is also bound
# to the replica (useless once the replica stops).
BUNDLE_URL_TTL_SECONDS = env_int("BUNDLE_URL_TTL_SECONDS", 900, minimum=1)
UPLOAD_URL_TTL_SECONDS = env_int("UPLOAD_URL_TTL_SECONDS", 3600, minimum=1)
# The longest a sync request waits for its answer; a request's timeout_seconds may lower it.
# Operators with long GPU predicts raise it (the waiting Redis pool follows it).
SYNC_TASK_TIMEOUT_SECONDS = env_float("SYNC_TASK_TIMEOUT_SECONDS", 60.0)
# A task running longer than this (or its endpoint's queue_message_timeout_seconds) is FAILURE
# "timed out after N s" and its replica is killed and replaced.
TASK_TIMEOUT_SECONDS = env_float("TASK_TIMEOUT_SECONDS", 600.0)
REDIS_CONNECT_TIMEOUT_SECONDS = env_float("REDIS_CONNECT_TIMEOUT_SECONDS", 2.0)
REDIS_SOCKET_TIMEOUT_SECONDS = env_float("REDIS_SOCKET_TIMEOUT_SECONDS", 10.0)
# Replicas that die before they ever become ready are replaced after a growing delay
# (doubling from the base, capped), so a crash-looping replica does not spin.
REPLICA_RESTART_BACKOFF_SECONDS = env_float("REPLICA_RESTART_BACKOFF_SECONDS", 0.5)
REPLICA_RESTART_BACKOFF_MAX_SECONDS = env_float("REPLICA_RESTART_BACKOFF_MAX_SECONDS", 30.0)
TASK_EXPIRES_SECONDS = env_int("TASK_EXPIRES_SECONDS", 24 * 3600, minimum=1)
# Each endpoint keeps the ids of its newest tasks for the dashboard's request list.
REQUEST_HISTORY_LENGTH = env_int("REQUEST_HISTORY_LENGTH", 500, minimum=0)
# The controller samples each endpoint's counters this often for the charts, and keeps
# METRICS_RETENTION_SECONDS of samples (a capped list per endpoint in Redis).
METRICS_SAMPLE_SECONDS = env_float("METRICS_SAMPLE_SECONDS", 10.0)
METRICS_RETENTION_SECONDS = env_int("METRICS_RETENTION_SECONDS", 24 * 3600, minimum=60)
# /metrics answers staff sessions, and requests with `Authorization: Bearer <this token>`.
METRICS_TOKEN = env_str("METRICS_TOKEN") or ""
# A streaming request holds a web server thread for its life: it ends (FAILURE event, and the
# replica stops the predict) after this long. SSE keep-alive comments are sent every
# STREAM_KEEPALIVE_SECONDS while the predict is quiet, which also notices a gone client.
STREAM_TIMEOUT_SECONDS = env_float("STREAM_TIMEOUT_SECONDS", 600.0)
STREAM_KEEPALIVE_SECONDS = env_float("STREAM_KEEPALIVE_SECONDS", 5.0)
# Callbacks (endpoints.callbacks): a failed delivery is retried with doubling delays from
# CALLBACK_RETRY_BASE_SECONDS for at most CALLBACK_RETRY_FOR_SECONDS after the task ended.
CALLBACK_TIMEOUT_SECONDS = env_float("CALLBACK_TIMEOUT_SECONDS", 10.0)
CALLBACK_RETRY_BASE_SECONDS = env_float("CALLBACK_RETRY_BASE_SECONDS", 1.0)
CALLBACK_RETRY_FOR_SECONDS = env_float("CALLBACK_RETRY_FOR_SECONDS", 3600.0)
# Callback URLs that resolve to private, loopback or link-local addresses are refused unless
# the operator allows them (a sink inside the same network; the tests' loopback sink).
CALLBACK_ALLOW_PRIVATE_TARGETS = env_bool("CALLBACK_ALLOW_PRIVATE_TARGETS", False)
# A PEM bundle of CAs trusted for https callback targets besides the system's (a private CA).
CALLBACK_CA_FILE = env_str("CALLBACK_CA_FILE", "")
TASK_MAX_ATTEMPTS = env_int("TASK_MAX_ATTEMPTS", 3, minimum=1)
SCALE_DOWN_DELAY_SECONDS = env_float("SCALE_DOWN_DELAY_SECONDS", 60.0)
HEARTBEAT_TIMEOUT_SECONDS = env_float("HEARTBEAT_TIMEOUT_SECONDS", 10.0)
TICK_SECONDS = env_float("TICK_SECONDS", 1.0)
# Docker runtime (LAUNCH_RUNTIME=docker). Worker images per framework are set in the admin
# (WorkerImage); these are the defaults when no row matches.
DOCKER_WORKER_IMAGE = env_str("LAUNCH_DOCKER_WORKER_IMAGE") or "launch-worker:cpu"
DOCKER_WORKER_IMAGE_GPU = env_str("LAUNCH_DOCKER_WORKER_IMAGE_GPU") or "launch-worker:cuda"
DOCKER_PYTHON = env_str("LAUNCH_DOCKER_PYTHON") or "python"
DOCKER_WORKDIR = env_str("LAUNCH_DOCKER_WORKDIR") or "/app"
# Read-only (or :rw) bind mounts added to every replica container, e.g. a model cache.
DOCKER_EXTRA_MOUNTS = env_mounts("LAUNCH_DOCKER_EXTRA_MOUNTS")
DOCKER_TIMEOUT_SECONDS = env_float("LAUNCH_DOCKER_TIMEOUT_SECONDS", 5.0)
# The network of a runnable image's container (its forwarder joins its namespace): its own
# namespace, so every replica's server can listen on port 5005. "bridge" reaches Redis and
# the web server by the host's address (not 127.0.0.1); "none" suits an embedded Redis on a
# unix socket, which only the forwarder gets mounted.
DOCKER_RUNNABLE_IMAGE_NETWORK = env_str("LAUNCH_DOCKER_RUNNABLE_IMAGE_NETWORK") or "bridge"
# The port a runnable image's server listens on (model-engine's convention, 5005); another
# one where containers share the host's network and something else holds 5005.
RUNNABLE_IMAGE_PORT = env_int("LAUNCH_RUNNABLE_IMAGE_PORT", 5005, minimum=1)
# The network of a serve-loop replica: "per-owner" (a bridge network of its endpoint or batch
# job, created on demand: no reach into the host's loopback services, nor into other owners'
# replicas' networks), "host" (the host's network namespace), or the name of an existing
# network. "per-owner" falls back to host networking, with a warning in the log and the
# container's launch.network_fallback label, when the engine cannot create the network or the
# replica must reach Redis or the web server on the host's loopback (SECURITY.md).
DOCKER_REPLICA_NETWORK = env_str("LAUNCH_DOCKER_REPLICA_NETWORK") or "per-owner"
# A serve-loop replica's root filesystem is read-only, with a tmpfs at /tmp and at its HOME
# (/home/launch); false for bundles that must write elsewhere (SECURITY.md).
DOCKER_READ_ONLY_ROOT = env_bool("LAUNCH_DOCKER_READ_ONLY_ROOT", True)
# The forwarder container's own memory limit (not booked by placement: it is small).
DOCKER_FORWARDER_MEMORY_BYTES = env_int("LAUNCH_DOCKER_FORWARDER_MEMORY_BYTES", 256 * 1024**2, minimum=32 * 1024**2)
DOCKER_BUILD_TIMEOUT_SECONDS = env_float("LAUNCH_DOCKER_BUILD_TIMEOUT_SECONDS", 1800.0)
DOCKER_GPU_PROBE_IMAGE = env_str("LAUNCH_DOCKER_GPU_PROBE_IMAGE") or "nvidia/cuda:12.4.1-base-ubuntu22.04"
# Ray runtime (LAUNCH_RUNTIME=ray; pip install -r requirements-ray.txt): the cluster's GCS
# address (host:port; "ray://" needs ray[client]); empty: the cluster `ray start` began on
# this machine. Replicas are detached actors named by replica id in RAY_NAMESPACE.
RAY_ADDRESS = env_str("RAY_ADDRESS") or ""
RAY_NAMESPACE = env_str("LAUNCH_RAY_NAMESPACE") or "launch"
HOST_UNHEALTHY_AFTER_FAILURES = env_int("LAUNCH_HOST_UNHEALTHY_AFTER_FAILURES", 3, minimum=1)
# Guessing is throttled (accounts.throttling; counters in Redis, fixed windows). Inference:
# requests per API key per window, 0 = no limit (generous by default: one key of a busy client).
INFERENCE_RATE_LIMIT = env_int("INFERENCE_RATE_LIMIT", 100_000, minimum=0)
INFERENCE_RATE_WINDOW_SECONDS = env_float("INFERENCE_RATE_WINDOW_SECONDS", 60.0)
# Invalid API keys from one client address, then 429 until the window ends.
INVALID_KEY_LIMIT = env_int("INVALID_KEY_LIMIT", 100, minimum=1)
INVALID_KEY_WINDOW_SECONDS = env_float("INVALID_KEY_WINDOW_SECONDS", 60.0)
# Failed password logins (dashboard and admin) for one username from one address (and five
# times that for any username from one address), then refused until the window ends.
LOGIN_FAILURE_LIMIT = env_int("LOGIN_FAILURE_LIMIT", 10, minimum=1)
LOGIN_FAILURE_WINDOW_SECONDS = env_float("LOGIN_FAILURE_WINDOW_SECONDS", 900.0)
AUTHENTICATION_BACKENDS = ["accounts.throttling.ThrottledModelBackend"]
# Django reads the whole body for JSON; uploads stream through their own views.
DATA_UPLOAD_MAX_MEMORY_SIZE = MAX_REQUEST_BYTES

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "accounts.authentication.ApiKeyAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_RENDERER_CLASSES": ["launch_site.renderers.JSONRenderer"],
    # JSON only; the routes that take a file say MultiPartParser themselves. A form body on a
    # JSON route is a 415, never a silently empty update (found by schemathesis).
    "DEFAULT_PARSER_CLASSES": ["rest_framework.parsers.JSONParser"],
    "EXCEPTION_HANDLER": "launch_site.errors.exception_handler",
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "UNAUTHENTICATED_USER": None,
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Launch",
    "DESCRIPTION": "Self-hosted model deployment: bundles, endpoints, tasks, batch jobs.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    # Swagger UI from our own static files (drf-spectacular-sidecar): the docs work offline.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "launch_site.schema.add_error_responses",
    ],
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env_str("LOG_LEVEL") or "INFO"},
    "loggers": {"django.server": {"level": "WARNING"}},
}

# Before anything imports DRF: its optional imports of requests and psycopg2 (via
# django.contrib.postgres) cost the stack 9 MB and serve no request (launch_site/lean_imports.py).
import_drf_compat(DATABASES["default"]["ENGINE"])
