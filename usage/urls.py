from django.urls import path

from usage import views

urlpatterns = [
    path("stats", views.UsageStatsView.as_view(), name="usage-stats"),
]
