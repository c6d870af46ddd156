from django.contrib import admin

from batchjobs.models import BatchJob


@admin.register(BatchJob)
class BatchJobAdmin(admin.ModelAdmin):
    list_display = (
        "id",
        "team",
        "bundle",
        "status",
        "items_completed",
        "items_failed",
        "total_items",
        "created_at",
        "finished_at",
    )
    list_filter = ("status", "serialization_format")
    search_fields = ("id", "team__name", "bundle__name")
    readonly_fields = (
        "chunk_size",
        "chunks_enqueued",
        "items_enqueued",
        "chunks_collected",
        "input_exhausted",
        "results_bytes",
        "released",
    )
