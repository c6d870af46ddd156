"""Writes of the bundles app: stored objects (upload URLs, received bytes) and model bundles.

Every route that makes a bundle (native v1 and v2, our multipart upload, the legacy dialect,
the dashboard) goes through bundle_create or bundle_create_from_upload, so the rules live
here once. Nothing here unpickles: the web process only stores and hashes the bytes.
"""

from __future__ import annotations

import codecs
import re
import uuid
from typing import IO, Any

from django.conf import settings
from django.db import transaction
from django.db.models import ProtectedError, Sum
from django.urls import reverse
from django.utils import timezone

from accounts.models import Quota, Team
from batchjobs.models import ACTIVE_STATUSES, BatchJob
from bundles import store
from bundles.models import File, ModelBundle, StoredObject
from launch_site import limits
from launch_site.errors import ConflictError, FieldError, NotFoundError, PayloadTooLargeError
from launch_site.public_url import absolute_url

FLAVOR_FOR_PACKAGING_TYPE = {
    ModelBundle.PackagingType.CLOUDPICKLE: ModelBundle.Flavor.CLOUDPICKLE_ARTIFACT,
    ModelBundle.PackagingType.ZIP: ModelBundle.Flavor.ZIP_ARTIFACT,
}
PACKAGING_TYPE_FOR_FLAVOR = {flavor: packaging for packaging, flavor in FLAVOR_FOR_PACKAGING_TYPE.items()}
FRAMEWORK_TYPES = ("pytorch", "tensorflow", "custom_base_image")
# Routes where the user cannot say (multipart upload, dashboard) get what the client examples use.
DEFAULT_ENV_PARAMS = {"framework_type": "pytorch", "pytorch_image_tag": "latest"}
UPLOAD_KINDS = (StoredObject.Kind.BUNDLE, StoredObject.Kind.BATCH_INPUT)
_LOCATION = re.compile(r"^s3://(?P<bucket>[^/]+)/(?P<key>.+)$")
_PYTHON_VERSION = re.compile(r"^(?P<minor>3\.[0-9]+)(\.[0-9]+)?$")
# Sentinel: "keep the original's app_config" (None is a real value: no app_config).
UNCHANGED: Any = object()


# Stored objects and signed URLs


def new_object_key(team: Team, kind: str) -> str:
    return f"{team.id}/{kind}/{uuid.uuid4().hex}"


def _object_url(base_url: str, token: str) -> str:
    return base_url.rstrip("/") + store.object_url_path(token)


@transaction.atomic
def upload_url_create(*, team: Team, kind: str, request) -> tuple[StoredObject, str]:
    """A new, empty stored object and an absolute URL that takes one raw PUT of its bytes,
    without an API key, until UPLOAD_URL_TTL_SECONDS have passed."""
    if kind not in UPLOAD_KINDS:
        raise FieldError("kind", f"must be one of {', '.join(UPLOAD_KINDS)}")
    stored = StoredObject(key=new_object_key(team, kind), team=team, kind=kind)
    stored.full_clean()
    stored.save()
    token = store.make_token(stored.key, salt=store.UPLOAD_SALT, ttl_seconds=settings.UPLOAD_URL_TTL_SECONDS)
    return stored, absolute_url(request, reverse("store-object", args=[token]))


def download_url_for(stored_object: StoredObject, *, ttl_seconds: int, replica_id: str | None = None) -> str:
    """A URL on LAUNCH_INTERNAL_URL that streams this one object's bytes, without an API key,
    for `ttl_seconds`: what a replica gets to fetch its bundle (bound to `replica_id`: it
    stops working when that replica stops, whatever its age)."""
    token = store.make_token(stored_object.key, salt=store.DOWNLOAD_SALT, ttl_seconds=ttl_seconds, replica_id=replica_id)
    return _object_url(settings.LAUNCH_INTERNAL_URL, token)


def upload_url_for(stored_object: StoredObject, *, ttl_seconds: int) -> str:
    """Like download_url_for, for one PUT of the object's bytes (a replica's pickled result)."""
    token = store.make_token(stored_object.key, salt=store.UPLOAD_SALT, ttl_seconds=ttl_seconds)
    return _object_url(settings.LAUNCH_INTERNAL_URL, token)


