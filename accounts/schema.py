"""The API keys in the served OpenAPI schema: HTTP Basic (the key as username, empty
password: what the scale-launch client sends) and Bearer. Loaded by launch_site/urls.py, next to
the schema's routes (what generates a schema loads the URLconf), not by AccountsConfig.ready():
drf-spectacular's extensions module pulls DRF's fields, test client and compat (yaml,
requests, pygments) into every process, the controller too."""

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
