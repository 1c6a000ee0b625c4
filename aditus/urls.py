from django.contrib import admin
from django.urls import include, path
from django_otp.admin import OTPAdminSite

# No admin page without a verified second factor.
admin.site.__class__ = OTPAdminSite

urlpatterns = [
    path("admin/", admin.site.urls),
    path("api/v1/auth/", include("aditus.auth_urls")),
    path("api/v1/super-admin/providers/", include("providers.urls")),
]