def _storage_left(team_id: int, *, lock: bool) -> int | None:
    """Bytes the team may still store, or None without a storage quota. With `lock`, holds the
    quota row until the transaction ends so that two uploads cannot both take the last bytes."""
    quotas = Quota.objects.filter(team_id=team_id)
    quota = (quotas.select_for_update() if lock else quotas).first()
    if quota is None or quota.max_bundle_storage_bytes is None:
        return None
    return quota.max_bundle_storage_bytes - storage_used_bytes(team_id)


def storage_used_bytes(team_id: int) -> int:
    """What counts against the team's storage quota: the bytes of its stored objects."""
    used = StoredObject.objects.filter(team_id=team_id, size__isnull=False).aggregate(total=Sum("size"))["total"]
    return used or 0


def stored_object_upload(*, stored: StoredObject, stream: IO[bytes], content_length: int | None = None) -> StoredObject:
    """Receive the bytes of `stored` (saved or not yet saved) from `stream`, in chunks.

    Over MAX_UPLOAD_BYTES is a 413 and over the team's storage quota a 409; either way, and
    on any other error, no file is left and the row is unchanged. An object takes its bytes
    once: a bundle made from it must not change under its endpoints.
    """
    if stored.uploaded_at is not None:
        raise ConflictError("this upload URL was already used; ask for a new one")
    if content_length is not None and content_length > settings.MAX_UPLOAD_BYTES:
        # Refuse before reading anything when the client says up front that it is too big.
        raise PayloadTooLargeError(store.too_large_message(settings.MAX_UPLOAD_BYTES))
    received = store.receive(stored.key, stream, quota_bytes=_storage_left(stored.team_id, lock=False))
    try:
        with transaction.atomic():
            left = _storage_left(stored.team_id, lock=True)
            if left is not None and received.size > left:
                raise store.QuotaExceededError(store.quota_message(left))
            if stored._state.adding is False:
                current = StoredObject.objects.select_for_update().get(pk=stored.pk)
                if current.uploaded_at is not None:
                    raise ConflictError("this upload URL was already used; ask for a new one")
            stored.size, stored.sha256, stored.uploaded_at = received.size, received.sha256, timezone.now()
            stored.full_clean()
            stored.save()
            received.commit()
    except BaseException:
        received.discard()
        raise
    return stored


def stored_object_resolve(*, team: Team, location: Any, kind: str | None, field: str) -> StoredObject:
    """The stored object behind `s3://<bucket>/<key>` (what the upload routes hand out), with
    its bytes uploaded; a FieldError naming `field` otherwise. Another team's object reads as
    unknown."""
    bucket = settings.BUNDLE_STORE_BUCKET
    if not isinstance(location, str):
        raise FieldError(field, f"must be a string like s3://{bucket}/<key>")
    match = _LOCATION.match(location.strip())
    if match is None:
        raise FieldError(field, f"must look like s3://{bucket}/<key>, as given by the upload route")
    if match["bucket"] != bucket:
        raise FieldError(field, f"unknown bucket {match['bucket']!r}: this server stores uploads in {bucket!r}")
    stored = StoredObject.objects.filter(key=match["key"], team=team).first()
    if stored is None:
        raise FieldError(field, f"no uploaded object at {location}")
    if kind is not None and stored.kind != kind:
        raise FieldError(field, f"{location} holds a {stored.kind} upload, not a {kind}")
    if stored.uploaded_at is None:
        raise FieldError(field, f"nothing was uploaded to {location} yet: PUT the bytes to its signedUrl first")
    return stored


# Files (/v1/files)

FILENAME_MAX_LENGTH = File._meta.get_field("filename").max_length


class _Utf8Checked:
    """A read-only stream that passes `stream` through and raises a FieldError naming `field`
    as soon as its bytes stop being UTF-8 text: the contract serves a file's content as a JSON
    string, so a file that cannot become one is refused at upload, not at read."""

    def __init__(self, stream: IO[bytes], *, field: str):
        self.stream, self.field = stream, field
        self.decoder = codecs.getincrementaldecoder("utf-8")()

    def read(self, size: int = -1) -> bytes:
        chunk = self.stream.read(size)
        try:
            self.decoder.decode(chunk, final=not chunk)
        except UnicodeDecodeError:
            raise FieldError(self.field, "must be UTF-8 text (its content is served as a JSON string)") from None
        return chunk


