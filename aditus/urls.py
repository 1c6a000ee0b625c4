from django.contrib import admin
from django.urls import include, path

from aditus.admin_site import AditusAdminSite

# No admin page without a verified second factor.
admin.site.__class__ = AditusAdminSite

urlpatterns = [
    path("admin/", admin.site.urls),
    path("api/v1/auth/", include("aditus.auth_urls")),
    path("api/v1/super-admin/providers/", include("providers.urls")),
]
