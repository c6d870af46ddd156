"""Request parsing for the batch job routes (types and required fields; rules live in
batchjobs.services)."""

from __future__ import annotations

from rest_framework import serializers


class CreateBatchJobSerializer(serializers.Serializer):
    model_bundle_id = serializers.CharField()
    input_path = serializers.CharField()
    serialization_format = serializers.CharField()
    labels = serializers.DictField(child=serializers.CharField())
    resource_requests = serializers.DictField()
    timeout_seconds = serializers.FloatField(min_value=0.001, required=False, default=43200.0)


class UploadBatchJobSerializer(serializers.Serializer):
    """Multipart form: `file` plus the create fields; labels and resource_requests as JSON
    text, or the resources as separate fields (cpus, memory, max_workers, ...)."""

    file = serializers.FileField()
    model_bundle_id = serializers.CharField()
    serialization_format = serializers.CharField(required=False, default="JSON")
    labels = serializers.JSONField(required=False, default=dict)
    resource_requests = serializers.JSONField(required=False, default=dict)
    timeout_seconds = serializers.FloatField(min_value=0.001, required=False, default=43200.0)
    cpus = serializers.CharField(required=False)
    memory = serializers.CharField(required=False)
    storage = serializers.CharField(required=False)
    gpus = serializers.IntegerField(required=False)
    gpu_type = serializers.CharField(required=False)
    max_workers = serializers.IntegerField(required=False)
    per_worker = serializers.IntegerField(required=False)


class UpdateBatchJobSerializer(serializers.Serializer):
    cancel = serializers.BooleanField()