def file_upload(*, team: Team, filename: Any, stream: IO[bytes], size: int | None = None) -> File:
    """Store `stream` as a new file of `team`, through stored_object_upload (MAX_UPLOAD_BYTES
    413, storage quota 409, non-UTF-8 422 naming `file`); on any failure nothing is left, row
    or bytes."""
    if not isinstance(filename, str) or not filename.strip():
        raise FieldError("file", "must have a file name")
    filename = filename[-FILENAME_MAX_LENGTH:]
    stored = StoredObject(key=new_object_key(team, StoredObject.Kind.FILE), team=team, kind=StoredObject.Kind.FILE)
    try:
        with transaction.atomic():
            stored_object_upload(stored=stored, stream=_Utf8Checked(stream, field="file"), content_length=size)
            file = File(team=team, filename=filename, stored=stored)
            file.full_clean()
            file.save()
            return file
    except BaseException:
        # The rename happened inside the rolled-back transaction; take the bytes back out.
        store.delete_object(stored.key)
        raise


def file_delete(*, file: File) -> None:
    """Delete the file, its stored object and, once that is committed, its bytes; 409 while a
    batch job that has not finished reads it (finished jobs keep their input_path text only)."""
    from batchjobs.models import ACTIVE_STATUSES, BatchJob

    key = file.stored_id
    with transaction.atomic():
        # Locked: a batch job created over this file at the same moment either commits
        # first (and is seen below) or finds the file gone (file_for_reference).
        File.objects.select_for_update().filter(pk=file.pk).first()
        readers = BatchJob.objects.filter(input_id=key)
        active = list(readers.filter(status__in=ACTIVE_STATUSES).values_list("id", "status")[:5])
        if active:
            jobs = ", ".join(f"{job_id} ({status})" for job_id, status in active)
            raise ConflictError(f"file {file.id} is the input of batch job {jobs}; cancel it or wait until it ends")
        readers.update(input=None)
        file.delete()
        StoredObject.objects.filter(key=key).delete()
        transaction.on_commit(lambda: store.delete_object(key))


# A file named as a batch job's input: its id, or its /v1/files/{id} path or URL.
_FILE_REFERENCE = re.compile(r"^(?:(?:https?://[^/\s]+)?/v1/files/)?(?P<id>file_[0-9a-z]+)(?:/content)?/?$")


def file_for_reference(*, team: Team, reference: Any, field: str) -> File | None:
    """The team's file that `reference` names (a file id, or `/v1/files/{id}` as a path or a
    URL), locked until the caller's transaction ends (file_delete waits for it); None when
    `reference` does not name a file; a FieldError naming `field` when it names one this team
    does not have (another team's file reads as unknown)."""
    if not isinstance(reference, str):
        return None
    match = _FILE_REFERENCE.match(reference.strip())
    if match is None:
        return None
    file = File.objects.select_for_update().filter(pk=match["id"], team=team).select_related("stored").first()
    if file is None:
        raise FieldError(field, f"your team has no file {match['id']!r} (see GET /v1/files)")
    return file


# Model bundles


def flavor_for_packaging_type(packaging_type: Any, *, field: str = "packaging_type") -> str:
    if packaging_type in FLAVOR_FOR_PACKAGING_TYPE:
        return FLAVOR_FOR_PACKAGING_TYPE[packaging_type]
    raise FieldError(field, f"{packaging_type!r} is not supported here; use cloudpickle or zip")


def env_params_from_framework(framework: dict) -> dict:
    framework_type = framework.get("framework_type")
    if framework_type == "custom_base_image":
        return {
            "framework_type": framework_type,
            "ecr_repo": framework.get("image_repository"),
            "image_tag": framework.get("image_tag"),
        }
    return {key: value for key, value in framework.items() if key != "image_repository"}


def framework_from_env_params(env_params: dict) -> dict:
    framework_type = env_params.get("framework_type")
    keys = {
        "pytorch": ("pytorch_image_tag",),
        "tensorflow": ("tensorflow_version",),
        "custom_base_image": ("image_repository", "image_tag"),
    }.get(framework_type, ())
    values = {**env_params, "image_repository": env_params.get("ecr_repo")}
    return {"framework_type": framework_type, **{key: values.get(key) for key in keys}}


