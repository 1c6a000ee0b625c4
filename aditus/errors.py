"""Error answers: JSON under /api/, as every other API error is; Django's HTML pages elsewhere (the admin)."""

from django.http import HttpRequest, HttpResponsePermanentRedirect, JsonResponse
from django.urls import Resolver404, resolve
from django.views import defaults
from django.views.decorators.csrf import csrf_exempt

API_PREFIX = "/api/"


def _real_view_at(path: str) -> bool:
    try:
        return resolve(path).func is not api_not_found
    except Resolver404:
        return False


def not_found(request: HttpRequest, exception: Exception | None = None):
    """A 404 (handler404): JSON naming the path under /api/, Django's page elsewhere."""
    if not request.path.startswith(API_PREFIX):
        return defaults.page_not_found(request, exception)
    detail = f"There is no API endpoint at {request.path}."
    bare = request.path.rstrip("/")
    if bare != request.path and _real_view_at(bare):
        detail += f" API paths have no trailing slash: use {bare}."
    return JsonResponse({"detail": detail}, status=404)


@csrf_exempt  # it changes nothing, and a bearer-token client sends no CSRF token: it must still get the JSON 404
def api_not_found(request: HttpRequest, *args, **kwargs):
    """The last URL pattern under /api/, so that a wrong API path is a JSON 404 with DEBUG on too.

    `/api/docs` and `/api/schema` are pages with a trailing slash: those still redirect there, as Django's
    APPEND_SLASH did before this pattern caught them.
    """
    if request.method in ("GET", "HEAD") and _real_view_at(f"{request.path}/"):
        return HttpResponsePermanentRedirect(f"{request.path}/")
    return not_found(request)


def server_error(request: HttpRequest):
    """A 500 (handler500): JSON under /api/ (the error is in the logs under the request id), HTML elsewhere."""
    if not request.path.startswith(API_PREFIX):
        return defaults.server_error(request)
    return JsonResponse(
        {"detail": "Internal server error; the logs have the details under this request's id."}, status=500
    )
