"""The lean ASGI path: some views behind a short, fully asynchronous middleware stack.

Under ASGI, Django runs every hook of a `MiddlewareMixin` middleware (sessions, CSRF, auth, OTP, messages, ...)
through `sync_to_async`, i.e. a trip to a thread and back per hook, and its handler adds three more per request
(the request_started and request_finished signals, and closing the response, each in a thread made for the
request). For the task endpoints that was about 2-3 ms of CPU per call, most of the gateway's budget
(benchmarks/results/ablation.md measures what this path buys today).

`LeanASGIHandler` serves the paths it is given with the middleware it is given (every one async-capable, and
without view, template-response or exception hooks, which it does not run; anything else is refused at
start-up). Its views authenticate themselves. Views may leave work for after the response
(`request.after_response`, callables returning awaitables): it runs once the response is sent, before the
request ends, and to its end even if the client goes away. `observe(request, response)` is called with every
response (None for a request that could not be built), for the project's metrics.

The request_started / request_finished receivers only reset the query log and close this thread's database
connections and caches, which this path never opens (its database work runs through `runtime.db`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable

from asgiref.sync import iscoroutinefunction, sync_to_async
from django.core.exceptions import ImproperlyConfigured, RequestAborted
from django.core.handlers.asgi import ASGIHandler, get_script_prefix
from django.core.handlers.exception import convert_exception_to_response
from django.urls import set_script_prefix
from django.utils.log import log_response
from django.utils.module_loading import import_string

from runtime.aio import shielded

logger = logging.getLogger(__name__)

Observer = Callable[[object, object], None]


async def _run_in_order(work: list) -> None:
    for job in work:
        try:
            await job()
        except Exception:
            logger.exception("Work after the response failed: %r", job)


class LeanASGIHandler(ASGIHandler):
    """Django's ASGI handler with its own middleware list and no thread trips. Uses only Django's public
    handler methods (`read_body`, `create_request`, `resolve_request`, `send_response`)."""

    def __init__(self, *, path_prefixes: Iterable[str], middleware: Iterable[str], observe: Observer):
        self.path_prefixes = tuple(path_prefixes)
        self.middleware = list(middleware)
        self.observe = observe
        self._resolved = {}
        super().__init__()

    def handles(self, scope) -> bool:
        """Whether an ASGI scope is an HTTP request under one of `path_prefixes`."""
        if scope["type"] != "http":
            return False
        path = scope["path"]
        root = scope.get("root_path", "")
        if root:
            if not path.startswith(root):
                return False
            path = path[len(root) :]
        return path.startswith(self.path_prefixes)

    def load_middleware(self, is_async=True):
        if not is_async:
            raise ImproperlyConfigured("LeanASGIHandler is asynchronous only")
        handler = convert_exception_to_response(self.view_response)
        for path in reversed(self.middleware):
            middleware = import_string(path)
            if not getattr(middleware, "async_capable", False):
                raise ImproperlyConfigured(f"{path} is not async-capable")
            instance = middleware(handler)
            if not iscoroutinefunction(instance):
                raise ImproperlyConfigured(f"{path} did not run in async mode")
            for hook in ("process_view", "process_template_response", "process_exception"):
                if hasattr(instance, hook):
                    raise ImproperlyConfigured(f"{path} has {hook}, which LeanASGIHandler does not run")
            handler = convert_exception_to_response(instance)
        self.chain = handler

    def resolve_request(self, request):
        """Django's URL resolution, remembered per path: the lean paths have no parameters, so a path always
        resolves to the same view (only paths that resolve are remembered, at most a few dozen)."""
        match = self._resolved.get(request.path_info)
        if match is None:
            match = super().resolve_request(request)
            if len(self._resolved) < 64 and not match.args and not match.kwargs:
                self._resolved[request.path_info] = match
        request.resolver_match = match
        return match

    async def view_response(self, request):
        """The innermost handler: the resolved view's response (a sync view runs in a thread)."""
        callback, args, kwargs = self.resolve_request(request)
        if not iscoroutinefunction(callback):
            callback = sync_to_async(callback, thread_sensitive=False)
        response = await callback(request, *args, **kwargs)
        self.check_response(response, callback)
        return response

    async def get_response_async(self, request):
        response = await self.chain(request)
        if response.status_code >= 400:
            log_response("%s: %s", response.reason_phrase, request.path, response=response, request=request)
        return response

    async def listen_for_disconnect(self, receive):
        """Django's, returning when the client goes away instead of raising `RequestAborted`: uvicorn reports a
        disconnect as soon as each response is complete, so that exception (its traceback holding the request,
        the response and the tasks in a reference cycle) was raised for every request, and only the garbage
        collector's full collections freed it."""
        message = await receive()
        if message["type"] != "http.disconnect":
            raise AssertionError(f"Invalid ASGI message after request body: {message['type']}")

    async def __call__(self, scope, receive, send):
        # No ThreadSensitiveContext: nothing on this path runs thread-sensitive sync code, and the context would
        # start a thread per request for it.
        await self.handle(scope, receive, send)

    async def handle(self, scope, receive, send):
        """Django's `ASGIHandler.handle` without the signals, and with the response closed inline.

        Like Django's, it watches for the client going away while the view runs and then cancels the view.
        """
        try:
            body_file = await self.read_body(receive)
        except RequestAborted:
            return
        set_script_prefix(get_script_prefix(scope))
        request, error_response = self.create_request(scope, body_file)
        if request is None:
            body_file.close()
            self.observe(None, error_response)
            await self.send_response(error_response, send)
            error_response.close()
            return
        request.after_response = []
        sent = asyncio.Event()

        async def process_request(request, send):
            response = await self.get_response_async(request)
            self.observe(request, response)
            with contextlib.suppress(asyncio.CancelledError):  # the client went away during the send
                await self.send_response(response, send)
            sent.set()
            if request.after_response:
                await shielded(_run_in_order(request.after_response))
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
            # Closing runs the response's resource closers; none blocks, so no thread is needed.
            response.close()
        request.close()
        body_file.close()


async def lifespan(scope, receive, send) -> None:
    """The ASGI lifespan protocol, as uvicorn speaks it: the serving loop's database pool is opened at start-up
    and closed at shutdown, while the loop still runs its tasks (`runtime.db.pool_open`)."""
    from runtime import db

    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            try:
                await db.pool_open()
            except Exception as error:  # noqa: BLE001 - reported to the server, which then exits
                await send({"type": "lifespan.startup.failed", "message": f"database pool: {error}"})
                return
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await db.pool_close()
            await send({"type": "lifespan.shutdown.complete"})
            return
