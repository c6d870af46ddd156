from django.urls import path

from workers.api.views import HostDetailView, HostListView

urlpatterns = [
    path("v1/hosts", HostListView.as_view(), name="host-list"),
    path("v1/hosts/<int:host_id>", HostDetailView.as_view(), name="host-detail"),
]
