"""Routes of docker-image batch jobs and their bundles (launch-openapi.json):
/v1/docker-image-batch-job-bundles and /v1/docker-image-batch-jobs."""

from __future__ import annotations

from django.http import HttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.selectors import request_team
from batchjobs import image_jobs
from batchjobs.models import DockerImageBatchJob, DockerImageBatchJobBundle
from launch_site.errors import FieldError, query_error
from launch_site.pagination import PAGE_PARAMETERS, page_of, page_response

OBJECT = {200: OpenApiTypes.OBJECT}


def _body(request) -> dict:
    if not isinstance(request.data, dict):
        raise FieldError("body", "must be a JSON object")
    return request.data


def bundle_response(bundle: DockerImageBatchJobBundle) -> dict:
    """DockerImageBatchJobBundleV1Response."""
    return {
        "id": bundle.id, "name": bundle.name, "created_at": bundle.created_at.isoformat(),
        "image_repository": bundle.image_repository, "image_tag": bundle.image_tag, "command": bundle.command,
        "env": bundle.env, "mount_location": bundle.mount_location, "cpus": bundle.cpus, "memory": bundle.memory,
        "storage": bundle.storage, "gpus": bundle.gpus, "gpu_type": bundle.gpu_type, "public": bundle.public,
    }


def job_response(job: DockerImageBatchJob) -> dict:
    """DockerImageBatchJob, plus what we keep of a run (reason, start, exit status)."""
    return {
        "id": job.id, "created_by": job.created_by.username if job.created_by else "", "owner": job.team.name,
        "created_at": job.created_at.isoformat(),
        "completed_at": job.completed_at.isoformat() if job.completed_at else None,
        "status": job.status, "annotations": job.labels,
        "override_job_max_runtime_s": job.override_job_max_runtime_s, "num_workers": 1,
        "status_reason": job.status_reason or None,
        "started_at": job.started_at.isoformat() if job.started_at else None,
        "exit_code": job.exit_code, "docker_image_batch_job_bundle_id": job.bundle_id,
        "trigger_id": job.trigger_id or None,
    }


class ImageJobBundleListView(APIView):
    @extend_schema(operation_id="v1_docker_image_batch_job_bundles_list",
                   parameters=[OpenApiParameter("bundle_name", str, required=False),
                               OpenApiParameter("order_by", str, required=False, enum=["newest", "oldest"]),
                               *PAGE_PARAMETERS],
                   responses=OBJECT)
    def get(self, request):
        bundles = DockerImageBatchJobBundle.objects.filter(team=request_team(request))
        if request.query_params.get("bundle_name"):
            bundles = bundles.filter(name=request.query_params["bundle_name"])
        # An empty order_by is refused like any other bad value, not read as the default.
        order_by = request.query_params.get("order_by", "newest")
        if order_by not in ("newest", "oldest"):
            raise query_error("order_by", "must be newest or oldest")
        bundles, more = page_of(request, bundles.order_by(
            *(("-created_at", "-id") if order_by == "newest" else ("created_at", "id"))))
        return page_response(request, "docker_image_batch_job_bundles", [bundle_response(b) for b in bundles], more)

    @extend_schema(request=OpenApiTypes.OBJECT, responses=OBJECT)
    def post(self, request):
        data = _body(request)
        for field in ("name", "image_repository", "image_tag", "command"):
            if field not in data:
                raise FieldError(field, "This field is required.")
        bundle = image_jobs.image_job_bundle_create(
            team=request_team(request), user=request.user, name=data["name"],
            image_repository=data["image_repository"], image_tag=data["image_tag"], command=data["command"],
            env=data.get("env"), mount_location=data.get("mount_location"),
            resource_requests=data.get("resource_requests"), public=data.get("public", False),
        )
        return Response({"docker_image_batch_job_bundle_id": bundle.id})


class ImageJobBundleLatestView(APIView):
    @extend_schema(parameters=[OpenApiParameter("bundle_name", str, required=True)], responses=OBJECT)
    def get(self, request):
        name = request.query_params.get("bundle_name")
        if not name:
            raise query_error("bundle_name", "This field is required.")
        return Response(bundle_response(image_jobs.image_job_bundle_latest(team=request_team(request), name=name)))


class ImageJobBundleDetailView(APIView):
    @extend_schema(responses=OBJECT)
    def get(self, request, bundle_id: str):
        return Response(bundle_response(image_jobs.image_job_bundle_get(team=request_team(request), bundle_id=bundle_id)))


