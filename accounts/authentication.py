"""API key authentication: HTTP Basic with the key as username (what the public client
sends) or `Authorization: Bearer KEY`."""

from __future__ import annotations

import base64
import binascii
import hmac

from rest_framework import authentication, exceptions

from accounts.models import ApiKey, hash_key


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


def authenticate_key(raw_key: str) -> ApiKey:
    parts = raw_key.split("_")
    if len(parts) < 3 or parts[0] != "lk":
        raise exceptions.AuthenticationFailed("Invalid API key.")
    api_key = ApiKey.objects.select_related("team", "user").filter(prefix=parts[1]).first()
    if (
        api_key is None
        or not hmac.compare_digest(api_key.hashed_key, hash_key(raw_key))
        or not api_key.is_active
        or not api_key.user.is_active
    ):
        raise exceptions.AuthenticationFailed("Invalid or revoked API key.")
    api_key.touch()
    return api_key


class ApiKeyAuthentication(authentication.BaseAuthentication):
    def authenticate(self, request):
        header = request.META.get("HTTP_AUTHORIZATION", "")
        if not header:
            return None
        raw_key = key_from_header(header)
        if raw_key is None:
            raise exceptions.AuthenticationFailed("Send the API key as Basic username or Bearer token.")
        api_key = authenticate_key(raw_key)
        return api_key.user, api_key

    def authenticate_header(self, request) -> str:
        return 'Basic realm="launch"'
