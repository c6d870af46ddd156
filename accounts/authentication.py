"""API key authentication: HTTP Basic with the key as username (what the public client
sends) or `Authorization: Bearer KEY`."""

from __future__ import annotations

import base64
import binascii
import hmac

from django.contrib.auth import get_user_model
from django.db import connection
from rest_framework import authentication, exceptions

from accounts.models import ApiKey, Team, hash_key


def key_from_header(header: str) -> str | None:
    scheme, _, value = header.partition(" ")
    scheme = scheme.lower()
    if scheme == "bearer":
        return value.strip() or None
    if scheme == "basic":
        try:
            decoded = base64.b64decode(value.strip(), validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            raise exceptions.AuthenticationFailed("Malformed Basic credentials.") from None
        username, _, _password = decoded.partition(":")
        return username or None
    return None


# One query with no ORM compilation: authentication runs on every inference request, where
# the ORM's SQL compilation of a select_related lookup cost more than the whole Redis relay.
_KEY_SQL = (
    "SELECT k.id, k.hashed_key, k.revoked_at, k.last_used_at, k.team_id, k.user_id, u.is_active AS user_active"
    " FROM {key_table} k JOIN {user_table} u ON u.id = k.user_id WHERE k.prefix = %s"
)


def authenticate_key(raw_key: str) -> ApiKey:
    """The active key `raw_key` names. Its user and team are loaded lazily (deferred fields):
    the inference path needs only their ids."""
    parts = raw_key.split("_")
    if len(parts) < 3 or parts[0] != "lk":
        raise exceptions.AuthenticationFailed("Invalid API key.")
    User = get_user_model()
    sql = _KEY_SQL.format(key_table=ApiKey._meta.db_table, user_table=connection.ops.quote_name(User._meta.db_table))
    api_key = next(iter(ApiKey.objects.raw(sql, [parts[1]])), None)
    if (
        api_key is None
        or not hmac.compare_digest(api_key.hashed_key, hash_key(raw_key))
        or not api_key.is_active
        or not api_key.user_active
    ):
        raise exceptions.AuthenticationFailed("Invalid or revoked API key.")
    api_key.user = User.from_db(connection.alias, ["id", "is_active"], [api_key.user_id, True])
    api_key.team = Team.from_db(connection.alias, ["id"], [api_key.team_id])
    api_key.touch()
    return api_key


def api_key_from_request(request) -> ApiKey | None:
    """The API key a request carries (None without an Authorization header)."""
    header = request.META.get("HTTP_AUTHORIZATION", "")
    if not header:
        return None
    raw_key = key_from_header(header)
    if raw_key is None:
        raise exceptions.AuthenticationFailed("Send the API key as Basic username or Bearer token.")
    return authenticate_key(raw_key)


class ApiKeyAuthentication(authentication.BaseAuthentication):
    def authenticate(self, request):
        api_key = api_key_from_request(request)
        return None if api_key is None else (api_key.user, api_key)

    def authenticate_header(self, request) -> str:
        return 'Basic realm="launch"'
