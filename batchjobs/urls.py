from django.urls import path

from batchjobs.api import image_jobs, legacy, views

urlpatterns = [
    path("v1/batch-jobs", views.BatchJobCreateView.as_view()),
    path("v1/batch-jobs/upload", views.BatchJobUploadView.as_view()),
    path("v1/batch-jobs/<str:batch_job_id>", views.BatchJobDetailView.as_view()),
    path("v1/batch-jobs/<str:batch_job_id>/result", views.BatchJobResultView.as_view()),
    path("v1/hosted_inference/batch_job/<str:key>", legacy.LegacyBatchJobView.as_view()),
    path("v1/docker-image-batch-job-bundles", image_jobs.ImageJobBundleListView.as_view()),
    path("v1/docker-image-batch-job-bundles/latest", image_jobs.ImageJobBundleLatestView.as_view()),
    path("v1/docker-image-batch-job-bundles/<str:bundle_id>", image_jobs.ImageJobBundleDetailView.as_view()),
    path("v1/docker-image-batch-jobs", image_jobs.ImageJobListView.as_view()),
    path("v1/docker-image-batch-jobs/<str:job_id>", image_jobs.ImageJobDetailView.as_view()),
    path("v1/docker-image-batch-jobs/<str:job_id>/logs", image_jobs.ImageJobLogsView.as_view()),
    path("v1/triggers", image_jobs.TriggerListView.as_view()),
    path("v1/triggers/<str:trigger_id>", image_jobs.TriggerDetailView.as_view()),
]
