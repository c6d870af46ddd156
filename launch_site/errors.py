"""One error shape for the API.

Services raise ApplicationError subclasses (or Django's ValidationError from full_clean);
the exception handler turns every error into JSON. Field errors follow the contract's
HTTPValidationError: 422 with `detail` a list of {loc, msg, type}, where `msg` starts with
the field name so a human reading only the message still knows what to fix. Other errors
are {"detail": "message"}. Redis unreachable (down, restarting, or not answering within the
client's timeouts) is a 503 with Retry-After, never a 500 or a hang: the same request works
once the supervisor has Redis back.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import redis.exceptions
from django.core.exceptions import PermissionDenied, RequestDataTooBig, TooManyFieldsSent, TooManyFilesSent
from django.core.exceptions import ValidationError as DjangoValidationError
from django.http import Http404, JsonResponse
from rest_framework import exceptions as drf

if TYPE_CHECKING:
    # Imported where a response is built, not here: every process imports this module (the
    # services raise its errors), and DRF's Response pulls its serializers and compat (yaml,
    # requests, pygments): 13 MB in the controller, which builds no response.
    from rest_framework.response import Response

logger = logging.getLogger(__name__)

# BusyLoadingError (Redis reading its append-only file after a restart) is a ConnectionError.
REDIS_UNAVAILABLE_ERRORS = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)
REDIS_UNAVAILABLE_MESSAGE = "Redis is unavailable (it may be restarting); retry in a few seconds."


class ApplicationError(Exception):
    status_code = 400

    def __init__(self, message: str, *, status_code: int | None = None):
        super().__init__(message)
        self.message = message
        if status_code is not None:
            self.status_code = status_code


class NotFoundError(ApplicationError):
    status_code = 404


class ConflictError(ApplicationError):
    status_code = 409


class PayloadTooLargeError(ApplicationError):
    status_code = 413


class UnavailableError(ApplicationError):
    status_code = 503


class FieldError(ApplicationError):
    """A bad value in one named field of the request."""

    status_code = 422

    def __init__(self, field: str, message: str, *, location: str = "body"):
        super().__init__(f"{field}: {message}")
        self.errors = [field_error(field, message, location=location)]


def field_error(field: str | list, message: str, *, location: str = "body", kind: str = "value_error") -> dict:
    path = [str(p) for p in (field if isinstance(field, list) else [field])]
    name = ".".join(p for p in path if p) or location
    return {"loc": [location, *path], "msg": f"{name}: {message}", "type": kind}


def _flatten(detail: Any, path: list[str], location: str) -> list[dict]:
    if isinstance(detail, dict):
        out: list[dict] = []
        for key, value in detail.items():
            sub = [] if key in ("non_field_errors", "__all__") else [str(key)]
            out.extend(_flatten(value, path + sub, location))
        return out
    if isinstance(detail, list):
        if all(not isinstance(item, (dict, list)) for item in detail):
            return [field_error(path, str(item), location=location) for item in detail]
        out = []
        for index, item in enumerate(detail):
            out.extend(_flatten(item, path + [str(index)] if isinstance(item, (dict, list)) and item else path, location))
        return out
    return [field_error(path, str(detail), location=location)]


def validation_response(errors: list[dict]) -> Response:
    from rest_framework.response import Response

    return Response({"detail": errors}, status=422)


def redis_unavailable_body(exc: Exception) -> dict:
    logger.warning("Redis unavailable: %s: %s", type(exc).__name__, exc)
    return {"detail": REDIS_UNAVAILABLE_MESSAGE}


def request_too_large_body() -> dict:
    from django.conf import settings

    limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
    return {
        "detail": f"request body too large: the limit is {limit} bytes (MAX_REQUEST_BYTES); "
        "send large inputs as a file (batch jobs) or a URL",
        "limit_bytes": limit,
    }


def exception_handler(exc: Exception, context: dict) -> Response | None:
    from rest_framework.response import Response

    if isinstance(exc, RequestDataTooBig):
        return Response(request_too_large_body(), status=413)
    if isinstance(exc, (TooManyFieldsSent, TooManyFilesSent)):
        return Response({"detail": f"malformed request body: {exc}"}, status=400)
    if isinstance(exc, REDIS_UNAVAILABLE_ERRORS):
        return Response(redis_unavailable_body(exc), status=503, headers={"Retry-After": "1"})
    if isinstance(exc, FieldError):
        return validation_response(exc.errors)
    if isinstance(exc, ApplicationError) and getattr(exc, "retry_after", None):
        return Response({"detail": exc.message}, status=exc.status_code, headers={"Retry-After": str(exc.retry_after)})
    if isinstance(exc, ApplicationError):
        return Response({"detail": exc.message}, status=exc.status_code)
    if isinstance(exc, DjangoValidationError):
        detail = exc.message_dict if hasattr(exc, "error_dict") else exc.messages
        return validation_response(_flatten(detail, [], "body"))
    if isinstance(exc, drf.ParseError):
        return validation_response([field_error([], f"malformed request body ({exc.detail})", kind="json_invalid")])
    if isinstance(exc, drf.ValidationError):
        request = context.get("request")
        location = "query" if getattr(exc, "location", None) == "query" else "body"
        del request
        return validation_response(_flatten(exc.detail, [], location))
    if isinstance(exc, (drf.NotAuthenticated, drf.AuthenticationFailed)):
        return Response(
            {"detail": str(exc.detail)},
            status=401,
            headers={"WWW-Authenticate": 'Basic realm="launch"'},
        )
    if isinstance(exc, (Http404, drf.NotFound)):
        return Response({"detail": str(getattr(exc, "detail", "")) or "Not found."}, status=404)
    if isinstance(exc, (PermissionDenied, drf.PermissionDenied)):
        return Response({"detail": str(getattr(exc, "detail", "")) or "Permission denied."}, status=403)
    if isinstance(exc, drf.APIException):
        return Response({"detail": str(exc.detail)}, status=exc.status_code)
    return None


def error_json_response(exc: Exception) -> JsonResponse | None:
    """The same answer as exception_handler, for views that do not go through DRF."""
    response = exception_handler(exc, {})
    if response is None:
        return None
    json_response = JsonResponse(response.data, status=response.status_code)
    for header in ("WWW-Authenticate", "Retry-After"):
        if response.has_header(header):
            json_response[header] = response[header]
    return json_response


def query_error(field: str, message: str) -> drf.ValidationError:
    error = drf.ValidationError({field: [message]})
    error.location = "query"  # type: ignore[attr-defined]
    return error


def json_bad_request(request, exception=None):  # noqa: ARG001 - Django's handler400 signature
    # A request Django refuses before any view (an empty or disallowed Host header, a
    # malformed body it had to read): JSON like every other API error, not Django's HTML page.
    return JsonResponse({"detail": "Bad request."}, status=400)


def json_not_found(request, exception=None):  # noqa: ARG001 - Django's handler404 signature
    return JsonResponse({"detail": "Not found."}, status=404)


def json_server_error(request):  # noqa: ARG001
    return JsonResponse({"detail": "Internal server error."}, status=500)
