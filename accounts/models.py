from __future__ import annotations

import hashlib
import secrets
from datetime import timedelta

from django.conf import settings
from django.db import models
from django.utils import timezone

from launch_site.route_generation import RouteChangingQuerySet

KEY_PREFIX_LENGTH = 8
# last_used_at is written at most this often, so authentication stays a read on the hot path.
LAST_USED_RESOLUTION = timedelta(minutes=1)


class Team(models.Model):
    name = models.SlugField(max_length=64, unique=True)
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return self.name


class Membership(models.Model):
    class Role(models.TextChoices):
        OWNER = "owner"
        MEMBER = "member"

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="memberships")
    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="memberships")
    role = models.CharField(max_length=16, choices=Role.choices, default=Role.MEMBER)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["user", "team"], name="unique_membership")]

    def __str__(self) -> str:
        return f"{self.user} in {self.team}"


def hash_key(raw_key: str) -> str:
    # Keys are 32 random bytes, so a fast hash is enough (no dictionary to attack).
    return hashlib.sha256(raw_key.encode()).hexdigest()


class ApiKey(models.Model):
    # What authentication reads (accounts.authentication._KEY_SQL) besides last_used_at, which
    # it only refreshes: a write to one of them moves the routing generation.
    ROUTE_FIELDS = ("id", "prefix", "hashed_key", "team", "team_id", "user", "user_id", "revoked_at")
    objects = RouteChangingQuerySet.as_manager()

    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="api_keys")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_keys")
    name = models.CharField(max_length=100, blank=True)
    prefix = models.CharField(max_length=KEY_PREFIX_LENGTH, unique=True, editable=False)
    hashed_key = models.CharField(max_length=64, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True, editable=False)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        verbose_name = "API key"

    def __str__(self) -> str:
        return f"lk_{self.prefix}… ({self.team})"

    @staticmethod
    def generate() -> tuple[str, str]:
        """A new raw key and its visible prefix: `lk_<prefix>_<secret>`."""
        prefix = secrets.token_hex(KEY_PREFIX_LENGTH // 2)
        return f"lk_{prefix}_{secrets.token_urlsafe(32)}", prefix

    @property
    def is_active(self) -> bool:
        return self.revoked_at is None

    def touch(self) -> None:
        now = timezone.now()
        if self.last_used_at is None or now - self.last_used_at > LAST_USED_RESOLUTION:
            ApiKey.objects.filter(pk=self.pk).update(last_used_at=now)
            self.last_used_at = now


class Quota(models.Model):
    """Per-team limits, set in the admin. Empty means unlimited."""

    team = models.OneToOneField(Team, on_delete=models.CASCADE, related_name="quota")
    max_endpoints = models.PositiveIntegerField(null=True, blank=True)
    max_workers = models.PositiveIntegerField(null=True, blank=True, help_text="Total max_workers over all endpoints and running batch jobs.")
    max_gpus = models.PositiveIntegerField(null=True, blank=True)
    max_concurrent_batch_jobs = models.PositiveIntegerField(null=True, blank=True)
    max_bundle_storage_bytes = models.BigIntegerField(null=True, blank=True)

    def __str__(self) -> str:
        return f"quota of {self.team}"
