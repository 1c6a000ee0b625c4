"""The runtime floor: what serves the task endpoints fast and knows no app.

    asgi     the lean ASGI path of the task endpoints (a short, fully asynchronous middleware stack)
    db       statements from the event loop: psycopg's pool and pipeline on PostgreSQL, a thread on SQLite
    threads  the thread pool for the sync work the request path still has (sessions, SQLite)
    batches  work of many requests in one trip (the usage rows saved after their responses)
    aio      small asyncio helpers

Nothing here imports an app: the apps hand it what it needs (`aditus.asgi` wires the ASGI path).
"""
