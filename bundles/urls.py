from django.urls import path

from bundles import store
from bundles.api import files, legacy, views
from bundles.models import StoredObject

urlpatterns = [
    path("v1/model-bundles", views.BundleV1ListView.as_view()),
    path("v1/model-bundles/latest", views.BundleLatestView.as_view()),
    path("v1/model-bundles/clone-with-changes", views.BundleCloneView.as_view()),
    path("v1/model-bundles/upload", views.BundleUploadView.as_view()),
    path("v1/model-bundles/<str:model_bundle_id>", views.BundleDetailView.as_view()),
    path("v2/model-bundles", views.BundleV2ListView.as_view()),
    path("v2/model-bundles/latest", views.BundleLatestView.as_view(representation=views.bundle_v2)),
    path("v2/model-bundles/clone-with-changes", views.BundleCloneView.as_view()),
    path("v2/model-bundles/<str:model_bundle_id>", views.BundleDetailView.as_view(representation=views.bundle_v2)),
    path("v1/files", files.FileListView.as_view()),
    path("v1/files/<str:file_id>", files.FileDetailView.as_view()),
    path("v1/files/<str:file_id>/content", files.FileContentView.as_view()),
    path(f"{store.OBJECT_ROUTE}<str:token>", views.store_object, name="store-object"),
    path("v1/hosted_inference/model_bundle_upload", views.UploadUrlView.as_view()),
    path(
        "v1/hosted_inference/batch_task_input_upload",
        views.UploadUrlView.as_view(kind=StoredObject.Kind.BATCH_INPUT),
    ),
    path("v1/hosted_inference/model_bundle", legacy.LegacyBundleListView.as_view()),
    path("v1/hosted_inference/model_bundle/clone_with_changes", legacy.LegacyBundleCloneView.as_view()),
    path("v1/hosted_inference/model_bundle/<str:name>", legacy.LegacyBundleDetailView.as_view()),
]
