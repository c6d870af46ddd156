"""Request shapes (types and required fields; the rules live in bundles.services) and the
response shapes of launch-openapi.json and of the legacy dialect."""

from __future__ import annotations

import json

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from bundles.models import ModelBundle
from bundles.services import FRAMEWORK_TYPES, PACKAGING_TYPE_FOR_FLAVOR, RUNNABLE_IMAGE_FIELDS
from launch_site.errors import FieldError


class EnvParamsSerializer(serializers.Serializer):
    framework_type = serializers.ChoiceField(choices=FRAMEWORK_TYPES)
    pytorch_image_tag = serializers.CharField(required=False, allow_null=True, allow_blank=True)
    tensorflow_version = serializers.CharField(required=False, allow_null=True, allow_blank=True)
    ecr_repo = serializers.CharField(required=False, allow_null=True, allow_blank=True)
    image_tag = serializers.CharField(required=False, allow_null=True, allow_blank=True)


class BundleV1CreateSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=200)
    location = serializers.CharField()
    requirements = serializers.ListField(child=serializers.CharField(allow_blank=True))
    env_params = EnvParamsSerializer()
    # A plain string: the service answers "not supported" for lira and the like.
    packaging_type = serializers.CharField()
    metadata = serializers.DictField(required=False, allow_null=True)
    app_config = serializers.DictField(required=False, allow_null=True)
    schema_location = serializers.CharField(required=False, allow_null=True, allow_blank=True)


class FrameworkSerializer(serializers.Serializer):
    REQUIRED = {
        "pytorch": ("pytorch_image_tag",),
        "tensorflow": ("tensorflow_version",),
        "custom_base_image": ("image_repository", "image_tag"),
    }

    framework_type = serializers.ChoiceField(choices=FRAMEWORK_TYPES)
    pytorch_image_tag = serializers.CharField(required=False)
    tensorflow_version = serializers.CharField(required=False)
    image_repository = serializers.CharField(required=False)
    image_tag = serializers.CharField(required=False)

    def validate(self, attrs: dict) -> dict:
        missing = [key for key in self.REQUIRED[attrs["framework_type"]] if key not in attrs]
        if missing:
            raise serializers.ValidationError({key: ["This field is required."] for key in missing})
        return {key: attrs[key] for key in ("framework_type", *self.REQUIRED[attrs["framework_type"]])}


class FlavorSerializer(serializers.Serializer):
    flavor = serializers.CharField()
    requirements = serializers.ListField(child=serializers.CharField(allow_blank=True))
    framework = FrameworkSerializer()
    app_config = serializers.DictField(required=False, allow_null=True)
    location = serializers.CharField()
    load_predict_fn = serializers.CharField(required=False, allow_blank=True, default="")
    load_model_fn = serializers.CharField(required=False, allow_blank=True, default="")
    load_predict_fn_module_path = serializers.CharField(required=False, allow_blank=True, default="")
    load_model_fn_module_path = serializers.CharField(required=False, allow_blank=True, default="")

    def to_internal_value(self, data):
        # Say "not supported" for the spec's other flavors (runnable_image, ...) before
        # complaining about the fields those flavors do not have.
        flavor = data.get("flavor") if isinstance(data, dict) else None
        if flavor is not None and (
            not isinstance(flavor, str) or (flavor not in PACKAGING_TYPE_FOR_FLAVOR and flavor not in RUNNABLE_IMAGE_FIELDS)
        ):
            supported = ", ".join([*PACKAGING_TYPE_FOR_FLAVOR, *RUNNABLE_IMAGE_FIELDS])
            raise FieldError("flavor", f"{flavor!r} is not supported here; use one of {supported}")
        if flavor in RUNNABLE_IMAGE_FIELDS:
            # Checked field by field in bundles.services.runnable_image_config.
            return dict(data)
        return super().to_internal_value(data)


class BundleV2CreateSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=200)
    metadata = serializers.DictField(required=False, allow_null=True)
    schema_location = serializers.CharField(allow_blank=True)
    flavor = FlavorSerializer()


class CloneSerializer(serializers.Serializer):
    original_model_bundle_id = serializers.CharField()
    new_app_config = serializers.DictField(required=False, allow_null=True)