def _python_version(value: Any, *, field: str) -> str:
    match = _PYTHON_VERSION.match(value) if isinstance(value, str) else None
    if match is None:
        raise FieldError(field, 'must be a Python version like "3.11"')
    return match["minor"]


def _new_bundle(
    *,
    team: Team,
    user,
    name: Any,
    flavor: Any,
    requirements: Any,
    env_params: dict | None,
    framework: dict | None,
    metadata: Any,
    app_config: Any,
    schema_location: str | None,
    load_predict_fn: str,
    load_model_fn: str,
    load_predict_fn_module_path: str,
    load_model_fn_module_path: str,
    python_version: str,
) -> ModelBundle:
    """An unsaved bundle with every field but its artifact checked."""
    limits.check_name(name, field="name", max_length=limits.BUNDLE_NAME_MAX_LENGTH)
    if not isinstance(flavor, str) or flavor not in PACKAGING_TYPE_FOR_FLAVOR:
        raise FieldError("flavor", f"{flavor!r} is not supported here; use cloudpickle_artifact or zip_artifact")
    limits.check_requirements(requirements)
    metadata = {} if metadata is None else metadata
    if not isinstance(metadata, dict):
        raise FieldError("metadata", "must be a JSON object")
    if app_config is not None and not isinstance(app_config, dict):
        raise FieldError("app_config", "must be a JSON object or null")
    if env_params is None and framework is None:
        env_params = DEFAULT_ENV_PARAMS
    if framework is None:
        framework = framework_from_env_params(env_params)
    if env_params is None:
        env_params = env_params_from_framework(framework)
    if framework.get("framework_type") not in FRAMEWORK_TYPES:
        raise FieldError("env_params.framework_type", f"must be one of {', '.join(FRAMEWORK_TYPES)}")

    # The legacy client and the v1 dialect put these in metadata; v2 and our upload route
    # send them as fields.
    if python_version:
        python_version = _python_version(python_version, field="python_version")
    elif "python_version" in metadata:
        python_version = _python_version(metadata["python_version"], field="metadata.python_version")
    if flavor == ModelBundle.Flavor.ZIP_ARTIFACT:
        load_predict_fn_module_path = load_predict_fn_module_path or metadata.get("load_predict_fn_module_path") or ""
        load_model_fn_module_path = load_model_fn_module_path or metadata.get("load_model_fn_module_path") or ""
        for field, value in (
            ("load_predict_fn_module_path", load_predict_fn_module_path),
            ("load_model_fn_module_path", load_model_fn_module_path),
        ):
            if not isinstance(value, str) or not value:
                raise FieldError(field, "is required for zip bundles (a dotted path such as 'model.predict')")

    bundle = ModelBundle(
        team=team,
        created_by=user if getattr(user, "pk", None) else None,
        name=name,
        packaging_type=PACKAGING_TYPE_FOR_FLAVOR[flavor],
        flavor=flavor,
        requirements=requirements,
        env_params=env_params,
        framework=framework,
        metadata=metadata,
        app_config=app_config,
        schema_location=schema_location or None,
        load_predict_fn=load_predict_fn or "",
        load_model_fn=load_model_fn or "",
        load_predict_fn_module_path=load_predict_fn_module_path or "",
        load_model_fn_module_path=load_model_fn_module_path or "",
        python_version=python_version or "",
    )
    bundle.full_clean(exclude=["artifact", "location"])
    return bundle


def _save_with_artifact(bundle: ModelBundle, artifact: StoredObject) -> ModelBundle:
    bundle.artifact, bundle.location = artifact, artifact.location
    bundle.full_clean()
    bundle.save()
    return bundle


@transaction.atomic
def bundle_create(
    *,
    team: Team,
    user,
    name: str,
    location: str,
    flavor: str,
    requirements: list[str],
    env_params: dict | None = None,
    framework: dict | None = None,
    metadata: dict | None = None,
    app_config: dict | None = None,
    schema_location: str | None = None,
    load_predict_fn: str = "",
    load_model_fn: str = "",
    load_predict_fn_module_path: str = "",
    load_model_fn_module_path: str = "",
    python_version: str = "",
    location_field: str = "location",
) -> ModelBundle:
    """A new version of the bundle `name` over bytes already uploaded to `location`
    (s3://<bucket>/<key> from an upload route). Several bundles may share a name; the
    newest is the name's latest."""
    bundle = _new_bundle(
        team=team,
        user=user,
        name=name,
        flavor=flavor,
        requirements=requirements,
        env_params=env_params,
        framework=framework,
        metadata=metadata,
        app_config=app_config,
        schema_location=schema_location,
        load_predict_fn=load_predict_fn,
        load_model_fn=load_model_fn,
        load_predict_fn_module_path=load_predict_fn_module_path,
        load_model_fn_module_path=load_model_fn_module_path,
        python_version=python_version,
    )
    artifact = stored_object_resolve(team=team, location=location, kind=StoredObject.Kind.BUNDLE, field=location_field)
    return _save_with_artifact(bundle, artifact)