class ImageJobListView(APIView):
    @extend_schema(operation_id="v1_docker_image_batch_jobs_list",
                   parameters=[OpenApiParameter("trigger_id", str, required=False), *PAGE_PARAMETERS], responses=OBJECT)
    def get(self, request):
        jobs = DockerImageBatchJob.objects.filter(team=request_team(request)).select_related("created_by", "team")
        if request.query_params.get("trigger_id"):
            jobs = jobs.filter(trigger_id=request.query_params["trigger_id"])
        jobs, more = page_of(request, jobs.order_by("-created_at", "-id"))
        return page_response(request, "jobs", [job_response(job) for job in jobs], more)

    @extend_schema(request=OpenApiTypes.OBJECT, responses=OBJECT)
    def post(self, request):
        data = _body(request)
        if "labels" not in data:
            raise FieldError("labels", "This field is required.")
        job = image_jobs.image_job_create(
            team=request_team(request), user=request.user,
            bundle_id=data.get("docker_image_batch_job_bundle_id"),
            bundle_name=data.get("docker_image_batch_job_bundle_name"), job_config=data.get("job_config"),
            labels=data["labels"], resource_requests=data.get("resource_requests"),
            override_job_max_runtime_s=data.get("override_job_max_runtime_s"),
        )
        return Response({"job_id": job.id})


class ImageJobDetailView(APIView):
    @extend_schema(responses=OBJECT)
    def get(self, request, job_id: str):
        return Response(job_response(image_jobs.image_job_get(team=request_team(request), job_id=job_id)))

    @extend_schema(request=OpenApiTypes.OBJECT, responses=OBJECT)
    def put(self, request, job_id: str):
        job = image_jobs.image_job_get(team=request_team(request), job_id=job_id)
        cancel = _body(request).get("cancel")
        if cancel is not True:
            raise FieldError("cancel", "must be true (cancelling is the one change a job takes)")
        image_jobs.image_job_cancel(job=job)
        return Response({"success": True})


class ImageJobLogsView(APIView):
    """Our addition: the job's output (stdout and stderr), kept after it ends."""

    @extend_schema(responses={(200, "text/plain"): OpenApiTypes.STR})
    def get(self, request, job_id: str):
        job = image_jobs.image_job_get(team=request_team(request), job_id=job_id)
        if job.status in ("PENDING", "RUNNING") and job.replica_id:
            from workers.runtimes import get_runtime

            replica = image_jobs.job_replica(job)
            text = get_runtime("docker").logs(replica) if replica else ""
        else:
            text = job.logs
        return HttpResponse(text, content_type="text/plain; charset=utf-8")


def trigger_response(trigger) -> dict:
    """GetTriggerV1Response, plus its state (suspended, next_run_at, last error)."""
    return {
        "id": trigger.id, "name": trigger.name, "owner": trigger.team.name,
        "created_by": trigger.created_by.username if trigger.created_by else "",
        "created_at": trigger.created_at.isoformat(), "cron_schedule": trigger.cron_schedule,
        "docker_image_batch_job_bundle_id": trigger.bundle_id, "default_job_config": trigger.default_job_config,
        "default_job_metadata": trigger.default_job_metadata, "suspended": trigger.suspended,
        "next_run_at": trigger.next_run_at.isoformat(), "last_error": trigger.last_error or None,
    }


class TriggerListView(APIView):
    @extend_schema(operation_id="v1_triggers_list", parameters=PAGE_PARAMETERS, responses=OBJECT)
    def get(self, request):
        from batchjobs.models import Trigger

        triggers = Trigger.objects.filter(team=request_team(request)).select_related("team", "created_by")
        triggers, more = page_of(request, triggers.order_by("-created_at", "-id"))
        return page_response(request, "triggers", [trigger_response(t) for t in triggers], more)

    @extend_schema(request=OpenApiTypes.OBJECT, responses=OBJECT)
    def post(self, request):
        from batchjobs import triggers

        data = _body(request)
        for field in ("name", "cron_schedule", "bundle_id"):
            if field not in data:
                raise FieldError(field, "This field is required.")
        trigger = triggers.trigger_create(
            team=request_team(request), user=request.user, name=data["name"], cron_schedule=data["cron_schedule"],
            bundle_id=data["bundle_id"], default_job_config=data.get("default_job_config"),
            default_job_metadata=data.get("default_job_metadata"),
        )
        return Response({"trigger_id": trigger.id})


class TriggerDetailView(APIView):
    @extend_schema(responses=OBJECT)
    def get(self, request, trigger_id: str):
        from batchjobs import triggers

        return Response(trigger_response(triggers.trigger_get(team=request_team(request), trigger_id=trigger_id)))

    @extend_schema(request=OpenApiTypes.OBJECT, responses=OBJECT)
    def put(self, request, trigger_id: str):
        from batchjobs import triggers

        trigger = triggers.trigger_get(team=request_team(request), trigger_id=trigger_id)
        data = _body(request)
        for key in data:
            if key not in ("cron_schedule", "suspend"):
                raise FieldError(key, "a trigger's update takes cron_schedule and suspend only")
        triggers.trigger_update(trigger=trigger, cron_schedule=data.get("cron_schedule"), suspend=data.get("suspend"))
        return Response({"success": True})

    @extend_schema(responses=OBJECT)
    def delete(self, request, trigger_id: str):
        from batchjobs import triggers

        triggers.trigger_delete(trigger=triggers.trigger_get(team=request_team(request), trigger_id=trigger_id))
        return Response({"success": True})
