"""What a locked-out login gets (django-axes' AXES_LOCKOUT_CALLABLE): JSON on the API, an admin page otherwise."""

import math

from django.conf import settings
from django.contrib import admin
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.template.response import TemplateResponse

STATUS = 429


def lockout_response(request: HttpRequest, original_response=None, credentials=None) -> HttpResponse:
    """Refuse the login with 429 and say when to retry; the same answer whether the password was right or not."""
    seconds = int(settings.AXES_COOLOFF_TIME.total_seconds())
    minutes = math.ceil(seconds / 60)
    message = f"Too many failed logins for this account from this address. Try again in {minutes} minutes."
    headers = {"Retry-After": str(seconds)}
    if request.path.startswith("/api/"):
        # The shape of the token endpoint's refusals.
        return JsonResponse({"detail": message, "code": "locked_out"}, status=STATUS, headers=headers)
    context = {**admin.site.each_context(request), "title": "Login locked", "message": message}
    response = TemplateResponse(request, "admin/lockout.html", context, status=STATUS, headers=headers)
    return response.render()
