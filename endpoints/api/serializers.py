"""Request parsing for the endpoint and task routes (types and required fields only; the
rules between fields live in endpoints.services)."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from endpoints.models import GPU_TYPES

NAME_HELP = "letters, digits, '-', '_' and '.', starting with a letter or digit"


# As the contract types cpus, memory and storage.
@extend_schema_field({"anyOf": [{"type": "string"}, {"type": "integer"}, {"type": "number"}]})
class QuantityField(serializers.Field):
    """cpus, memory, storage: a number or a string ("8Gi", "500m"); parsed by the service."""

    def to_internal_value(self, data):
        if isinstance(data, bool) or not isinstance(data, (str, int, float)):
            raise serializers.ValidationError("must be a number or a string such as \"8Gi\" or \"500m\"")
        return data

    def to_representation(self, value):
        return value


class CallbackAuthField(serializers.DictField):
    """The contract's CallbackAuth; its rules are checked by endpoints.callbacks.clean_auth."""


def _contract_options(*, create: bool) -> dict[str, serializers.Field]:
    """The contract's fields beyond the basic shape, the same on create and update (types
    only; endpoints.services.check_contract_options honours or refuses each value)."""
    fields = {
        "concurrent_requests_per_worker": serializers.IntegerField(min_value=1, required=False, allow_null=True),
        "forwarder_max_concurrency": serializers.IntegerField(min_value=1, max_value=20, required=False,
                                                              allow_null=True),
        "optimize_costs": serializers.BooleanField(required=False, allow_null=True),
        "prewarm": serializers.BooleanField(required=False, allow_null=True),
        "high_priority": serializers.BooleanField(required=False, allow_null=True),
        "billing_tags": serializers.DictField(required=False, allow_null=True),
        "public_inference": serializers.BooleanField(required=False, allow_null=True),
        # Our own (docs/batching.md); bounds and rules in endpoints.services._apply_batching.
        "max_batch_size": serializers.IntegerField(required=False, allow_null=True),
        "max_batch_wait_ms": serializers.IntegerField(required=False, allow_null=True),
    }
    if create:
        fields["nodes_per_worker"] = serializers.IntegerField(min_value=1, required=False, default=1)
    return fields


class EndpointCreateSerializer(serializers.Serializer):
    def get_fields(self):
        return {**super().get_fields(), **_contract_options(create=True)}

    name = serializers.RegexField(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", max_length=63,
                                  error_messages={"invalid": f"use {NAME_HELP}"})
    model_bundle_id = serializers.CharField()
    endpoint_type = serializers.ChoiceField(choices=["sync", "async", "streaming"])
    # metadata, storage and labels are required (storage may be null), as in the contract.
    metadata = serializers.DictField()
    post_inference_hooks = serializers.ListField(child=serializers.CharField(), required=False, allow_null=True)
    cpus = QuantityField()
    gpus = serializers.IntegerField(min_value=0)
    memory = QuantityField()
    gpu_type = serializers.ChoiceField(choices=GPU_TYPES, required=False, allow_null=True)
    storage = QuantityField(allow_null=True)
    min_workers = serializers.IntegerField(min_value=0)
    max_workers = serializers.IntegerField(min_value=0)
    per_worker = serializers.IntegerField(min_value=1)
    labels = serializers.DictField(child=serializers.CharField())
    default_callback_url = serializers.CharField(required=False, allow_null=True)
    default_callback_auth = CallbackAuthField(required=False, allow_null=True)
    task_expires_seconds = serializers.IntegerField(min_value=1, required=False, allow_null=True)
    queue_message_timeout_seconds = serializers.IntegerField(min_value=1, max_value=43200, required=False,
                                                             allow_null=True)


class EndpointUpdateSerializer(serializers.Serializer):
    def get_fields(self):
        return {**super().get_fields(), **_contract_options(create=False)}

    model_bundle_id = serializers.CharField(required=False, allow_null=True)
    metadata = serializers.DictField(required=False, allow_null=True)
    post_inference_hooks = serializers.ListField(child=serializers.CharField(), required=False, allow_null=True)
    cpus = QuantityField(required=False, allow_null=True)
    gpus = serializers.IntegerField(min_value=0, required=False, allow_null=True)
    memory = QuantityField(required=False, allow_null=True)
    gpu_type = serializers.ChoiceField(choices=GPU_TYPES, required=False, allow_null=True)
    storage = QuantityField(required=False, allow_null=True)
    min_workers = serializers.IntegerField(min_value=0, required=False, allow_null=True)
    max_workers = serializers.IntegerField(min_value=0, required=False, allow_null=True)
    per_worker = serializers.IntegerField(min_value=1, required=False, allow_null=True)
    labels = serializers.DictField(child=serializers.CharField(), required=False, allow_null=True)
    default_callback_url = serializers.CharField(required=False, allow_null=True)
    default_callback_auth = CallbackAuthField(required=False, allow_null=True)
    task_expires_seconds = serializers.IntegerField(min_value=1, required=False, allow_null=True)
    queue_message_timeout_seconds = serializers.IntegerField(min_value=1, max_value=43200, required=False,
                                                             allow_null=True)
