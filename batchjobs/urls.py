from django.urls import path

from batchjobs.api import legacy, views

urlpatterns = [
    path("v1/batch-jobs", views.BatchJobCreateView.as_view()),
    path("v1/batch-jobs/upload", views.BatchJobUploadView.as_view()),
    path("v1/batch-jobs/<str:batch_job_id>", views.BatchJobDetailView.as_view()),
    path("v1/batch-jobs/<str:batch_job_id>/result", views.BatchJobResultView.as_view()),
    path("v1/hosted_inference/batch_job/<str:key>", legacy.LegacyBatchJobView.as_view()),
]
