"""The API keys in the served OpenAPI schema: HTTP Basic (the key as username, empty
password: what the scale-launch client sends) and Bearer. Loaded by AccountsConfig.ready()."""

from __future__ import annotations

from drf_spectacular.extensions import OpenApiAuthenticationExtension


class ApiKeyAuthenticationScheme(OpenApiAuthenticationExtension):
    target_class = "accounts.authentication.ApiKeyAuthentication"
    name = ["apiKeyBasic", "apiKeyBearer"]

    def get_security_definition(self, auto_schema):
        return [
            {"type": "http", "scheme": "basic", "description": "The API key as username, an empty password."},
            {"type": "http", "scheme": "bearer", "description": "`Authorization: Bearer <API key>`."},
        ]
