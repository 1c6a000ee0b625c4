"""ASGI entry point: the task endpoints take the lean path (runtime.asgi), everything else Django's handler;
around both, the body limit (aditus.body_limit)."""

import gc
import os

from django.core.asgi import get_asgi_application
from django.core.handlers.asgi import ASGIHandler
from django.core.signals import request_finished
from django.db import connections

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "aditus.settings")
django_application = get_asgi_application()  # sets Django up

from django.conf import settings  # noqa: E402
from django.urls import reverse  # noqa: E402

from aditus.body_limit import BodyLimit, Limit  # noqa: E402
from runtime.asgi import LeanASGIHandler, lifespan  # noqa: E402 - needs Django set up
from usage.metrics import task_response_observe  # noqa: E402
from usage.pricing import prices_load  # noqa: E402

task_application = LeanASGIHandler(
    path_prefixes=settings.TASK_PATH_PREFIXES, middleware=settings.TASK_MIDDLEWARE, observe=task_response_observe
)


def _close_the_requests_connections(**kwargs) -> None:
    """Close the database connections a request served by Django's ASGI handler opened.

    That handler runs each request's sync code in a thread of the request's own (asgiref's
    ThreadSensitiveContext), so a connection is never used again after its request, whatever CONN_MAX_AGE
    says, yet was left open: Django's wrapper of it sits in reference cycles, so only a garbage collection
    closed it. With the collector tuned below, 150 admin and API requests left enough of them open to exhaust
    PostgreSQL's 100 connections. Connected to request_finished from Django's handler only (the task
    endpoints' lean handler and the database threads keep theirs), and run where
    Django runs it: in the request's thread, after the response.
    """
    connections.close_all()


request_finished.connect(_close_the_requests_connections, sender=ASGIHandler, dispatch_uid="aditus.asgi.close")


def _load_what_lives_as_long_as_the_process() -> None:
    """Load now what every recorded call would load and keep: genai-prices' price table (~50,000 objects).
    Loaded before `gc.freeze()`, it is frozen with the rest; loaded by a request, it stayed in the oldest
    generation, which every full collection walks, at 256 clients of a 1 s provider pausing the event loop
    for 110-160 ms several times in 10 s. (The provider SDKs are left to load on first use: loading all three
    up front cost ~50 MB a process, for providers a deployment may not use.)"""
    prices_load()


# Freeze what start-up made (Django, the SDKs, the URL conf: ~180,000 objects that live as long as the process), so
# the garbage collector never walks them again: each full collection used to take 80-95 ms of CPU, a pause every
# request in flight waited out.
_load_what_lives_as_long_as_the_process()
gc.collect()
gc.freeze()

# Collect the youngest generation after 20,000 net new container objects instead of 700. The collector only
# frees reference cycles, and a served call leaves none (the objects of a call die by reference counting when it
# ends); what it did at 700 was walk the calls still in flight, over and over: at 256 clients of a 1 s provider
# ~50 young, ~5 middle and 0.4 full collections a second, the full ones pausing the event loop for 45-90 ms, and
# the requests that waited them out came back together and queued. At 20,000 the in-flight calls' comings and
# goings never add up to a collection: throughput through aditus rose from 229-236 to 237-238 req/s, the same
# as straight from the fake (benchmarks/gateway.py's scenario, alternated runs). Garbage that does have cycles
# (a failed call's exception and traceback) still triggers a collection once 20,000 such objects accumulate:
# with every call failing at 64 clients, ~1 collection a second of ~11 ms, and RSS 153 MB against 149 MB at 700
# (267 MB without collecting at all).
YOUNG_GENERATION_THRESHOLD = 20_000
gc.set_threshold(YOUNG_GENERATION_THRESHOLD)


async def route(scope, receive, send):
    if scope["type"] == "lifespan":
        return await lifespan(scope, receive, send)
    if task_application.handles(scope):
        return await task_application(scope, receive, send)
    return await django_application(scope, receive, send)


# The outermost layer: a body over its limit is refused before anything above reads it.
application = BodyLimit(
    route,
    default=Limit(settings.MAX_REQUEST_BODY_BYTES, "MAX_REQUEST_BODY_BYTES"),
    by_path={
        reverse("tasks:job-image-validate"): Limit(
            settings.TASK_MAX_IMAGE_BYTES + settings.MULTIPART_OVERHEAD_BYTES,
            f"TASK_MAX_IMAGE_BYTES and {settings.MULTIPART_OVERHEAD_BYTES} bytes for the multipart form around it",
        )
    },
)
