"""Redis credentials of replicas (DESIGN §4): each replica gets an ACL user that reaches its
own endpoint's (or batch job's) keys, `<prefix>*`, with just the commands the serve loop
sends, so bundle code cannot read another team's tasks, touch the control plane's keys or
flush the database.

Users are named `launch-<replica id>`, created before the replica starts and deleted when it
stops. A user's password is derived from SECRET_KEY and the replica id (an HMAC), so the
controller can create the same user again when Redis restarted without them (ACL users live
in memory unless the server has an aclfile): `restore_users`, run by the tick whenever the
server's run id changes. A replica knows only its own password. One left behind by a
controller crash is harmless and is not swept: another installation may share this Redis. Without
ACL support (Redis < 6), or without the right to create users, replicas get REDIS_URL's own
credentials and a warning is logged once.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
from urllib.parse import quote, urlsplit, urlunsplit

import redis
from django.conf import settings

from launch_site.redis_client import get_redis, new_client

logger = logging.getLogger(__name__)

USER_PREFIX = "launch-"

# What workers.serve sends, directly or from its scripts (a script's commands are checked
# too), plus what redis-py sends on connect. AUTH and HELLO are not in it: Redis lets every
# connection run them whatever its ACL (checked on 6.2 and 7.0), so what keeps a replica from
# becoming another user is that it knows no other password: the embedded Redis's default
# user has one (launch_site.embedded_redis), and an external REDIS_URL's must (SECURITY.md).
REPLICA_COMMANDS = (
    "ping", "select",
    "blmove", "lmove", "lrem", "lpush", "rpush", "llen", "lindex", "lset",  # the last three: FINISH_SCRIPT's drop_inflight
    "set", "del", "hset", "hget", "hmget", "hexists", "hdel", "hincrby", "hincrbyfloat",
    "exists", "expire", "zadd", "zrem",
    "eval", "evalsha", "script|load", "script|exists",
)
# Granted when the server knows them (Redis >= 7 refuses a rule naming an unknown command).
OPTIONAL_COMMANDS = ("client|setinfo",)

_unsupported_logged = False


def user_name(replica_id: str) -> str:
    return f"{USER_PREFIX}{replica_id}"


def _password(replica_id: str) -> str:
    return hmac.new(settings.SECRET_KEY.encode(), f"redis-acl:{replica_id}".encode(), hashlib.sha256).hexdigest()


def _grant(*, prefix: str, replica_id: str) -> bool:
    """Create (or reset) the replica's user; False when this Redis refuses ACL users."""
    rules = ["reset", "on", f">{_password(replica_id)}", f"~{prefix}*", "resetchannels", "-@all"]
    rules += [f"+{command}" for command in REPLICA_COMMANDS]
    try:
        get_redis().execute_command("ACL", "SETUSER", user_name(replica_id), *rules)
    except redis.ResponseError as error:
        _log_unsupported(error)
        return False
    for command in OPTIONAL_COMMANDS:
        try:
            get_redis().execute_command("ACL", "SETUSER", user_name(replica_id), f"+{command}")
        except redis.ResponseError:
            pass
    return True


def replica_redis_url(*, prefix: str, replica_id: str) -> str:
    """The Redis URL to hand to a new replica."""
    base = settings.LAUNCH_REPLICA_REDIS_URL or settings.REDIS_URL
    if not settings.LAUNCH_REDIS_ACL or not _grant(prefix=prefix, replica_id=replica_id):
        return base
    return with_credentials(base, user_name(replica_id), _password(replica_id))


def restore_users(replicas: list[tuple[str, str]]) -> int:
    """Create again the users of live replicas, given as (replica id, prefix) pairs, after a
    Redis restart lost them; returns how many."""
    if not settings.LAUNCH_REDIS_ACL:
        return 0
    return sum(_grant(prefix=prefix, replica_id=replica_id) for replica_id, prefix in replicas)


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


def default_user_is_open() -> bool:
    """True when REDIS_URL's server lets anyone in as its `default` user with any password
    (a Redis without `requirepass`): then bundle code can leave its ACL user with `AUTH
    default x` and everything above is moot. The controller warns about it at start."""
    url = with_credentials(settings.REDIS_URL, "default", secrets.token_hex(16))
    client = new_client(url)
    try:
        return bool(client.ping())
    except redis.exceptions.ConnectionError:  # AuthenticationError included: the door is shut
        return False
    finally:
        client.close()


def _log_unsupported(error: Exception) -> None:
    global _unsupported_logged
    if not _unsupported_logged:
        _unsupported_logged = True
        logger.warning("replicas share REDIS_URL's credentials: this Redis refused ACL SETUSER (%s)", error)
