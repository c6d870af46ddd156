"""Postprocessing of the served OpenAPI schema: the error answers every route can give
(launch_site.errors renders them all), so that clients and fuzzers can trust the schema."""

from __future__ import annotations

ERROR = {"$ref": "#/components/schemas/Error"}
VALIDATION_ERROR = {"$ref": "#/components/schemas/HTTPValidationError"}


# The task routes answer without DRF's content negotiation (endpoints.api.views.InferenceView).
NO_CONTENT_NEGOTIATION = {"/v1/sync-tasks", "/v1/async-tasks", "/v1/streaming-tasks"}


def _response(description: str, schema: dict) -> dict:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def add_error_responses(result: dict, generator, request, public) -> dict:
    components = result.setdefault("components", {}).setdefault("schemas", {})
    components.setdefault("Error", {
        "type": "object", "properties": {"detail": {"type": "string"}}, "required": ["detail"],
    })
    components.setdefault("HTTPValidationError", {
        "type": "object",
        "properties": {"detail": {"type": "array", "items": {
            "type": "object",
            "properties": {"loc": {"type": "array", "items": {"type": "string"}}, "msg": {"type": "string"},
                           "type": {"type": "string"}},
        }}},
    })
    for path, operations in result.get("paths", {}).items():
        for method, operation in operations.items():
            if not isinstance(operation, dict) or "responses" not in operation:
                continue
            # One key, two ways to send it: either scheme alone is enough (an OR, so separate
            # requirements; drf-spectacular writes a list-named extension as one AND entry).
            security = []
            for requirement in operation.get("security", []):
                if len(requirement) > 1 and set(requirement) <= {"apiKeyBasic", "apiKeyBearer"}:
                    security += [{name: []} for name in requirement]
                else:
                    security.append(requirement)
            if "security" in operation:
                operation["security"] = security
            responses = operation["responses"]
            errors = {
                "400": _response("Malformed request.", ERROR),
                "401": _response("No API key, or an invalid, revoked or former member's key.", ERROR),
                "403": _response("Not allowed: a staff-only route, or a dashboard session of a user in no team.",
                                 ERROR),
                "404": _response("No such object in your team.", ERROR),
                "429": _response("Too many invalid keys from this address, or over the key's inference rate "
                                 "(see Retry-After).", ERROR),
                "503": _response("Redis or the endpoint is unavailable (see Retry-After).", ERROR),
            }
            if method in ("post", "put", "patch", "delete"):
                # A delete conflicts too: a bundle an endpoint uses, a host still running replicas.
                errors["409"] = _response("Conflicts with the object's state or a quota.", ERROR)
            if method in ("post", "put", "patch"):
                errors["415"] = _response("The body is not in a media type the route takes (JSON, or a "
                                          "multipart form where the route takes a file).", ERROR)
                errors["413"] = _response("Request body over MAX_REQUEST_BYTES (or an upload over "
                                          "MAX_UPLOAD_BYTES).", ERROR)
            if path not in NO_CONTENT_NEGOTIATION:
                errors["406"] = _response("The Accept header names no media type the route answers.", ERROR)
            errors["422"] = _response("A field (body or query) is invalid; `loc` names it.", VALIDATION_ERROR)
            for status, response in errors.items():
                responses.setdefault(status, response)
    return result
