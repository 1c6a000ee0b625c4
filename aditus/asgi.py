"""ASGI entry point: the task endpoints take a lean path (aditus.task_handler), everything else Django's handler."""

import gc
import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "aditus.settings")
django_application = get_asgi_application()  # sets Django up

from aditus.task_handler import TaskASGIHandler, is_task_path  # noqa: E402 - needs Django set up

task_application = TaskASGIHandler()

# Freeze what start-up made (Django, the SDKs, the URL conf: ~180,000 objects that live as long as the process), so
# the garbage collector never walks them again: each full collection used to take 80-95 ms of CPU, a pause every
# request in flight waited out. (A higher gen0 threshold saved another ~0.1 ms per call but held more garbage:
# 256 slow calls in flight grew the process past 280 MB, measured with benchmarks/gateway.py.)
gc.collect()
gc.freeze()


async def application(scope, receive, send):
    if is_task_path(scope):
        return await task_application(scope, receive, send)
    return await django_application(scope, receive, send)
