"""The OpenAPI document of a team's endpoints (GET /v1/model-endpoints-schema.json): one
operation per endpoint, on the task route its type takes, with the request and answer
schemas of the contract (docs/reference/launch-openapi.json)."""

from __future__ import annotations

import functools
import json
from pathlib import Path

from django.conf import settings

from endpoints.models import ModelEndpoint

ROUTES = {
    ModelEndpoint.EndpointType.SYNC: ("sync-tasks", "SyncEndpointPredictV1Request", "SyncEndpointPredictV1Response"),
    ModelEndpoint.EndpointType.ASYNC: ("async-tasks", "EndpointPredictV1Request", "CreateAsyncTaskV1Response"),
    ModelEndpoint.EndpointType.STREAMING: ("streaming-tasks", "SyncEndpointPredictV1Request", None),
}


@functools.cache
def _contract_schemas() -> dict:
    spec = json.loads((Path(settings.BASE_DIR) / "docs/reference/launch-openapi.json").read_text())
    return spec["components"]["schemas"]


def _with_references(names: set[str]) -> dict:
    """The named schemas and every schema they refer to."""
    schemas, todo, found = _contract_schemas(), list(names), {}
    while todo:
        name = todo.pop()
        if name in found or name not in schemas:
            continue
        found[name] = schemas[name]
        text = json.dumps(schemas[name])
        todo += [part.split('"')[0] for part in text.split('"#/components/schemas/')[1:]]
    return found


def endpoints_openapi(endpoints: list[ModelEndpoint], *, server: str) -> dict:
    paths, used = {}, set()
    for endpoint in endpoints:
        route, request_schema, answer_schema = ROUTES[endpoint.endpoint_type]
        used |= {request_schema, answer_schema} - {None}
        answer = (
            {"application/json": {"schema": {"$ref": f"#/components/schemas/{answer_schema}"}}}
            if answer_schema else {"text/event-stream": {"schema": {"type": "string"}}}
        )
        # The endpoint is chosen by a query parameter, so each endpoint gets a path of its own
        # that carries it (as the hosted service's document does).
        paths[f"/v1/{route}?model_endpoint_id={endpoint.id}"] = {"post": {
            "summary": f"{endpoint.name} ({endpoint.endpoint_type})",
            "operationId": f"predict_{endpoint.name}",
            "description": f"Bundle {endpoint.bundle.name}; status {endpoint.status}.",
            "requestBody": {"required": True, "content": {
                "application/json": {"schema": {"$ref": f"#/components/schemas/{request_schema}"}},
            }},
            "responses": {"200": {"description": "Successful Response", "content": answer}},
            "security": [{"HTTPBasic": []}],
        }}
    return {
        "openapi": "3.0.2",
        "info": {"title": "Launch model endpoints", "version": "1.0.0"},
        "servers": [{"url": server.rstrip("/")}],
        "paths": paths,
        "components": {
            "schemas": _with_references(used),
            "securitySchemes": {"HTTPBasic": {"type": "http", "scheme": "basic"}},
        },
    }
