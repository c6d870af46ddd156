from __future__ import annotations

from django.conf import settings
from django.db import models

from launch_site.ids import new_id


class StoredObject(models.Model):
    """A blob in the bundle store (bundle, batch input, results), owned by one team.

    `key` is what the client sees in `s3://<bucket>/<key>`; the bytes live in the store
    (bundles.store) under the same key.
    """

    class Kind(models.TextChoices):
        BUNDLE = "bundle"
        BATCH_INPUT = "batch_input"
        BATCH_RESULT = "batch_result"
        TASK_RESULT = "task_result"
        FILE = "file"

    key = models.CharField(max_length=255, primary_key=True)
    team = models.ForeignKey("accounts.Team", on_delete=models.CASCADE, related_name="stored_objects")
    kind = models.CharField(max_length=16, choices=Kind.choices)
    size = models.BigIntegerField(null=True, blank=True, help_text="Empty until the bytes arrive.")
    sha256 = models.CharField(max_length=64, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    uploaded_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return self.key

    @property
    def location(self) -> str:
        return f"s3://{settings.BUNDLE_STORE_BUCKET}/{self.key}"


def new_file_id() -> str:
    return new_id("file")


class File(models.Model):
    """A file uploaded through /v1/files: a name over a stored object (kind FILE) of its team.

    The bytes count against the team's storage quota like every stored object; deleting the
    file deletes its object and bytes (bundles.services.file_delete)."""

    id = models.CharField(max_length=32, primary_key=True, default=new_file_id, editable=False)
    team = models.ForeignKey("accounts.Team", on_delete=models.CASCADE, related_name="files")
    filename = models.CharField(max_length=255)
    stored = models.OneToOneField(StoredObject, on_delete=models.CASCADE, related_name="file")
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.filename} ({self.id})"

    @property
    def size(self) -> int:
        return self.stored.size or 0


def new_bundle_id() -> str:
    return new_id("bun")


class ModelBundle(models.Model):
    class PackagingType(models.TextChoices):
        CLOUDPICKLE = "cloudpickle"
        ZIP = "zip"
        # What the contract's v1 dialect calls a bundle that is a container image.
        LIRA = "lira"

    class Flavor(models.TextChoices):
        CLOUDPICKLE_ARTIFACT = "cloudpickle_artifact"
        ZIP_ARTIFACT = "zip_artifact"
        RUNNABLE_IMAGE = "runnable_image"
        STREAMING_ENHANCED_RUNNABLE_IMAGE = "streaming_enhanced_runnable_image"
        TRITON_ENHANCED_RUNNABLE_IMAGE = "triton_enhanced_runnable_image"

    id = models.CharField(max_length=32, primary_key=True, default=new_bundle_id, editable=False)
    team = models.ForeignKey("accounts.Team", on_delete=models.CASCADE, related_name="bundles")
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    name = models.CharField(max_length=200)
    packaging_type = models.CharField(max_length=16, choices=PackagingType.choices)
    flavor = models.CharField(max_length=40, choices=Flavor.choices)
    # Empty for a runnable image: its code is the image named in image_config.
    artifact = models.ForeignKey(
        StoredObject, on_delete=models.PROTECT, related_name="bundles", null=True, blank=True
    )
    location = models.CharField(max_length=512, blank=True)
    requirements = models.JSONField(default=list, blank=True)
    env_params = models.JSONField(default=dict, blank=True)
    framework = models.JSONField(default=dict, blank=True)
    metadata = models.JSONField(default=dict, blank=True)
    app_config = models.JSONField(null=True, blank=True)
    schema_location = models.CharField(max_length=512, null=True, blank=True)
    # v2 cloudpickle flavor: source text of the functions, for display only.
    load_predict_fn = models.TextField(blank=True)
    load_model_fn = models.TextField(blank=True)
    # zip flavor: dotted paths of the two functions inside the zip.
    load_predict_fn_module_path = models.CharField(max_length=300, blank=True)
    load_model_fn_module_path = models.CharField(max_length=300, blank=True)
    # cloudpickle ties a bundle to a Python minor version ("3.11"); empty when unknown.
    python_version = models.CharField(max_length=16, blank=True)
    # Runnable-image flavors: the contract's flavor fields (repository, tag, command, env,
    # routes, readiness delay, streaming and Triton fields), as accepted by the service.
    image_config = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        indexes = [models.Index(fields=["team", "name", "-created_at"])]
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.name} ({self.id})"

    @property
    def is_runnable_image(self) -> bool:
        return self.flavor in RUNNABLE_IMAGE_FLAVORS

    @property
    def image(self) -> str:
        """`repository:tag` of a runnable image, else empty."""
        if not self.is_runnable_image:
            return ""
        return f"{self.image_config['repository']}:{self.image_config['tag']}"


RUNNABLE_IMAGE_FLAVORS = (
    ModelBundle.Flavor.RUNNABLE_IMAGE,
    ModelBundle.Flavor.STREAMING_ENHANCED_RUNNABLE_IMAGE,
    ModelBundle.Flavor.TRITON_ENHANCED_RUNNABLE_IMAGE,
)
