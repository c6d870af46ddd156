"""Dashboard routes (included after the API's, at the site root)."""

from __future__ import annotations

from django.contrib.auth import views as auth_views
from django.urls import path
from django.views.generic import RedirectView

from launch_site.dashboard import batch, bundles, endpoints, keys, usage

app_name = "dashboard"

urlpatterns = [
    path("", RedirectView.as_view(pattern_name="dashboard:endpoint-list"), name="home"),
    path("accounts/login/", auth_views.LoginView.as_view(redirect_authenticated_user=True), name="login"),
    path("accounts/logout/", auth_views.LogoutView.as_view(next_page="dashboard:login"), name="logout"),
    path("bundles/", bundles.bundle_list, name="bundle-list"),
    path("bundles/new/", bundles.bundle_create, name="bundle-create"),
    path("bundles/new-image/", bundles.bundle_create_image, name="bundle-create-image"),
    path("bundles/<str:bundle_id>/", bundles.bundle_detail, name="bundle-detail"),
    path("endpoints/", endpoints.endpoint_list, name="endpoint-list"),
    path("endpoints/new/", endpoints.endpoint_create, name="endpoint-create"),
    path("endpoints/<str:endpoint_id>/", endpoints.endpoint_detail, name="endpoint-detail"),
    path("endpoints/<str:endpoint_id>/status/", endpoints.endpoint_status, name="endpoint-status"),
    path("endpoints/<str:endpoint_id>/requests/", endpoints.endpoint_requests, name="endpoint-requests"),
    path("endpoints/<str:endpoint_id>/charts/", endpoints.endpoint_charts, name="endpoint-charts"),
    path("endpoints/<str:endpoint_id>/edit/", endpoints.endpoint_edit, name="endpoint-edit"),
    path("endpoints/<str:endpoint_id>/delete/", endpoints.endpoint_delete, name="endpoint-delete"),
    path("endpoints/<str:endpoint_id>/tasks/", endpoints.task_create, name="task-create"),
    path("endpoints/<str:endpoint_id>/tasks/<str:task_id>/", endpoints.task_detail, name="task-detail"),
    path("batch-jobs/", batch.batch_job_list, name="batch-list"),
    path("batch-jobs/new/", batch.batch_job_create, name="batch-create"),
    path("batch-jobs/<str:job_id>/", batch.batch_job_detail, name="batch-detail"),
    path("batch-jobs/<str:job_id>/progress/", batch.batch_job_progress, name="batch-progress"),
    path("batch-jobs/<str:job_id>/cancel/", batch.batch_job_cancel, name="batch-cancel"),
    path("api-keys/", keys.api_key_list, name="api-keys"),
    path("api-keys/<int:key_id>/revoke/", keys.api_key_revoke_view, name="api-key-revoke"),
    path("usage/", usage.usage, name="usage"),
]
