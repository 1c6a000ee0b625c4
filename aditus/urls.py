from django.contrib import admin
from django.urls import include, path, re_path
from drf_spectacular.views import SpectacularAPIView

from aditus import errors, health
from aditus.admin_site import AditusAdminSite
from aditus.openapi import DocsView
from usage.metrics import metrics_view

# A wrong path under /api/ (a trailing slash, a typo) answers JSON like every other API error.
handler404 = "aditus.errors.not_found"
handler500 = "aditus.errors.server_error"

# No admin page without a verified second factor.
admin.site.__class__ = AditusAdminSite

urlpatterns = [
    # Probes; answered by aditus.middleware.HealthProbeMiddleware before these patterns are reached.
    path("healthz", health.healthz, name="healthz"),
    path("readyz", health.readyz, name="readyz"),
    path("admin/", admin.site.urls),
    # Prometheus scrapes; limited to METRICS_ALLOWED_IPS and, when set, METRICS_TOKEN.
    path("metrics", metrics_view, name="metrics"),
    path("api/v1/auth/", include("aditus.auth_urls")),
    path("api/v1/super-admin/providers/usage/", include("usage.urls")),
    path("api/v1/super-admin/providers/", include("providers.urls")),
    path("api/v1/", include("tasks.urls")),
    # OpenAPI schema and Swagger UI (aditus.openapi); for signed-in users unless API_DOCS_PUBLIC.
    path("api/schema/", SpectacularAPIView.as_view(), name="api-schema"),
    path("api/docs/", DocsView.as_view(url_name="api-schema"), name="api-docs"),
    # Last: any other path under /api/ is a JSON 404, also with DEBUG on (when Django ignores handler404). No name,
    # so that ai_task_responses_total still counts such paths as endpoint="other".
    re_path(r"^api/", errors.api_not_found),
]
