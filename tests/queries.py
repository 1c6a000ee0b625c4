"""Reading the SQL a block of code sent, for tests that check it."""

from django.test.utils import CaptureQueriesContext


def sent_queries(context: CaptureQueriesContext) -> list[str]:
    """Each query `context` captured, as sent."""
    return [query["sql"] for query in context.captured_queries]


def terminate_backend(pid: int) -> None:
    """End a PostgreSQL session from another one (as a server restart or an idle timeout would), over a
    connection of its own, usable from inside an event loop."""
    import psycopg
    from django.db import connection

    params = connection.get_connection_params()
    params.pop("cursor_factory")
    with psycopg.connect(**params, autocommit=True) as other:
        other.execute("SELECT pg_terminate_backend(%s)", [pid])
