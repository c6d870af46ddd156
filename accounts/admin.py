from django.contrib import admin, messages

from accounts.models import ApiKey, Membership, Quota, Team
from accounts.services import api_key_create, api_key_revoke


class MembershipInline(admin.TabularInline):
    model = Membership
    extra = 0


class QuotaInline(admin.StackedInline):
    model = Quota
    extra = 0


@admin.register(Team)
class TeamAdmin(admin.ModelAdmin):
    list_display = ["name", "created_at"]
    inlines = [MembershipInline, QuotaInline]


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin):
    list_display = ["prefix", "name", "team", "user", "created_at", "last_used_at", "revoked_at"]
    list_filter = ["team"]
    readonly_fields = ["prefix", "created_at", "last_used_at", "revoked_at"]
    fields = ["team", "user", "name", "prefix", "created_at", "last_used_at", "revoked_at"]
    actions = ["revoke"]

    def save_model(self, request, obj, form, change):
        if change:
            return super().save_model(request, obj, form, change)
        created, raw_key = api_key_create(user=obj.user, team=obj.team, name=obj.name)
        obj.pk = created.pk
        obj.prefix = created.prefix
        self.message_user(request, f"New API key (shown once): {raw_key}", messages.WARNING)

    @admin.action(description="Revoke the selected keys")
    def revoke(self, request, queryset):
        for api_key in queryset:
            api_key_revoke(api_key=api_key)


@admin.register(Quota)
class QuotaAdmin(admin.ModelAdmin):
    list_display = ["team", "max_endpoints", "max_workers", "max_gpus", "max_concurrent_batch_jobs", "max_bundle_storage_bytes"]
