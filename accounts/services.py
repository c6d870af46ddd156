from __future__ import annotations

from django.contrib.auth import get_user_model
from django.db import transaction
from django.utils import timezone

from accounts.models import ApiKey, Membership, Team, hash_key
from launch_site.errors import FieldError


@transaction.atomic
def team_get_or_create_for_user(*, username: str, team_name: str | None = None, password: str | None = None) -> tuple:
    """The user (created if missing) and the team it acts for: `team_name` (created if missing),
    or without one the user's existing team, or a new team named after the user."""
    User = get_user_model()
    user, created = User.objects.get_or_create(username=username)
    if created or password:
        if password:
            user.set_password(password)
        else:
            user.set_unusable_password()
        user.save()
    if team_name is None:
        # No team named: the one the user already acts for (the first-start banner's
        # `create_api_key admin` must give a key that sees the admin's objects), else its own.
        membership = Membership.objects.filter(user=user).select_related("team").order_by("pk").first()
        if membership is not None:
            return user, membership.team
    team, _ = Team.objects.get_or_create(name=team_name or username)
    Membership.objects.get_or_create(
        user=user, team=team, defaults={"role": Membership.Role.OWNER}
    )
    return user, team


@transaction.atomic
def api_key_create(*, user, team: Team, name: str = "") -> tuple[ApiKey, str]:
    """A new API key; the raw key is returned once and only its hash is stored. The user must
    be a member of the team (a key works only while they are)."""
    if not Membership.objects.filter(user=user, team=team).exists():
        raise FieldError("team", f"{user} is not a member of team {team}")
    raw_key, prefix = ApiKey.generate()
    api_key = ApiKey(user=user, team=team, name=name, prefix=prefix, hashed_key=hash_key(raw_key))
    api_key.full_clean()
    api_key.save()
    return api_key, raw_key


def api_key_revoke(*, api_key: ApiKey) -> None:
    ApiKey.objects.filter(pk=api_key.pk, revoked_at__isnull=True).update(revoked_at=timezone.now())
