"""Redis unreachable in a view outside DRF (the dashboard, the store, plain Django views):
the same 503 as the API's exception handler, instead of Django's 500 page."""

from __future__ import annotations

from django.http import HttpRequest, JsonResponse

from launch_site.errors import REDIS_UNAVAILABLE_ERRORS, redis_unavailable_body


class RedisUnavailableMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request: HttpRequest):
        return self.get_response(request)

    def process_exception(self, request: HttpRequest, exception: Exception) -> JsonResponse | None:
        if not isinstance(exception, REDIS_UNAVAILABLE_ERRORS):
            return None
        response = JsonResponse(redis_unavailable_body(exception), status=503)
        response["Retry-After"] = "1"
        return response