# A form field whose value is JSON text (multipart bodies carry only strings).
@extend_schema_field({"type": "string", "description": "JSON text"})
class JSONFormField(serializers.Field):
    """A multipart form field holding JSON of one type (`list` or `dict`)."""

    def __init__(self, *, expected: type, **kwargs):
        self.expected = expected
        super().__init__(**kwargs)

    def to_internal_value(self, data):
        if isinstance(data, self.expected):
            return data
        try:
            value = json.loads(data)
        except (TypeError, ValueError) as error:
            raise serializers.ValidationError(f"is not valid JSON ({error})")
        if not isinstance(value, self.expected):
            raise serializers.ValidationError(
                "must be a JSON list" if self.expected is list else "must be a JSON object"
            )
        return value

    def to_representation(self, value):
        return value


class BundleUploadSerializer(serializers.Serializer):
    file = serializers.FileField(allow_empty_file=True)
    name = serializers.CharField(max_length=200)
    packaging_type = serializers.CharField(required=False, default="cloudpickle")
    requirements = JSONFormField(expected=list, required=False, default=list)
    env_params = JSONFormField(expected=dict, required=False, default=None)
    app_config = JSONFormField(expected=dict, required=False, default=None)
    metadata = JSONFormField(expected=dict, required=False, default=dict)
    python_version = serializers.CharField(required=False, allow_blank=True, default="")
    load_predict_fn_module_path = serializers.CharField(required=False, allow_blank=True, default="")
    load_model_fn_module_path = serializers.CharField(required=False, allow_blank=True, default="")


class LegacyBundleCreateSerializer(serializers.Serializer):
    packaging_type = serializers.CharField()
    bundle_name = serializers.CharField(max_length=200)
    location = serializers.CharField()
    bundle_metadata = serializers.DictField(required=False, allow_null=True)
    requirements = serializers.ListField(child=serializers.CharField(allow_blank=True), required=False, default=list)
    env_params = serializers.DictField(required=False, allow_null=True)
    app_config = serializers.DictField(required=False, allow_null=True)


class LegacyCloneSerializer(serializers.Serializer):
    existing_bundle_name = serializers.CharField()
    new_bundle_name = serializers.CharField(max_length=200)
    app_config = serializers.DictField(required=False, allow_null=True)


def bundle_v1(bundle: ModelBundle) -> dict:
    """ModelBundleV1Response."""
    return {
        "id": bundle.id,
        "name": bundle.name,
        "location": bundle.location,
        "requirements": bundle.requirements,
        "env_params": bundle.env_params,
        "packaging_type": bundle.packaging_type,
        "metadata": bundle.metadata,
        "app_config": bundle.app_config,
        "created_at": bundle.created_at.isoformat(),
        "model_artifact_ids": [],
        "schema_location": bundle.schema_location,
    }


def bundle_flavor(bundle: ModelBundle) -> dict:
    if bundle.is_runnable_image:
        return {**bundle.image_config, "flavor": bundle.flavor}
    flavor = {
        "flavor": bundle.flavor,
        "requirements": bundle.requirements,
        "framework": bundle.framework,
        "app_config": bundle.app_config,
        "location": bundle.location,
    }
    if bundle.flavor == ModelBundle.Flavor.ZIP_ARTIFACT:
        flavor["load_predict_fn_module_path"] = bundle.load_predict_fn_module_path
        flavor["load_model_fn_module_path"] = bundle.load_model_fn_module_path
    else:
        flavor["load_predict_fn"] = bundle.load_predict_fn
        flavor["load_model_fn"] = bundle.load_model_fn
    return flavor


def bundle_v2(bundle: ModelBundle) -> dict:
    """ModelBundleV2Response."""
    return {
        "id": bundle.id,
        "name": bundle.name,
        "metadata": bundle.metadata,
        "created_at": bundle.created_at.isoformat(),
        "model_artifact_ids": [],
        "schema_location": bundle.schema_location,
        "flavor": bundle_flavor(bundle),
    }


def bundle_legacy(bundle: ModelBundle) -> dict:
    """A bundle as the scale-launch 0.3.3 client reads it (its ModelBundle dataclass)."""
    return {
        "name": bundle.name,
        "bundle_id": bundle.id,
        "id": bundle.id,
        "env_params": bundle.env_params,
        "location": bundle.location,
        "metadata": bundle.metadata,
        "packaging_type": bundle.packaging_type,
        "requirements": bundle.requirements,
        "app_config": bundle.app_config,
        "created_at": bundle.created_at.isoformat(),
    }
