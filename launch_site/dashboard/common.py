"""What every dashboard view shares: the team of the session user, page-or-fragment
rendering, and turning service errors into form errors."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from functools import wraps

from django import forms
from django.conf import settings
from django.contrib.auth.views import redirect_to_login
from django.core.exceptions import ValidationError as DjangoValidationError
from django.core.paginator import Paginator
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.utils.http import urlencode
from django_htmx.http import HttpResponseClientRedirect
from rest_framework import exceptions as drf

from accounts.models import Team
from accounts.selectors import request_team
from launch_site.errors import ApplicationError, FieldError, NotFoundError

PAGE_BASE = "dashboard/base.html"
FRAGMENT_BASE = "dashboard/fragment.html"
# htmx stops polling an element whose response has this status (htmx docs: "286 Stop Polling").
STOP_POLLING = 286
# A live part carries the version of what it shows (`hx-vals`); a poll that would render the
# same answers 204 (htmx swaps nothing: scroll positions and open <details> stay).
LIVE_VERSION_PLACEHOLDER = "__LIVE_VERSION__"
UNCHANGED = 204


LIST_PAGE_SIZE = 25


def list_page(request: HttpRequest, items, *, per_page: int | None = None) -> dict:
    """Server-side search, filter and pagination of a dashboard list share this: one page of
    `items` (a queryset or a list; `?page=N`, where a bad or past-the-end number gives the
    nearest page), and the query string its links keep (the search and the filters).
    Context: `page`, `items` (the page's rows), `keep`, `q`."""
    page = Paginator(items, per_page or LIST_PAGE_SIZE).get_page(request.GET.get("page"))
    keep = request.GET.copy()
    for name in ("page", "rows", "v"):
        keep.pop(name, None)
    return {"page": page, "items": list(page.object_list), "keep": keep.urlencode(), "q": search_text(request)}


def search_text(request: HttpRequest) -> str:
    return request.GET.get("q", "").strip()[:200]


def status_filter(request: HttpRequest, statuses) -> str:
    """`?status=` when it is one of `statuses`, else '' (any)."""
    wanted = request.GET.get("status", "")
    return wanted if wanted in statuses else ""


_CSRF_INPUT = re.compile(r'name="csrfmiddlewaretoken" value="[^"]*"')


def live_trigger(seconds: int) -> str:
    """hx-trigger of a live part: poll every `seconds`, and at once when the tab becomes
    visible again. static/js/dashboard.js cancels polls while the tab is hidden and sends the
    `launch:visible` event (htmx's trigger filters would need eval, which the CSP forbids)."""
    return f"every {seconds}s, launch:visible from:document"


def live_response(request: HttpRequest, response: HttpResponse) -> HttpResponse:
    """Version a live part's fragment; answer 204 when the poller already shows this version."""
    body = response.content.decode()
    if LIVE_VERSION_PLACEHOLDER not in body:
        return response
    # The CSRF token is masked afresh on every render: it is not a change.
    version = hashlib.blake2b(_CSRF_INPUT.sub("", body).encode(), digest_size=8).hexdigest()
    if request.htmx and request.GET.get("v") == version and response.status_code == 200:
        return HttpResponse(status=UNCHANGED)
    response.content = body.replace(LIVE_VERSION_PLACEHOLDER, version).encode()
    return response


def render_page(request: HttpRequest, template: str, context: dict | None = None, *, status: int = 200) -> HttpResponse:
    """One template for the page and its fragment: an htmx request gets only the content block."""
    fragment = bool(getattr(request, "htmx", False)) and not request.htmx.boosted
    context = {
        **(context or {}), "fragment": fragment, "base_template": FRAGMENT_BASE if fragment else PAGE_BASE,
        "live_fast": live_trigger(2), "live_slow": live_trigger(10), "live_version": LIVE_VERSION_PLACEHOLDER,
    }  # fmt: skip
    return render(request, template, context, status=status)


def not_found(request: HttpRequest, message: str = "Not found.") -> HttpResponse:
    # The project's handler404 answers JSON (for the API); the dashboard shows a page.
    return render_page(request, "dashboard/not_found.html", {"message": message}, status=404)


def team_view(view: Callable) -> Callable:
    """Login required; passes the session user's team; unknown or foreign objects are a 404 page."""

    @wraps(view)
    def wrapper(request: HttpRequest, *args, **kwargs) -> HttpResponse:
        if not request.user.is_authenticated:
            if request.htmx:
                # A poll after the session ended: send the whole page to the login form, rather
                # than swapping the login page into a status cell.
                next_url = request.htmx.current_url_abs_path or "/"
                return HttpResponseClientRedirect(f"{settings.LOGIN_URL}?{urlencode({'next': next_url})}")
            return redirect_to_login(request.get_full_path())
        try:
            team: Team = request_team(request)
        except drf.PermissionDenied:
            return render_page(request, "dashboard/no_team.html", status=403)
        try:
            return view(request, team, *args, **kwargs)
        except NotFoundError as error:
            response = not_found(request, error.message)
            if request.htmx:
                # A polled object that vanished (an expired task): show why and stop polling,
                # where a 404 would leave htmx polling forever.
                response.status_code = STOP_POLLING
            return response

    return wrapper


def add_service_error(form: forms.Form, error: Exception, *, field_names: dict[str, str] | None = None) -> None:
    """Put a service's error next to the form field it names (or on top of the form).

    `field_names` maps service field names (model_bundle_id) to form field names (bundle).
    """
    field_names = field_names or {}

    def add(field: str | None, message: str) -> None:
        field = field_names.get(field or "", field)
        if field not in form.fields:
            field = None
        elif message.startswith(f"{field}: "):
            message = message[len(field) + 2 :]
        form.add_error(field, message)

    if isinstance(error, FieldError):
        for item in error.errors:
            path = [part for part in item["loc"][1:] if part]
            name = ".".join(path)
            message = item["msg"][len(name) + 2 :] if item["msg"].startswith(f"{name}: ") else item["msg"]
            add(path[-1] if path else None, message)
    elif isinstance(error, DjangoValidationError):
        if hasattr(error, "error_dict"):
            for field, messages in error.message_dict.items():
                for message in messages:
                    add(None if field == "__all__" else field, message)
        else:
            for message in error.messages:
                add(None, message)
    elif isinstance(error, ApplicationError):
        add(None, error.message)
    else:  # pragma: no cover - callers pass only the errors above
        raise error


SERVICE_ERRORS = (ApplicationError, DjangoValidationError)
