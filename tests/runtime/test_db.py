"""runtime.db: the same statements on both databases, and its one reach into a library's private module."""

import asyncio

import pytest
from django.db import connection

from runtime import db

pytestmark = pytest.mark.django_db(transaction=True)


def test_psycopgs_query_cache_bounds_are_where_runtime_db_widens_them():
    from psycopg import _queries

    assert _queries.MAX_CACHED_STATEMENT_LENGTH >= db.CACHED_QUERY_BYTES
    assert _queries.MAX_CACHED_STATEMENT_PARAMS >= db.CACHED_QUERY_PARAMETERS


def test_statements_run_in_order_in_one_transaction_and_return_their_rows():
    from usage.models import Receipt

    async def scenario():
        async with db.pooled():
            return await db.execute(
                [
                    ("INSERT INTO usage_receipt (id, created_at) VALUES (%s, %s)", [7, "2026-12-04T10:00:00Z"]),
                    ("SELECT id FROM usage_receipt WHERE id = %(id)s", {"id": 7}),
                ]
            )

    assert asyncio.run(scenario()) == [[], [(7,)]]
    assert Receipt.objects.get().pk == 7


def test_a_failed_statement_undoes_the_ones_before_it_and_is_a_django_error():
    from django.db import IntegrityError

    from usage.models import Receipt

    async def scenario():
        await db.execute(
            [
                ("INSERT INTO usage_receipt (id, created_at) VALUES (%s, %s)", [8, "2026-12-04T10:00:00Z"]),
                ("INSERT INTO usage_receipt (id, created_at) VALUES (%s, %s)", [8, "2026-12-04T10:00:00Z"]),
            ]
        )

    with pytest.raises(IntegrityError):
        asyncio.run(scenario())
    assert not Receipt.objects.exists()


def test_for_update_is_dropped_on_sqlite_and_kept_on_postgresql():
    async def scenario():
        return await db.execute([("SELECT 1 FOR UPDATE", [])])

    assert asyncio.run(scenario()) == [[(1,)]]
    assert connection.vendor in ("sqlite", "postgresql")


@pytest.mark.skipif(connection.vendor != "postgresql", reason="prepared statements: PostgreSQL only")
def test_a_statement_is_prepared_once_per_connection_and_again_after_the_connection_lost_it(settings):
    async def scenario():
        async with db.pooled():
            first = await db.execute([("SELECT %s::int + 1", [1])])
            again = await db.execute([("SELECT %s::int + 1", [2])])
            [[(prepared,)]] = await db.execute([("SELECT count(*) FROM pg_prepared_statements", [])])
            settings.DATABASE_PREPARED_STATEMENTS = False  # DEALLOCATE cannot itself be prepared
            await db.execute([("DEALLOCATE ALL", [])])  # as a pooler or an operator might
            settings.DATABASE_PREPARED_STATEMENTS = True
            after = await db.execute([("SELECT %s::int + 1", [3])])
            return first, again, prepared, after

    first, again, prepared, after = asyncio.run(scenario())

    assert (first, again, after) == ([[(2,)]], [[(3,)]], [[(4,)]])
    assert prepared >= 2  # this statement and the count itself
