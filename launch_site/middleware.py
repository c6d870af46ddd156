"""Middleware that keeps the API's error shape where Django would answer with its own page:
Redis unreachable (a 503 instead of a 500) and a body over the size limit (a JSON 413 with
the limit instead of an HTML 400). All are MiddlewareMixin hooks that do no I/O, so that the
ASGI entry point (launch_site/asgi.py) can run them in the event loop on the inference routes."""

from __future__ import annotations

from django.conf import settings
from django.core.exceptions import RequestDataTooBig, TooManyFieldsSent, TooManyFilesSent
from django.http import HttpRequest, JsonResponse
from django.utils.deprecation import MiddlewareMixin

from launch_site.errors import REDIS_UNAVAILABLE_ERRORS, redis_unavailable_body, request_too_large_body


def _too_large() -> JsonResponse:
    return JsonResponse(request_too_large_body(), status=413)


def streams_body(view):
    """Mark a view (function or class) that reads its body as a stream, with a limit of its
    own (uploads): RequestSizeMiddleware leaves its requests alone."""
    view.streams_body = True
    return view


class RequestSizeMiddleware(MiddlewareMixin):
    """Refuse a body over MAX_REQUEST_BYTES (DATA_UPLOAD_MAX_MEMORY_SIZE) before anything
    reads it: JSON and form bodies are read whole into memory (CSRF reads a form's). Listed
    before CsrfViewMiddleware so that its process_view runs first. Multipart bodies stream
    their files to disk; Django bounds their other fields and raises RequestDataTooBig, which
    process_exception (dashboard) and the API's exception handler turn into the same 413."""

    def process_view(self, request: HttpRequest, view_func, view_args, view_kwargs) -> JsonResponse | None:
        view_class = getattr(view_func, "cls", None) or getattr(view_func, "view_class", None)
        if getattr(view_func, "streams_body", False) or getattr(view_class, "streams_body", False):
            return None
        if request.content_type == "multipart/form-data":
            return None
        length = request.META.get("CONTENT_LENGTH") or ""
        if length.isdigit() and int(length) > settings.DATA_UPLOAD_MAX_MEMORY_SIZE:
            return _too_large()
        if request.method == "POST" and not getattr(view_func, "csrf_exempt", False):
            # What CsrfViewMiddleware is about to do (read the form), here, so that a form over
            # Django's field or file count limits answers JSON instead of an HTML 400.
            try:
                request.POST  # noqa: B018 - parses the form once; Django caches it
            except (RequestDataTooBig, TooManyFieldsSent, TooManyFilesSent) as error:
                return self.process_exception(request, error)
        return None

    def process_exception(self, request: HttpRequest, exception: Exception) -> JsonResponse | None:
        if isinstance(exception, RequestDataTooBig):
            return _too_large()
        if isinstance(exception, (TooManyFieldsSent, TooManyFilesSent)):
            return JsonResponse({"detail": f"malformed request body: {exception}"}, status=400)
        return None


class RedisUnavailableMiddleware(MiddlewareMixin):
    def process_exception(self, request: HttpRequest, exception: Exception) -> JsonResponse | None:
        if not isinstance(exception, REDIS_UNAVAILABLE_ERRORS):
            return None
        response = JsonResponse(redis_unavailable_body(exception), status=503)
        response["Retry-After"] = "1"
        return response


# The dashboard's own scripts and styles only (htmx is served from static/; inline style
# attributes and htmx's indicator style need 'unsafe-inline' for styles, never for scripts).
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
    "object-src 'none'; base-uri 'self'; form-action 'self'; frame-ancestors 'none'"
)
# The Swagger UI page (drf-spectacular's template, assets from our static files) starts with an
# inline script: no CSP there.
CSP_EXEMPT_PREFIXES = ("/api/docs/",)


class ContentSecurityPolicyMiddleware(MiddlewareMixin):
    def process_response(self, request: HttpRequest, response):
        if not request.path.startswith(CSP_EXEMPT_PREFIXES):
            response.headers.setdefault("Content-Security-Policy", CONTENT_SECURITY_POLICY)
        return response
