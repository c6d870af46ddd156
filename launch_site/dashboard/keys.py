"""API keys page: the session user's keys in its team; a new key is shown once."""

from __future__ import annotations

from django.contrib import messages
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect
from django.views.decorators.http import require_http_methods, require_POST

from accounts.models import Team
from accounts.services import api_key_create, api_key_revoke
from launch_site.dashboard import selectors
from launch_site.dashboard.common import (
    SERVICE_ERRORS,
    add_service_error,
    list_page,
    render_page,
    search_text,
    status_filter,
    team_view,
)
from launch_site.dashboard.forms import ApiKeyForm

NEW_KEY_SESSION = "new_api_key"


@team_view
@require_http_methods(["GET", "POST"])
def api_key_list(request: HttpRequest, team: Team) -> HttpResponse:
    form = ApiKeyForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            api_key, raw_key = api_key_create(user=request.user, team=team, name=form.cleaned_data["name"])
        except SERVICE_ERRORS as error:
            add_service_error(form, error)
        else:
            # Post/redirect/get: a refresh must not create a second key. The raw key rides in
            # the session only until the next page shows it (popped there: shown once).
            request.session[NEW_KEY_SESSION] = {"id": api_key.id, "raw": raw_key}
            return redirect("dashboard:api-keys")
    new_key = None
    pending = request.session.pop(NEW_KEY_SESSION, None) if request.method == "GET" else None
    if pending:
        key = selectors.api_keys(team=team, user=request.user).filter(pk=pending["id"]).first()
        new_key = {"key": key, "raw": pending["raw"]} if key else None
    # The list: `?q=` (name, prefix or owner), `?status=` (a state), `?page=`.
    state = status_filter(request, selectors.API_KEY_STATES)
    keys = selectors.api_keys(team=team, user=request.user, search=search_text(request), state=state)
    context = {
        **list_page(request, keys), "status": state, "statuses": selectors.API_KEY_STATES,
        "form": form, "new_key": new_key,
    }  # fmt: skip
    response = render_page(request, "dashboard/keys.html", context, status=422 if form.errors else 200)
    if new_key:
        response["Cache-Control"] = "no-store"
    return response


@team_view
@require_POST
def api_key_revoke_view(request: HttpRequest, team: Team, key_id: int) -> HttpResponse:
    api_key = selectors.api_key_get(team=team, user=request.user, key_id=key_id)
    api_key_revoke(api_key=api_key)
    messages.success(request, f"Revoked key lk_{api_key.prefix}…; clients using it now get 401.")
    return redirect("dashboard:api-keys")
