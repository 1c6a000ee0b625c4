from django.urls import path

from tasks import views

app_name = "tasks"

urlpatterns = [
    path("job-extractor/extract", views.job_extract, name="job-extract"),
    path("job-extractor/validate-image", views.job_image_validate, name="job-image-validate"),
    path("cv-drafter/draft", views.cv_draft, name="cv-draft"),
    path("cover-letter/generate", views.cover_letter_generate, name="cover-letter-generate"),
]
