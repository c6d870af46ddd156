"""Bundle pages: list by name, upload-and-create, detail. The web process stores the
uploaded bytes and never unpickles them."""

from __future__ import annotations

import json

from django.contrib import messages
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect
from django.views.decorators.http import require_http_methods

from accounts.models import Team
from bundles.models import ModelBundle
from bundles.services import bundle_create_from_upload, bundle_create_runnable_image
from bundles.store import QuotaExceededError
from endpoints.models import ModelEndpoint
from launch_site.dashboard import selectors
from launch_site.dashboard.common import (
    SERVICE_ERRORS,
    add_service_error,
    list_page,
    render_page,
    search_text,
    team_view,
)
from launch_site.dashboard.forms import BundleUploadForm, RunnableImageBundleForm
from launch_site.errors import PayloadTooLargeError


@team_view
def bundle_list(request: HttpRequest, team: Team) -> HttpResponse:
    """Bundle names (`?q=` searches them), newest first, a page at a time."""
    context = list_page(request, selectors.bundle_names(team=team, search=search_text(request)))
    return render_page(request, "dashboard/bundles/list.html", context)


def _create_from_upload(*, team: Team, user, data: dict) -> ModelBundle:
    upload = data["file"]
    return bundle_create_from_upload(
        team=team, user=user, name=data["name"], file=upload, size=upload.size,
        packaging_type=data["packaging_type"] or "cloudpickle", requirements=data["requirements"],
        app_config=data["app_config"], python_version=data["python_version"],
        load_predict_fn_module_path=data["load_predict_fn_module_path"],
        load_model_fn_module_path=data["load_model_fn_module_path"],
    )  # fmt: skip


@team_view
@require_http_methods(["GET", "POST"])
def bundle_create(request: HttpRequest, team: Team) -> HttpResponse:
    form = BundleUploadForm(request.POST or None, request.FILES or None)
    if request.method == "POST" and form.is_valid():
        try:
            bundle = _create_from_upload(team=team, user=request.user, data=form.cleaned_data)
        except (PayloadTooLargeError, QuotaExceededError) as error:
            form.add_error("file", error.message)
        except SERVICE_ERRORS as error:
            add_service_error(form, error, field_names={"location": "file", "flavor": "packaging_type"})
        else:
            messages.success(request, f"Bundle {bundle.name} created.")
            return redirect("dashboard:bundle-detail", bundle_id=bundle.id)
    return render_page(request, "dashboard/bundles/form.html", {"form": form}, status=422 if form.errors else 200)


@team_view
@require_http_methods(["GET", "POST"])
def bundle_create_image(request: HttpRequest, team: Team) -> HttpResponse:
    form = RunnableImageBundleForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            bundle = bundle_create_runnable_image(
                team=team, user=request.user, name=form.cleaned_data["name"], flavor=form.cleaned_data["flavor"],
                values=form.flavor_values(),
            )
        except SERVICE_ERRORS as error:
            # The service names the image's fields flavor.<field>, as the API body nests them.
            add_service_error(form, error, field_names={f"flavor.{name}": name for name in form.fields})
        else:
            messages.success(request, f"Bundle {bundle.name} created.")
            return redirect("dashboard:bundle-detail", bundle_id=bundle.id)
    return render_page(request, "dashboard/bundles/image_form.html", {"form": form}, status=422 if form.errors else 200)


@team_view
def bundle_detail(request: HttpRequest, team: Team, bundle_id: str) -> HttpResponse:
    bundle = selectors.bundle_get(team=team, bundle_id=bundle_id)
    context = {
        "bundle": bundle,
        "app_config_json": None if bundle.app_config is None else json.dumps(bundle.app_config, indent=2),
        "env_params_json": json.dumps(bundle.env_params, indent=2) if bundle.env_params else None,
        "image_env_json": json.dumps(bundle.image_config.get("env"), indent=2)
        if bundle.is_runnable_image and bundle.image_config.get("env") else None,
        "versions": ModelBundle.objects.filter(team=team, name=bundle.name).order_by("-created_at"),
        "endpoints": ModelEndpoint.objects.filter(team=team, bundle=bundle).order_by("name"),
    }
    return render_page(request, "dashboard/bundles/detail.html", context)
