from django import forms
from django.contrib import admin, messages

from accounts.models import ApiKey, Membership, Quota, Team
from accounts.services import api_key_create, api_key_revoke


class ApiKeyForm(forms.ModelForm):
    def clean(self):
        cleaned = super().clean()
        user, team = cleaned.get("user"), cleaned.get("team")
        if self.instance.pk is None and user and team and not Membership.objects.filter(user=user, team=team).exists():
            # Refused here: save_model cannot refuse (api_key_create would raise a 500).
            raise forms.ValidationError(f"{user} is not a member of team {team}; a key works only for its owner's team.")
        return cleaned


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
    form = ApiKeyForm
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