def bundle_create_from_upload(
    *,
    team: Team,
    user,
    name: str,
    file: IO[bytes],
    size: int | None = None,
    packaging_type: str = ModelBundle.PackagingType.CLOUDPICKLE,
    requirements: list[str] | None = None,
    env_params: dict | None = None,
    metadata: dict | None = None,
    app_config: dict | None = None,
    python_version: str = "",
    load_predict_fn_module_path: str = "",
    load_model_fn_module_path: str = "",
) -> ModelBundle:
    """Store `file` and make a bundle of it in one step (our multipart route, the dashboard).

    The fields are checked before any byte is stored, and a failure after that removes both
    the stored object's row and its file: nothing is half created."""
    bundle = _new_bundle(
        team=team,
        user=user,
        name=name,
        flavor=flavor_for_packaging_type(packaging_type),
        requirements=[] if requirements is None else requirements,
        env_params=env_params,
        framework=None,
        metadata=metadata,
        app_config=app_config,
        schema_location=None,
        load_predict_fn="",
        load_model_fn="",
        load_predict_fn_module_path=load_predict_fn_module_path,
        load_model_fn_module_path=load_model_fn_module_path,
        python_version=python_version,
    )
    stored = StoredObject(key=new_object_key(team, StoredObject.Kind.BUNDLE), team=team, kind=StoredObject.Kind.BUNDLE)
    try:
        with transaction.atomic():
            stored_object_upload(stored=stored, stream=file, content_length=size)
            return _save_with_artifact(bundle, stored)
    except BaseException:
        # The rename happened inside the rolled-back transaction; take the file back out.
        store.delete_object(stored.key)
        raise


@transaction.atomic
def bundle_clone_with_changes(
    *, bundle: ModelBundle, user, app_config: Any = UNCHANGED, name: str | None = None
) -> ModelBundle:
    """A new bundle over the same artifact with the same fields, except `app_config` (when
    given, None included) and `name` (when given: the legacy dialect's new_bundle_name)."""
    if app_config is not UNCHANGED and app_config is not None and not isinstance(app_config, dict):
        raise FieldError("app_config", "must be a JSON object or null")
    clone = ModelBundle(
        **{
            field.attname: getattr(bundle, field.attname)
            for field in ModelBundle._meta.concrete_fields
            if field.name not in ("id", "created_at", "created_by")
        }
    )
    clone.created_by = user if getattr(user, "pk", None) else None
    if app_config is not UNCHANGED:
        clone.app_config = app_config
    if name is not None:
        clone.name = limits.check_name(name, field="name", max_length=limits.BUNDLE_NAME_MAX_LENGTH)
    clone.full_clean()
    clone.save()
    return clone


def bundle_delete_by_name(*, team: Team, name: str) -> int:
    """Delete every version of the bundle `name` (the legacy DELETE), refusing with 409 while an
    endpoint or an active (pending or running) batch job uses one; artifacts no other bundle uses go too. Returns the count."""
    keys: list[str] = []
    with transaction.atomic():
        bundles = ModelBundle.objects.filter(team=team, name=name)
        artifact_keys = set(bundles.values_list("artifact_id", flat=True))
        if not artifact_keys:
            raise NotFoundError(f"No model bundle named {name!r}.")
        count = bundles.count()
        # A running job's replicas load the bundle; a finished job keeps its id and name.
        active = list(
            BatchJob.objects.filter(bundle__in=bundles, status__in=ACTIVE_STATUSES).values_list("id", flat=True)
        )
        if active:
            raise ConflictError(
                f"model bundle {name!r} is in use by batch job {', '.join(sorted(active))}; "
                "wait for it to finish or cancel it first"
            )
        try:
            with transaction.atomic():
                bundles.delete()
        except ProtectedError as error:
            users = sorted(str(obj) for obj in error.protected_objects)
            raise ConflictError(f"model bundle {name!r} is in use by {', '.join(users)}; delete or update those first")
        orphans = StoredObject.objects.filter(key__in=artifact_keys, bundles__isnull=True)
        keys = list(orphans.values_list("key", flat=True))
        try:
            with transaction.atomic():
                orphans.delete()
        except ProtectedError:
            keys = []  # something else still points at them: keep rows and files
        # Files go only once the rows are gone for good.
        transaction.on_commit(lambda: [store.delete_object(key) for key in keys])
    return count


