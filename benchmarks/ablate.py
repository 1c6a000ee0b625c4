"""aditus's ASGI application with one bespoke piece swapped for its idiomatic counterpart, for the ablation.

`benchmarks/gateway.py --ablate PIECE` serves `benchmarks.ablate:application` with ADITUS_ABLATE=PIECE; the
report of each piece, next to a run of the unchanged application, says what the piece buys
(`benchmarks/ablation.py` runs them all and writes `benchmarks/results/ablation.md`). Never used in production.

    lean_path          the task endpoints through Django's own ASGI handler and the full MIDDLEWARE
                       (runtime.asgi replaced)
    batches            each usage row saved in a transaction of its own (runtime.batches replaced)
    gc_tuning          the garbage collector as Python sets it (aditus.asgi's freeze and threshold undone)
    aiohttp_transport  the SDKs on httpx2's own async transport (providers.clients.pool's aiohttp one replaced)
"""

from __future__ import annotations

import gc
import os

from aditus import asgi
from aditus.asgi import django_application, lifespan

PIECES = ("lean_path", "batches", "gc_tuning", "aiohttp_transport")
piece = os.environ.get("ADITUS_ABLATE", "")
if piece not in PIECES:
    raise RuntimeError(f"ADITUS_ABLATE must be one of {', '.join(PIECES)}, not {piece!r}")

application = asgi.application

if piece == "lean_path":

    async def application(scope, receive, send):  # noqa: F811 - the point of the module
        if scope["type"] == "lifespan":
            return await lifespan(scope, receive, send)
        return await django_application(scope, receive, send)

elif piece == "batches":
    from tasks import router
    from usage.metrics import attempt_observe
    from usage.services import attempts_save_async

    async def attempt_saved_alone(attempt, *, patient: bool = False):
        attempt_observe(attempt.record)
        [saved] = await attempts_save_async([attempt])
        if isinstance(saved, Exception):
            raise saved
        return saved

    router.attempt_save_async = attempt_saved_alone

elif piece == "gc_tuning":
    gc.unfreeze()
    gc.set_threshold(700, 10, 10)

elif piece == "aiohttp_transport":
    import httpx2

    from providers.clients.pool import HttpPool

    def plain_async_client(self) -> httpx2.AsyncClient:
        return httpx2.AsyncClient(event_hooks=self._async_event_hooks, **self._options())

    HttpPool._new_async_client = plain_async_client
