"""Project middleware: request ids, health probes, static files and the Content-Security-Policy.

Each works in both modes (`sync_capable = async_capable = True`) and marks itself a coroutine function when the
rest of the stack is async, so that under ASGI an async view runs without a hop to a thread and back on our account.
"""

from asgiref.sync import async_to_sync, iscoroutinefunction, markcoroutinefunction, sync_to_async
from django.conf import settings
from django.http import HttpResponse
from django.middleware.clickjacking import XFrameOptionsMiddleware
from django.middleware.common import CommonMiddleware
from django.middleware.security import SecurityMiddleware
from whitenoise.middleware import WhiteNoiseMiddleware

from aditus import health
from aditus.logging import REQUEST_ID_HEADER, request_id_bind, request_id_from_header, request_id_unbind


class _BothModes:
    """Base of a middleware with a sync `call` and an async `__acall__`; Django picks the mode of the stack."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response):
        self.get_response = get_response
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)

    def __call__(self, request):
        if self.is_async:
            return self.__acall__(request)
        return self.call(request)

    def call(self, request):
        raise NotImplementedError

    async def __acall__(self, request):
        raise NotImplementedError


class RequestIdMiddleware(_BothModes):
    """Give each request an id: the caller's `X-Request-ID` if sane, else a new one.

    The id is in `aditus.logging.current_request_id()` and on every log record of the request, and is sent back in
    `X-Request-ID` unless the view has set that header itself.
    """

    def call(self, request):
        request_id = request_id_from_header(request.headers.get(REQUEST_ID_HEADER))
        token = request_id_bind(request_id)
        try:
            response = self.get_response(request)
            response.setdefault(REQUEST_ID_HEADER, request_id)
            return response
        finally:
            # WSGI threads serve one request after another: the next must not inherit this id.
            request_id_unbind(token)

    async def __acall__(self, request):
        # No reset: under ASGI each request runs in a task of its own whose context ends with it, and keeping the
        # value also tags what is logged while a streaming body is sent and the server's access line.
        request_id = request_id_from_header(request.headers.get(REQUEST_ID_HEADER))
        request_id_bind(request_id)
        response = await self.get_response(request)
        response.setdefault(REQUEST_ID_HEADER, request_id)
        return response


class HealthProbeMiddleware(_BothModes):
    """Answer /healthz and /readyz before host validation, the https redirect, sessions and CSRF.

    Orchestrators probe a container by its IP over plain http; a probe must not fail because that IP is not in
    ALLOWED_HOSTS or be redirected to https. Nothing else is skipped: the answers say only "ok" or why not.
    """

    probes = {"/healthz": health.healthz, "/readyz": health.readyz}

    def call(self, request):
        probe = self.probes.get(request.path_info)
        if probe is not None:
            return async_to_sync(probe)(request)
        return self.get_response(request)

    async def __acall__(self, request):
        probe = self.probes.get(request.path_info)
        if probe is not None:
            return await probe(request)
        return await self.get_response(request)


class StaticFilesMiddleware(WhiteNoiseMiddleware):
    """WhiteNoise, usable in an async stack.

    WhiteNoise's middleware is sync-only (6.x); in an ASGI stack Django would then run every request, not just
    static ones, through a thread and back. Here a request that is not for a static file passes straight on; a
    static file is read in a thread and sent from memory, so that Django's ASGI handler need not consume a
    synchronous file iterator (which it warns about). Static files here are small admin assets, and the hashed
    ones are cached by browsers for good.
    """

    sync_capable = True
    async_capable = True

    def __init__(self, get_response=None, settings=settings):
        super().__init__(get_response, settings=settings)
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)

    def __call__(self, request):
        if self.is_async:
            return self.__acall__(request)
        return super().__call__(request)

    async def __acall__(self, request):
        path = request.path_info
        if not self.autorefresh:
            static_file = self.files.get(path)
        elif path.startswith(self.static_prefix):
            # Development: looks on disk.
            static_file = await sync_to_async(self.find_file, thread_sensitive=False)(path)
        else:
            static_file = None
        if static_file is None:
            return await self.get_response(request)
        return await sync_to_async(self.serve_from_memory, thread_sensitive=False)(static_file, request)

    @staticmethod
    def serve_from_memory(static_file, request):
        served = static_file.get_response(request.method, request.META)
        body = b""
        if served.file is not None:
            with served.file:
                body = served.file.read()
        response = HttpResponse(body, status=int(served.status))
        del response["Content-Type"]
        for key, value in served.headers:
            response[key] = value
        return response


def inline(middleware_class):
    """Wrap a `MiddlewareMixin` middleware so that an async stack runs its hooks in the event loop.

    For middleware whose `process_request` / `process_response` do no I/O (Django's security, common and
    clickjacking middleware): without this, Django runs each hook through `sync_to_async`, a thread trip each.
    Used by the task endpoints' stack (settings.TASK_MIDDLEWARE, `runtime.asgi`).
    """

    class Inline(_BothModes):
        def __init__(self, get_response):
            super().__init__(get_response)
            self.inner = middleware_class(get_response)
            self.process_request = getattr(self.inner, "process_request", None)
            self.process_response = getattr(self.inner, "process_response", None)

        def call(self, request):
            return self.inner(request)

        async def __acall__(self, request):
            response = self.process_request(request) if self.process_request else None
            if response is None:
                response = await self.get_response(request)
            if self.process_response:
                response = self.process_response(request, response)
            return response

    Inline.__name__ = Inline.__qualname__ = f"Inline{middleware_class.__name__}"
    Inline.__module__ = __name__
    return Inline


InlineSecurityMiddleware = inline(SecurityMiddleware)
InlineCommonMiddleware = inline(CommonMiddleware)
InlineXFrameOptionsMiddleware = inline(XFrameOptionsMiddleware)


class ContentSecurityPolicyMiddleware(_BothModes):
    """Send `settings.CONTENT_SECURITY_POLICY` with every HTML response that has no policy of its own."""

    def call(self, request):
        return self._add_policy(self.get_response(request))

    async def __acall__(self, request):
        return self._add_policy(await self.get_response(request))

    @staticmethod
    def _add_policy(response):
        policy = settings.CONTENT_SECURITY_POLICY
        is_html = response.get("Content-Type", "").startswith("text/html")
        if policy and is_html and "Content-Security-Policy" not in response:
            response["Content-Security-Policy"] = policy
        return response
