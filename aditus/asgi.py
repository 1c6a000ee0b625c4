"""ASGI entry point: the task endpoints take a lean path (aditus.task_handler), everything else Django's handler."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "aditus.settings")
django_application = get_asgi_application()  # sets Django up

from aditus.task_handler import TaskASGIHandler, is_task_path  # noqa: E402 - needs Django set up

task_application = TaskASGIHandler()


async def application(scope, receive, send):
    if is_task_path(scope):
        return await task_application(scope, receive, send)
    return await django_application(scope, receive, send)
