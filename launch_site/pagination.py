"""Pages of the API's GET lists. The contract's list answers keep their shape (`{"model_endpoints":
[...]}`); a page is chosen with the optional query parameters `limit` (default
DEFAULT_PAGE_SIZE, at most MAX_PAGE_SIZE) and `offset` (default 0). When more items follow,
the answer carries a `Link: <url>; rel="next"` header with the next page's address (RFC 8288),
so a client that pages can follow it and one that does not still gets a well-formed list.
"""

from __future__ import annotations

from django.http import QueryDict
from drf_spectacular.utils import OpenApiParameter
from rest_framework.response import Response

from launch_site.errors import query_error
from launch_site.public_url import absolute_url
from launch_site.renderers import RenderedJSON, rendered_object

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000

PAGE_PARAMETERS = [
    OpenApiParameter("limit", int, required=False,
                     description=f"Items per page (default {DEFAULT_PAGE_SIZE}, at most {MAX_PAGE_SIZE}). "
                                 'When more follow, the answer has a Link header with rel="next".'),
    OpenApiParameter("offset", int, required=False, description="Items to skip (default 0)."),
]


def _number(query: QueryDict, name: str, default: int, *, minimum: int, maximum: int | None = None) -> int:
    raw = query.get(name)
    if raw is None or raw == "":
        return default
    if not raw.isdigit():
        raise query_error(name, "must be a whole number")
    value = int(raw)
    if value < minimum or (maximum is not None and value > maximum):
        bound = f"from {minimum} to {maximum}" if maximum is not None else f"at least {minimum}"
        raise query_error(name, f"must be {bound}")
    return value


def page_bounds(request) -> tuple[int, int]:
    """(limit, offset) of the request; a bad value is a 400 naming the parameter."""
    query = request.GET
    limit = _number(query, "limit", DEFAULT_PAGE_SIZE, minimum=1, maximum=MAX_PAGE_SIZE)
    offset = _number(query, "offset", 0, minimum=0)
    return limit, offset


def page_of(request, items) -> tuple[list, bool]:
    """The request's page of `items` (an ordered queryset or a list) and whether more follow.
    One row more than the page is read to know, instead of a COUNT."""
    limit, offset = page_bounds(request)
    rows = list(items[offset:offset + limit + 1])
    return rows[:limit], len(rows) > limit


def page_response(request, key: str, items: list, more: bool) -> Response:
    """The answer {key: items}; items may be rendered already (launch_site.renderers), all or none."""
    response = Response(rendered_object(key, items) if items and isinstance(items[0], RenderedJSON) else {key: items})
    if more:
        limit, offset = page_bounds(request)
        query = request.GET.copy()
        query["limit"], query["offset"] = str(limit), str(offset + limit)
        response["Link"] = f'<{absolute_url(request, request.path)}?{query.urlencode()}>; rel="next"'
    return response
