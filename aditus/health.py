"""Liveness and readiness probes: /healthz and /readyz.

Both are served by `HealthProbeMiddleware` (aditus.middleware) ahead of the rest of the stack, so a probe that
addresses the container by IP over plain http is answered without host validation, the https redirect, a session
or CSRF. The URL patterns exist too, for `reverse()` and for a stack without that middleware.
"""

import logging
import time

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import DatabaseError, connection
from django.db.migrations.executor import MigrationExecutor
from django.http import HttpRequest, JsonResponse
from django.utils.cache import add_never_cache_headers
from django.views.decorators.csrf import csrf_exempt

logger = logging.getLogger(__name__)

# monotonic() before which "every migration is applied" need not be checked again, per process. Only that answer
# is kept: a process waiting for `migrate` sees it as soon as it has run.
_migrations_applied_until = 0.0


def _probe_response(status: int, body: dict) -> JsonResponse:
    response = JsonResponse(body, status=status)
    add_never_cache_headers(response)
    return response


@csrf_exempt
async def healthz(request: HttpRequest) -> JsonResponse:
    """Answer 200 while the process can serve requests; touches nothing else."""
    return _probe_response(200, {"status": "ok"})


@csrf_exempt
async def readyz(request: HttpRequest) -> JsonResponse:
    """Answer 200 when the database answers and has every migration applied, else 503 with the reason."""
    reason = await sync_to_async(readiness_problem)()
    if reason is None:
        return _probe_response(200, {"status": "ok"})
    return _probe_response(503, {"status": "unavailable", "reason": reason})


def readiness_problem() -> str | None:
    """Return why this process should not get traffic, or None. Blocking: runs a query."""
    global _migrations_applied_until
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
    except DatabaseError as error:
        # The class name only: a driver's message can name the host and the user.
        logger.warning("Readiness: database unreachable (%s)", type(error).__name__)
        return f"database unreachable ({type(error).__name__})"

    if time.monotonic() < _migrations_applied_until:
        return None
    try:
        executor = MigrationExecutor(connection)
        unapplied = executor.migration_plan(executor.loader.graph.leaf_nodes())
    except DatabaseError as error:
        logger.warning("Readiness: could not read the migration state (%s)", type(error).__name__)
        return f"migration state unreadable ({type(error).__name__})"
    if unapplied:
        return f"{len(unapplied)} unapplied migration(s): run `deploy/entrypoint.sh migrate`"
    _migrations_applied_until = time.monotonic() + settings.READYZ_MIGRATIONS_CACHE_SECONDS
    return None
