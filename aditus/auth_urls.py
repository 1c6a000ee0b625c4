"""Token endpoints, included under /api/v1/auth/."""

from django.urls import path

from aditus import auth_views

app_name = "auth_api"

urlpatterns = [
    path("token", auth_views.TokenObtainView.as_view(), name="token"),
    path("logout", auth_views.LogoutView.as_view(), name="logout"),
]
