from django.conf import settings
from django.contrib import admin
from django.urls import include, path, re_path
from django.views.static import serve
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from accounts import schema as _api_key_schema  # noqa: F401 - registers the API keys' OpenAPI scheme
from launch_site import views

urlpatterns = [
    path("healthz", views.healthz),
    path("healthcheck", views.healthz),
    path("readyz", views.readyz),
    path("metrics", views.metrics),
    path("admin/", admin.site.urls),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="swagger-ui"),
    path("", include("bundles.urls")),
    path("", include("endpoints.urls")),
    path("", include("batchjobs.urls")),
    path("", include("workers.urls")),
    path("", include("launch_site.dashboard_urls")),
    # Collected static files (vendored htmx, css); the embedded stack has no separate server.
    re_path(r"^static/(?P<path>.*)$", serve, {"document_root": settings.STATIC_ROOT}),
]

handler400 = "launch_site.errors.json_bad_request"
handler404 = "launch_site.errors.json_not_found"
handler500 = "launch_site.errors.json_server_error"
