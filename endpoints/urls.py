from django.urls import path

from endpoints.api import legacy, views

urlpatterns = [
    path("v1/model-endpoints", views.ModelEndpointListView.as_view()),
    path("v1/model-endpoints-schema.json", views.ModelEndpointsSchemaView.as_view()),
    path("v1/model-endpoints-api", views.ModelEndpointsApiView.as_view()),
    path("v1/model-endpoints/<str:endpoint_id>", views.ModelEndpointDetailView.as_view()),
    path("v1/model-endpoints/<str:endpoint_id>/restart", views.ModelEndpointRestartView.as_view()),
    path("v1/sync-tasks", views.SyncTaskView.as_view()),
    path("v1/async-tasks", views.AsyncTaskCreateView.as_view()),
    path("v1/streaming-tasks", views.StreamingTaskView.as_view()),
    path("v1/async-tasks/<str:task_id>", views.AsyncTaskDetailView.as_view()),
    path("v1/task-results/<str:task_id>", views.TaskResultView.as_view()),
    path("v1/hosted_inference/endpoints/creation_logs/<str:name>", views.CreationLogsView.as_view()),
    # The older dialect of the public scale-launch 0.3.3 client (endpoints.api.legacy).
    path("v1/hosted_inference/endpoints", legacy.LegacyEndpointListView.as_view()),
    path("v1/hosted_inference/endpoints/<str:name>", legacy.LegacyEndpointDetailView.as_view()),
    path("v1/hosted_inference/task_sync/<str:endpoint_name>", legacy.LegacySyncTaskView.as_view()),
    path("v1/hosted_inference/task_async/<str:endpoint_name>", legacy.LegacyAsyncTaskCreateView.as_view()),
    path(
        "v1/hosted_inference/endpoints/<str:endpoint_name>/task_async/<str:task_id>",
        legacy.LegacyAsyncTaskDetailView.as_view(),
    ),
    path("v1/hosted_inference/task/result/<str:task_id>", legacy.LegacyTaskResultView.as_view()),
]
