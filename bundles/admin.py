"""Admin lists of stored objects and bundles. Read-only: they are made through the API,
whose services check names, locations and quotas."""

from __future__ import annotations

from django.contrib import admin

from bundles.models import File, ModelBundle, StoredObject


class ReadOnlyAdmin(admin.ModelAdmin):
    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False


@admin.register(StoredObject)
class StoredObjectAdmin(ReadOnlyAdmin):
    list_display = ("key", "team", "kind", "size", "uploaded_at", "created_at")
    list_filter = ("kind", "team")
    search_fields = ("key", "sha256")
    date_hierarchy = "created_at"


@admin.register(ModelBundle)
class ModelBundleAdmin(ReadOnlyAdmin):
    list_display = ("name", "id", "team", "flavor", "python_version", "created_by", "created_at")
    list_filter = ("flavor", "team")
    search_fields = ("name", "id")
    date_hierarchy = "created_at"
    list_select_related = ("team", "created_by")


@admin.register(File)
class FileAdmin(ReadOnlyAdmin):
    list_display = ("filename", "id", "team", "created_at")
    list_filter = ("team",)
    search_fields = ("filename", "id")
    list_select_related = ("team",)
