"""Preparing a task request: who asks, what they ask, which providers may answer, and the first reservation.

    request_prepare  authenticate, read the input, load the candidate configs with their cooldowns, and reserve
                     tokens for the first candidate that has room

A bearer token and the candidates are read together, in one round trip from the event loop, shared with the
requests that prepare at the same moment (`runtime.db.execute_shared`); a session is read in a thread (Django's
session store is synchronous). The same code runs on SQLite and PostgreSQL. Nothing here holds a transaction or
a connection across a provider call.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import import_module
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user
from django.middleware.csrf import CsrfViewMiddleware

from aditus.authentication import InvalidBearerToken, bearer_token_secret, token_query, token_user
from providers.clients.base import GenerateRequest
from runtime import db
from runtime.threads import run_in_thread
from tasks.responses import TaskError
from tasks.selectors import CandidateConfig, candidates_from_rows, candidates_query, estimate_tokens, weighted_order
from usage.services import Hold, LimitExceeded, Reservation, tokens_reserve_async

NOT_AUTHENTICATED = (
    "Authentication required: send 'Authorization: Bearer <token>' (a token from /api/v1/auth/token), "
    "or sign in for a session."
)


class _CsrfCheck(CsrfViewMiddleware):
    """Django's own CSRF check, answering with the reason instead of a 403 page (as DRF does for sessions)."""

    def _reject(self, request, reason):
        return reason


def _no_response(request):  # CsrfViewMiddleware needs a get_response; the check never calls it
    return None


def _csrf_view():  # any callable without `csrf_exempt`: the check reads only that attribute
    return None


_csrf_check = _CsrfCheck(_no_response)


def session_user(request):
    """The request's user by its session cookie, checked against CSRF; TaskError 401/403 otherwise.

    The views are csrf_exempt so that bearer-token clients need no CSRF token; session requests are checked
    here. Sync: Django's session store is.
    """
    if not hasattr(request, "session"):
        # The lean path has no SessionMiddleware (runtime.asgi): read the session from its cookie here, as
        # SessionMiddleware would. Nothing on this path changes it, so nothing is saved back.
        engine = import_module(settings.SESSION_ENGINE)
        request.session = engine.SessionStore(request.COOKIES.get(settings.SESSION_COOKIE_NAME))
    user = get_user(request)  # the session, loaded only if the request has a session cookie
    if not user.is_authenticated:
        raise TaskError(401, "not_authenticated", NOT_AUTHENTICATED, headers={"WWW-Authenticate": "Bearer"})
    _csrf_check.process_request(request)
    reason = _csrf_check.process_view(request, _csrf_view, (), {})
    if reason:
        raise TaskError(403, "csrf_failed", f"CSRF check failed for this session request: {reason}.")
    return user


def _token_refused(error: InvalidBearerToken) -> TaskError:
    return TaskError(401, "invalid_token", str(error), headers={"WWW-Authenticate": 'Bearer error="invalid_token"'})


def _bearer_secret(request) -> str | None:
    """The request's bearer token (no query); None without one; TaskError 401 for a malformed one."""
    header = request.META.get("HTTP_AUTHORIZATION")
    if not header:
        return None
    try:
        return bearer_token_secret(header)
    except InvalidBearerToken as error:
        raise _token_refused(error) from None


@dataclass(slots=True)
class Prepared:
    """A request ready for the router: who asked, the input, the provider request, and the candidates."""

    user_id: int
    input: Any
    provider_request: GenerateRequest
    stream: bool
    ready: list[CandidateConfig]  # not cooling down, in the order to try them (priority, then weighted)
    cooling: list[CandidateConfig]
    over_limit: list[LimitExceeded] = field(default_factory=list)  # skipped while reserving for the first
    first_reservation: Reservation | None = None  # for ready[0], when it has limits


async def request_prepare(
    *,
    request,
    task: str,
    request_id: str,
    read_input: Callable[[Any], Any],
    build: Callable[[Any], tuple[GenerateRequest, bool]],
) -> Prepared:
    """Authenticate, read and check the input, load the task's candidates and reserve tokens for the first one
    that has room (those without are noted in `over_limit`).

    Round trips: the bearer token and the candidates together (plus a write at most once a minute per token,
    `ApiToken.mark_used`); with a session, a thread reads it first. Then the first reservation, when the first
    candidate has limits (`usage.services.tokens_reserve_async`). An upload (the image task) is read in a thread.
    """
    secret = _bearer_secret(request)
    if secret is None and settings.SESSION_COOKIE_NAME not in request.COOKIES:
        raise TaskError(401, "not_authenticated", NOT_AUTHENTICATED, headers={"WWW-Authenticate": "Bearer"})
    statements = [candidates_query(task)] if secret is None else [token_query(secret), candidates_query(task)]
    rows = await db.execute_shared(statements)
    if secret is None:
        user = await run_in_thread(session_user, request)
    else:
        try:
            user, token = token_user(secret, row=rows[0][0] if rows[0] else None, record_use=False)
        except InvalidBearerToken as error:
            raise _token_refused(error) from None
        if not token.use_recorded():
            await run_in_thread(token.mark_used)
    if request.content_type == "multipart/form-data":
        value = await run_in_thread(read_input, request)
    else:
        value = read_input(request)
    provider_request, stream = build(value)
    candidates = candidates_from_rows(rows[-1])
    prepared = Prepared(
        user_id=user.pk,
        input=value,
        provider_request=provider_request,
        stream=stream,
        ready=weighted_order([candidate for candidate in candidates if candidate.cooling_until is None]),
        cooling=[candidate for candidate in candidates if candidate.cooling_until is not None],
    )
    estimate = estimate_tokens(provider_request, settings.TASK_IMAGE_TOKEN_ALLOWANCE)
    while prepared.ready:
        config = prepared.ready[0].config
        hold = Hold(
            request_id=request_id,
            user_id=user.pk,
            task=task,
            model=config.model_name,
            attempt=1,
            input_tokens=estimate - provider_request.max_output_tokens,
        )
        try:
            prepared.first_reservation = await tokens_reserve_async(config=config, tokens=estimate, hold=hold)
            break
        except LimitExceeded as refusal:
            prepared.over_limit.append(refusal)
            prepared.ready.pop(0)
    return prepared
