"""The lean ASGI path of the task endpoints: the same views behind a short, fully asynchronous middleware stack.

Under ASGI, Django runs every hook of a `MiddlewareMixin` middleware (sessions, CSRF, auth, OTP, messages, ...)
through `sync_to_async`, i.e. a trip to a thread and back per hook, and its handler adds three more per request
(the request_started and request_finished signals, and closing the response, each in a thread created for the
request). For the task endpoints that was about 2-3 ms of CPU per call, most of the gateway's budget.

`aditus.asgi.application` sends requests under TASK_PATH_PREFIXES here and everything else to Django's usual
handler. Views may leave work for after the response (`request.after_response`: saving the usage row of the
attempt that answered, see `tasks.router.record`); it runs once the response is sent, before the request ends,
and to its end even if the client goes away.

What the task endpoints need of the full stack is kept (settings.TASK_MIDDLEWARE):

- request ids (RequestIdMiddleware);
- the https redirect, HSTS and the other security headers (SecurityMiddleware), host validation against
  ALLOWED_HOSTS and the disallowed user agents (CommonMiddleware), X-Frame-Options and the CSP: Django's own
  middleware, their hooks run inline by `aditus.middleware.inline` since they do no I/O;
- authentication and CSRF are the views' own (`tasks.services.request_user`): a bearer token, or the session
  (loaded from its cookie without SessionMiddleware) with Django's CSRF check.

Left out, on purpose: sessions' response side (the task views never change a session), CSRF middleware (checked
in the view for sessions; bearer requests need none), AuthenticationMiddleware and OTPMiddleware (the views
authenticate themselves, and the task endpoints need no second factor), messages, django-axes (no login happens
here), static files and health probes (other paths), and django-prometheus' request metrics (the ai_provider_*
metrics record every provider call, and `ai_task_responses_total` what the endpoints answered). The
request_started / request_finished receivers only reset the query log and close this thread's database
connections and caches, which this path never opens: the views' database work runs in the thread pool
(`tasks.services`), which looks after its own connections.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from asgiref.sync import iscoroutinefunction
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured, RequestAborted
from django.core.handlers.asgi import ASGIHandler, get_script_prefix
from django.core.handlers.exception import convert_exception_to_response
from django.urls import set_script_prefix
from django.utils.module_loading import import_string

from aditus.aio import shielded
from usage.metrics import task_response_observe

logger = logging.getLogger(__name__)


def is_task_path(scope) -> bool:
    """Whether an ASGI scope is an HTTP request for one of the task endpoints (settings.TASK_PATH_PREFIXES)."""
    if scope["type"] != "http":
        return False
    path = scope["path"]
    root = scope.get("root_path", "")
    if root:
        if not path.startswith(root):
            return False
        path = path[len(root) :]
    return path.startswith(settings.TASK_PATH_PREFIXES)


async def _run_in_order(work: list) -> None:
    for job in work:
        try:
            await job()
        except Exception:
            logger.exception("Work after the response failed: %r", job)


class TaskASGIHandler(ASGIHandler):
    """Django's ASGI handler with settings.TASK_MIDDLEWARE, without thread trips of its own.

    Every middleware must be async-capable; a sync-only one would bring back the thread trips this is for, so
    it is refused at start-up.
    """

    def __init__(self):
        self._resolved = {}
        super().__init__()

    def load_middleware(self, is_async=True):
        if not is_async:
            raise ImproperlyConfigured("TaskASGIHandler is asynchronous only")
        self._view_middleware = []
        self._template_response_middleware = []
        self._exception_middleware = []
        handler = convert_exception_to_response(self._get_response_async)
        for path in reversed(settings.TASK_MIDDLEWARE):
            middleware = import_string(path)
            if not getattr(middleware, "async_capable", False):
                raise ImproperlyConfigured(f"TASK_MIDDLEWARE: {path} is not async-capable")
            instance = middleware(handler)
            if not iscoroutinefunction(instance):
                raise ImproperlyConfigured(f"TASK_MIDDLEWARE: {path} did not run in async mode")
            for hook in ("process_view", "process_template_response", "process_exception"):
                if hasattr(instance, hook):
                    raise ImproperlyConfigured(f"TASK_MIDDLEWARE: {path} has {hook}, which this handler does not run")
            handler = convert_exception_to_response(instance)
        self._middleware_chain = handler

    def resolve_request(self, request):
        """Django's URL resolution, remembered per path: the task paths have no parameters, so a path always
        resolves to the same view (only paths that resolve are remembered, at most a few dozen)."""
        match = self._resolved.get(request.path_info)
        if match is None:
            match = super().resolve_request(request)
            if len(self._resolved) < 64 and not match.args and not match.kwargs:
                self._resolved[request.path_info] = match
        request.resolver_match = match
        return match

    @staticmethod
    async def after_response(request) -> None:
        """Run what the view left for after the response (`request.after_response`, callables returning
        awaitables), in order and to the end even if the client goes away meanwhile. A failure is logged (with
        the request id), not raised: the client has its answer already."""
        if request.after_response:
            await shielded(_run_in_order(request.after_response))

    async def listen_for_disconnect(self, receive):
        """Django's, returning when the client goes away instead of raising `RequestAborted`: uvicorn reports a
        disconnect as soon as each response is complete, so on this path that exception (its traceback holding
        the request, the response and the tasks in a reference cycle) was raised for every request, and only the
        garbage collector's full collections freed it: ~45 objects a request, and longer pauses of the loop."""
        message = await receive()
        if message["type"] != "http.disconnect":
            raise AssertionError(f"Invalid ASGI message after request body: {message['type']}")

    async def __call__(self, scope, receive, send):
        # No ThreadSensitiveContext: nothing on this path runs thread-sensitive sync code, and the context would
        # start a thread per request for it.
        await self.handle(scope, receive, send)

    async def handle(self, scope, receive, send):
        """Django's `ASGIHandler.handle` without the signals and with the response closed inline.

        Like Django's, it watches for the client going away while the view runs and then cancels the view (the
        task views record the attempt as aborted).
        """
        try:
            body_file = await self.read_body(receive)
        except RequestAborted:
            return
        set_script_prefix(get_script_prefix(scope))
        request, error_response = self.create_request(scope, body_file)
        if request is None:
            body_file.close()
            task_response_observe(None, error_response)
            await self.send_response(error_response, send)
            error_response.close()
            return
        # What the views leave for after the response (tasks.router.record: saving the usage row).
        request.after_response = []
        sent = asyncio.Event()

        async def process_request(request, send):
            response = await self.run_get_response(request)
            task_response_observe(request, response)
            with contextlib.suppress(asyncio.CancelledError):  # the client went away during the send
                await self.send_response(response, send)
            sent.set()
            await self.after_response(request)
            return response

        tasks = [
            asyncio.create_task(self.listen_for_disconnect(receive)),
            asyncio.create_task(process_request(request, send)),
        ]
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in tasks:
            if task.done():
                try:
                    task.result()
                except AssertionError:
                    body_file.close()
                    raise
            elif task is tasks[1] and sent.is_set():
                # The "disconnect" came after the answer (uvicorn reports one as soon as a response is
                # complete): the work left for after the response goes on to its end.
                await task
            else:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        try:
            response = tasks[1].result()
        except asyncio.CancelledError:
            pass
        else:
            # Closing runs the response's resource closers (and the request_finished receivers, which have
            # nothing to do on this thread); none blocks, so no thread is needed.
            response.close()
        body_file.close()
