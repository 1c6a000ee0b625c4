"""ASGI entry point: the task endpoints take a lean path (aditus.task_handler), everything else Django's handler."""

import gc
import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "aditus.settings")
django_application = get_asgi_application()  # sets Django up

from aditus.task_handler import TaskASGIHandler, is_task_path  # noqa: E402 - needs Django set up
from usage.pricing import prices_load  # noqa: E402

task_application = TaskASGIHandler()


def _load_what_lives_as_long_as_the_process() -> None:
    """Load now what every recorded call would load and keep: genai-prices' price table (~50,000 objects).
    Loaded before `gc.freeze()`, it is frozen with the rest; loaded by a request, it stayed in the oldest
    generation, which every full collection walks, at 256 clients of a 1 s provider pausing the event loop
    for 110-160 ms several times in 10 s. (The provider SDKs are left to load on first use: loading all three
    up front cost ~50 MB a process, for providers a deployment may not use.)"""
    prices_load()


# Freeze what start-up made (Django, the SDKs, the URL conf: ~180,000 objects that live as long as the process), so
# the garbage collector never walks them again: each full collection used to take 80-95 ms of CPU, a pause every
# request in flight waited out. (A higher gen0 threshold saved another ~0.1 ms per call but held more garbage:
# 256 slow calls in flight grew the process past 280 MB, measured with benchmarks/gateway.py.)
_load_what_lives_as_long_as_the_process()
gc.collect()
gc.freeze()


async def application(scope, receive, send):
    if is_task_path(scope):
        return await task_application(scope, receive, send)
    return await django_application(scope, receive, send)
