from django.urls import path

from endpoints.api import views

urlpatterns = [
    path("v1/model-endpoints", views.ModelEndpointListView.as_view()),
    path("v1/model-endpoints/<str:endpoint_id>", views.ModelEndpointDetailView.as_view()),
    path("v1/sync-tasks", views.SyncTaskView.as_view()),
    path("v1/async-tasks", views.AsyncTaskCreateView.as_view()),
    path("v1/async-tasks/<str:task_id>", views.AsyncTaskDetailView.as_view()),
    path("v1/task-results/<str:task_id>", views.TaskResultView.as_view()),
    path("v1/hosted_inference/endpoints/creation_logs/<str:name>", views.CreationLogsView.as_view()),
]