# Runnable images (the user's own server in a container; workers.forwarder relays tasks to it)

# The fields of each runnable-image flavor in the contract, with their defaults; a field not
# listed is refused, so nothing sent is silently dropped.
_RUNNABLE_COMMON: dict[str, Any] = {
    "repository": None,
    "tag": None,
    "command": None,
    "predict_route": "/predict",
    "healthcheck_route": "/readyz",
    "env": None,
    "protocol": None,
    "readiness_initial_delay_seconds": 120,
    "extra_routes": [],
    "routes": [],
    "forwarder_type": "default",
    "worker_command": None,
    "worker_env": None,
}
RUNNABLE_IMAGE_FIELDS: dict[str, dict[str, Any]] = {
    ModelBundle.Flavor.RUNNABLE_IMAGE: _RUNNABLE_COMMON,
    ModelBundle.Flavor.STREAMING_ENHANCED_RUNNABLE_IMAGE: {
        **_RUNNABLE_COMMON, "command": [], "streaming_command": None, "streaming_predict_route": "/stream",
    },
    ModelBundle.Flavor.TRITON_ENHANCED_RUNNABLE_IMAGE: {
        **_RUNNABLE_COMMON,
        "triton_model_repository": None,
        "triton_model_replicas": None,
        "triton_num_cpu": None,
        "triton_commit_tag": None,
        "triton_storage": None,
        "triton_memory": None,
        "triton_readiness_initial_delay_seconds": 300,
    },
}
_RUNNABLE_REQUIRED = {
    ModelBundle.Flavor.RUNNABLE_IMAGE: ("repository", "tag", "command", "protocol"),
    ModelBundle.Flavor.STREAMING_ENHANCED_RUNNABLE_IMAGE: ("repository", "tag", "protocol", "streaming_command"),
    ModelBundle.Flavor.TRITON_ENHANCED_RUNNABLE_IMAGE: (
        "repository", "tag", "command", "protocol", "triton_model_repository", "triton_num_cpu", "triton_commit_tag",
    ),
}
_ROUTE = re.compile(r"^/[A-Za-z0-9._~!$&'()*+,;=:@%/-]*$")
_IMAGE_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/:-]*$")
_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")


def _string_list(value: Any, field: str, *, empty_ok: bool = True) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise FieldError(field, "must be a list of strings")
    if not empty_ok and not value:
        raise FieldError(field, "must not be empty")
    return value


def _string_map(value: Any, field: str) -> dict[str, str]:
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise FieldError(field, "must be an object of strings")
    return value


