from __future__ import annotations

from rest_framework import exceptions

from accounts.models import ApiKey, Team


def request_team(request) -> Team:
    """The team a request acts for: the API key's team, or the session user's first team."""
    auth = getattr(request, "auth", None)
    if isinstance(auth, ApiKey):
        return auth.team
    user = request.user
    if user is not None and user.is_authenticated:
        membership = user.memberships.select_related("team").order_by("id").first()
        if membership is not None:
            return membership.team
        raise exceptions.PermissionDenied("This user belongs to no team.")
    raise exceptions.NotAuthenticated("Authentication credentials were not provided.")
