"""ASGI entry point: the task endpoints take a lean path (aditus.task_handler), everything else Django's handler."""

import gc
import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "aditus.settings")
django_application = get_asgi_application()  # sets Django up

from aditus.task_handler import TaskASGIHandler, is_task_path  # noqa: E402 - needs Django set up

task_application = TaskASGIHandler()

# The garbage collector, tuned for a server process (measured under load: benchmarks/gateway.py).
# - Freeze what start-up made (Django, the SDKs, the URL conf: ~180,000 objects that live as long as the
#   process): the collector then never walks them again. Each full collection used to take 80-95 ms of CPU,
#   a pause that every request in flight waited out.
# - Collect the youngest generation after 20,000 net allocations instead of 700: one call allocates a few
#   thousand short-lived objects (request, SDK request and response, JSON) that reference counting frees anyway,
#   and the default made about one collection of 0.6 ms every dozen calls. Reference cycles are still
#   collected, a little later.
gc.collect()
gc.freeze()
gc.set_threshold(20_000, 50, 100)


async def application(scope, receive, send):
    if is_task_path(scope):
        return await task_application(scope, receive, send)
    return await django_application(scope, receive, send)