def runnable_image_config(flavor: str, values: dict[str, Any]) -> dict[str, Any]:
    """The checked image_config of a runnable-image bundle: every field of the flavor (defaults
    filled in), each FieldError named `flavor.<field>`."""
    known = RUNNABLE_IMAGE_FIELDS[flavor]
    for key in values:
        if key not in known and key != "flavor":
            raise FieldError(f"flavor.{key}", f"is not a field of the {flavor} flavor")
    for key in _RUNNABLE_REQUIRED[flavor]:
        if values.get(key) is None:
            raise FieldError(f"flavor.{key}", "This field is required.")
    config = {key: values.get(key, default) for key, default in known.items()}
    config = {key: (known[key] if value is None and known[key] is not None else value) for key, value in config.items()}

    def name(key: str) -> str:
        return f"flavor.{key}"

    if not isinstance(config["repository"], str) or not _IMAGE_PART.match(config["repository"]):
        raise FieldError(name("repository"), "must be an image repository such as my-registry/my-server")
    if not isinstance(config["tag"], str) or not _TAG.match(config["tag"]):
        raise FieldError(name("tag"), "must be an image tag (letters, digits, '_', '.', '-')")
    _string_list(config["command"], name("command"), empty_ok=flavor == ModelBundle.Flavor.STREAMING_ENHANCED_RUNNABLE_IMAGE)
    if config["protocol"] != "http":
        raise FieldError(name("protocol"), "must be http")
    route_keys = ["predict_route", "healthcheck_route"]
    if flavor == ModelBundle.Flavor.STREAMING_ENHANCED_RUNNABLE_IMAGE:
        route_keys.append("streaming_predict_route")
        _string_list(config["streaming_command"], name("streaming_command"), empty_ok=False)
    for key in route_keys:
        if not isinstance(config[key], str) or not _ROUTE.match(config[key]):
            raise FieldError(name(key), "must be a path starting with '/'")
    if config["env"] is not None:
        _string_map(config["env"], name("env"))
    delay = config["readiness_initial_delay_seconds"]
    if isinstance(delay, bool) or not isinstance(delay, int) or not 0 <= delay <= 86400:
        raise FieldError(name("readiness_initial_delay_seconds"), "must be an integer from 0 to 86400")
    # Refused rather than dropped: the forwarder serves the predict route only, and runs in
    # the one way this server knows.
    for key in ("extra_routes", "routes"):
        if _string_list(config[key], name(key)):
            raise FieldError(name(key), "extra routes are not supported here; leave it empty")
    if config["forwarder_type"] not in ("default",):
        raise FieldError(name("forwarder_type"), "only the default forwarder is supported here")
    for key in ("worker_command", "worker_env"):
        if config[key] is not None:
            raise FieldError(name(key), "is not supported here (the forwarder is ours); leave it null")
    if flavor == ModelBundle.Flavor.TRITON_ENHANCED_RUNNABLE_IMAGE:
        if not isinstance(config["triton_model_repository"], str) or not config["triton_model_repository"]:
            raise FieldError(name("triton_model_repository"), "must be a non-empty string")
        if not isinstance(config["triton_commit_tag"], str) or not _TAG.match(config["triton_commit_tag"]):
            raise FieldError(name("triton_commit_tag"), "must be an image tag")
        cpus = config["triton_num_cpu"]
        if isinstance(cpus, bool) or not isinstance(cpus, (int, float)) or cpus <= 0:
            raise FieldError(name("triton_num_cpu"), "must be a positive number")
        if config["triton_model_replicas"] is not None:
            _string_map(config["triton_model_replicas"], name("triton_model_replicas"))
        for key in ("triton_storage", "triton_memory"):
            if config[key] is not None and not isinstance(config[key], str):
                raise FieldError(name(key), "must be a string such as 4Gi")
        triton_delay = config["triton_readiness_initial_delay_seconds"]
        if isinstance(triton_delay, bool) or not isinstance(triton_delay, int) or triton_delay < 0:
            raise FieldError(name("triton_readiness_initial_delay_seconds"), "must be a non-negative integer")
    return config


@transaction.atomic
def bundle_create_runnable_image(
    *, team: Team, user, name: Any, flavor: str, values: dict[str, Any], metadata: Any = None,
    schema_location: str | None = None,
) -> ModelBundle:
    """A bundle that is a container image of the user's own server (no stored artifact): the
    docker runtime runs it next to our forwarder (workers.forwarder)."""
    if flavor not in RUNNABLE_IMAGE_FIELDS:
        raise FieldError("flavor", f"{flavor!r} is not a runnable image flavor")
    if not isinstance(name, str) or not name.strip():
        raise FieldError("name", "must be a non-empty string")
    if "/" in name:
        raise FieldError("name", "must not contain '/' (the name is part of URLs)")
    metadata = {} if metadata is None else metadata
    if not isinstance(metadata, dict):
        raise FieldError("metadata", "must be a JSON object")
    config = runnable_image_config(flavor, values)
    bundle = ModelBundle(
        team=team,
        created_by=user if getattr(user, "pk", None) else None,
        name=name,
        packaging_type=ModelBundle.PackagingType.LIRA,
        flavor=flavor,
        artifact=None,
        location="",
        requirements=[],
        env_params={},
        framework={},
        metadata=metadata,
        app_config=None,
        schema_location=schema_location or None,
        image_config=config,
    )
    bundle.full_clean()
    bundle.save()
    return bundle
