"""Redis credentials of replicas (DESIGN §4): each replica gets an ACL user that reaches its
own endpoint's (or batch job's) keys, `<prefix>*`, with just the commands the serve loop
sends, so bundle code cannot read another team's tasks, touch the control plane's keys or
flush the database.

Users are named `launch-<replica id>`, created before the replica starts and deleted when it
stops. One left behind by a controller crash in between is harmless (its random password
went nowhere) and is not swept: another installation may share this Redis server. Without
ACL support (Redis < 6), or without the right to create users, replicas get REDIS_URL's own
credentials and a warning is logged once.
"""

from __future__ import annotations

import logging
import secrets
from urllib.parse import quote, urlsplit, urlunsplit

import redis
from django.conf import settings

from launch_site.redis_client import get_redis

logger = logging.getLogger(__name__)

USER_PREFIX = "launch-"

# What workers.serve sends, directly or from its scripts (a script's commands are checked
# too), plus what redis-py sends on connect.
REPLICA_COMMANDS = (
    "ping", "hello", "auth", "select",
    "blmove", "lrem", "lpush", "set", "del", "hset", "hget", "hincrby", "exists", "expire",
    "eval", "evalsha", "script|load", "script|exists",
)
# Granted when the server knows them (Redis >= 7 refuses a rule naming an unknown command).
OPTIONAL_COMMANDS = ("client|setinfo",)

_unsupported_logged = False


def user_name(replica_id: str) -> str:
    return f"{USER_PREFIX}{replica_id}"


def replica_redis_url(*, prefix: str, replica_id: str) -> str:
    """The Redis URL to hand to a new replica."""
    base = settings.LAUNCH_REPLICA_REDIS_URL or settings.REDIS_URL
    if not settings.LAUNCH_REDIS_ACL:
        return base
    password = secrets.token_urlsafe(24)
    rules = ["reset", "on", f">{password}", f"~{prefix}*", "resetchannels", "-@all"]
    rules += [f"+{command}" for command in REPLICA_COMMANDS]
    try:
        get_redis().execute_command("ACL", "SETUSER", user_name(replica_id), *rules)
    except redis.ResponseError as error:
        _log_unsupported(error)
        return base
    for command in OPTIONAL_COMMANDS:
        try:
            get_redis().execute_command("ACL", "SETUSER", user_name(replica_id), f"+{command}")
        except redis.ResponseError:
            pass
    return with_credentials(base, user_name(replica_id), password)


def revoke(replica_id: str) -> None:
    if not settings.LAUNCH_REDIS_ACL:
        return
    try:
        get_redis().execute_command("ACL", "DELUSER", user_name(replica_id))
    except redis.ResponseError:
        pass  # no ACLs here: nothing was granted


def with_credentials(url: str, username: str, password: str) -> str:
    """`url` with its user and password replaced (redis://, rediss:// and unix://)."""
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    netloc = f"{quote(username, safe='')}:{quote(password, safe='')}@{host}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def _log_unsupported(error: Exception) -> None:
    global _unsupported_logged
    if not _unsupported_logged:
        _unsupported_logged = True
        logger.warning("replicas share REDIS_URL's credentials: this Redis refused ACL SETUSER (%s)", error)
