"""API key authentication: HTTP Basic with the key as username (what the public client
sends) or `Authorization: Bearer KEY`."""

from __future__ import annotations

import base64
import binascii
import hmac

from django.contrib.auth import get_user_model
from django.db import connection
from django.utils import timezone
from rest_framework import authentication, exceptions

from accounts import throttling
from accounts.models import LAST_USED_RESOLUTION, ApiKey, Membership, Team, hash_key
from launch_site.db import instance_from_row


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


# One cursor query: authentication runs on every inference request, where the ORM's SQL
# compilation of a select_related lookup cost more than the whole Redis relay. The flags are
# computed in SQL so that no column needs the ORM's type converters. The membership join makes
# a key stop working for its team the moment its user leaves the team (DESIGN §4).
_KEY_SQL = (
    "SELECT k.id, k.hashed_key, k.team_id, k.user_id, u.is_active,"
    " k.revoked_at IS NULL, (k.last_used_at IS NULL OR k.last_used_at < %s)"
    " FROM {key_table} k JOIN {user_table} u ON u.id = k.user_id"
    " JOIN {membership_table} m ON m.user_id = k.user_id AND m.team_id = k.team_id"
    " WHERE k.prefix = %s"
)


def authenticate_key(raw_key: str) -> ApiKey:
    """The active key `raw_key` names. Only its id, hash, team and user ids are loaded (other
    fields, and its user and team, load on access): the inference path needs no more."""
    parts = raw_key.split("_")
    if len(parts) < 3 or parts[0] != "lk":
        raise exceptions.AuthenticationFailed("Invalid API key.")
    User = get_user_model()
    sql = _KEY_SQL.format(
        key_table=ApiKey._meta.db_table,
        user_table=connection.ops.quote_name(User._meta.db_table),
        membership_table=Membership._meta.db_table,
    )
    now = timezone.now()
    with connection.cursor() as cursor:
        cursor.execute(sql, [now - LAST_USED_RESOLUTION, parts[1]])
        row = cursor.fetchone()
    if row is None or not hmac.compare_digest(row[1], hash_key(raw_key)) or not (row[4] and row[5]):
        # One answer for unknown, revoked, a deactivated user and a user who left the team.
        raise exceptions.AuthenticationFailed("Invalid or revoked API key.")
    key_id, hashed_key, team_id, user_id, _, _, stale = row
    api_key = instance_from_row(
        ApiKey, ("id", "prefix", "hashed_key", "team_id", "user_id"), (key_id, parts[1], hashed_key, team_id, user_id)
    )
    api_key.user = instance_from_row(User, ("id", "is_active"), (user_id, True))
    api_key.team = instance_from_row(Team, ("id",), (team_id,))
    if stale:
        ApiKey.objects.filter(pk=key_id).update(last_used_at=now)
    return api_key


def api_key_from_request(request) -> ApiKey | None:
    """The API key a request carries (None without an Authorization header)."""
    header = request.META.get("HTTP_AUTHORIZATION", "")
    if not header:
        return None
    address = throttling.client_address(request)
    throttling.check_address(address)
    try:
        raw_key = key_from_header(header)
        if raw_key is None:
            raise exceptions.AuthenticationFailed("Send the API key as Basic username or Bearer token.")
        return authenticate_key(raw_key)
    except exceptions.AuthenticationFailed:
        throttling.record_invalid_key(address)
        raise


class ApiKeyAuthentication(authentication.BaseAuthentication):
    def authenticate(self, request):
        api_key = api_key_from_request(request)
        return None if api_key is None else (api_key.user, api_key)

    def authenticate_header(self, request) -> str:
        return 'Basic realm="launch"'
