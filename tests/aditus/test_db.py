"""aditus.db: several statements in one round trip, and statements prepared once per connection (PostgreSQL)."""

import asyncio
import uuid

import psycopg
import pytest
from django.db import connection, connections, transaction
from django.test.utils import CaptureQueriesContext

from aditus import db as aditus_db
from aditus.db import (
    _loop_connection,
    prepared,
    results_in_one_message,
    results_in_one_message_async,
    statement_sources,
)
from tests.queries import terminate_backend

postgresql_only = pytest.mark.skipif(connection.vendor != "postgresql", reason="PostgreSQL only")

# Statements no other code sends; ADD_ONCE differs in every run of this module, so the first test's use of it is
# its first use on the connection whatever ran before.
ADD = "SELECT %s::int + %s::int, '100%%'"
ADD_ONCE = f"{ADD} /* {uuid.uuid4().hex} */"
NAMED = "SELECT %(b)s::int - %(a)s::int, %(a)s::int * 2"


def run(sql, params):
    with connection.cursor() as cursor:
        cursor.execute(*prepared(sql, params))
        return cursor.fetchall()


@postgresql_only
@pytest.mark.django_db
def test_a_statement_is_prepared_on_first_use_and_executed_after():
    with CaptureQueriesContext(connection) as first:
        assert run(ADD_ONCE, [2, 3]) == [(5, "100%")]
    with CaptureQueriesContext(connection) as second:
        assert run(ADD_ONCE, [4, 5]) == [(9, "100%")]

    prepare, execute = (query["sql"] for query in first.captured_queries)
    assert prepare.startswith("PREPARE aditus_") and "$1::int + $2::int, '100%'" in prepare
    assert execute.startswith("EXECUTE aditus_") and execute.endswith("(2, 3)")
    [again] = (query["sql"] for query in second.captured_queries)
    assert again.startswith("EXECUTE aditus_") and again.endswith("(4, 5)")
    assert statement_sources(again) == ADD_ONCE


@postgresql_only
@pytest.mark.django_db
def test_named_parameters_are_numbered_once_each():
    assert run(NAMED, {"a": 3, "b": 10}) == [(7, 6)]
    assert run(NAMED, {"b": 1, "a": 5}) == [(-4, 10)]


@postgresql_only
@pytest.mark.django_db(transaction=True)
def test_a_new_connection_prepares_again_and_a_rollback_keeps_what_was_prepared():
    with pytest.raises(ZeroDivisionError), transaction.atomic():
        assert run(ADD, [1, 1]) == [(2, "100%")]  # prepared inside a transaction that is then rolled back
        raise ZeroDivisionError
    with CaptureQueriesContext(connection) as context:
        assert run(ADD, [1, 2]) == [(3, "100%")]
    assert [query["sql"].split()[0] for query in context.captured_queries] == ["EXECUTE"]

    connection.close()
    with CaptureQueriesContext(connection) as context:
        assert run(ADD, [2, 2]) == [(4, "100%")]
    assert [query["sql"].split()[0] for query in context.captured_queries] == ["PREPARE", "EXECUTE"]


@postgresql_only
@pytest.mark.django_db
def test_one_message_of_prepared_statements_returns_each_result():
    results = results_in_one_message([(ADD, [1, 2]), ("SELECT %s::int - %s::int", [9, 4])])

    assert results == [[(3, "100%")], [(5,)]]


@pytest.mark.django_db
def test_without_prepared_statements_the_sql_is_sent_as_it_is(settings):
    settings.DATABASE_PREPARED_STATEMENTS = False
    plain = "SELECT %s + %s, '100%%'"

    assert prepared(plain, [1, 2]) == (plain, [1, 2])
    assert run(plain, [1, 2]) == [(3, "100%")]


def test_statement_sources_leave_other_sql_alone():
    assert statement_sources("SELECT 1; EXECUTE someone_elses(1)") == "SELECT 1; EXECUTE someone_elses(1)"


@postgresql_only
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("reset", ["DEALLOCATE ALL", "DISCARD ALL"])
def test_statements_the_connection_lost_are_prepared_again(reset):
    assert results_in_one_message([(ADD, [1, 2])]) == [[(3, "100%")]]
    with connection.cursor() as cursor:
        cursor.execute(reset)  # as a pooler resetting the session would

    with CaptureQueriesContext(connection) as context:
        assert results_in_one_message([(ADD, [2, 2])]) == [[(4, "100%")]]

    sent = [query["sql"].split()[0] for query in context.captured_queries]
    assert sent == ["EXECUTE", "DEALLOCATE", "PREPARE", "EXECUTE"]
    connection.close()  # DISCARD ALL also reset the session settings Django made when it connected


@postgresql_only
@pytest.mark.django_db
def test_inside_a_transaction_a_lost_statement_is_an_error():
    from django.db import DatabaseError

    results_in_one_message([(ADD, [1, 2])])
    with connection.cursor() as cursor:
        cursor.execute("DEALLOCATE ALL")

    with pytest.raises(DatabaseError, match="does not exist"), transaction.atomic():
        results_in_one_message([(ADD, [2, 2])])
    aditus_db._forget_prepared()  # leave the connection as later tests expect it


# --- From the event loop ----------------------------------------------------------------------------------------


@postgresql_only
@pytest.mark.django_db(transaction=True)
def test_statements_go_from_the_event_loop_in_one_message_each_prepared_once_per_connection():
    async def scenario():
        first = await results_in_one_message_async(
            [(ADD, [2, 3]), ("SELECT 1 WHERE false", []), (NAMED, {"a": 1, "b": 5})]
        )
        driver = await _loop_connection()
        prepared_here = {
            row[0] for row in await (await driver.execute("SELECT name FROM pg_prepared_statements")).fetchall()
        }
        second = await results_in_one_message_async([(ADD, [4, 5])])
        return first, second, prepared_here, driver

    first, second, prepared_here, driver = asyncio.run(scenario())

    assert first == [[(5, "100%")], [], [(4, 2)]]
    assert second == [[(9, "100%")]]
    assert {aditus_db._statements[ADD].name, aditus_db._statements[NAMED].name} <= prepared_here
    assert driver.closed  # with its event loop


async def used_loop_connection() -> psycopg.AsyncConnection:
    """The running loop's connection, after a first statement over it."""
    await results_in_one_message_async([(ADD, [1, 1])])
    return await _loop_connection()


@postgresql_only
@pytest.mark.django_db(transaction=True)
def test_a_loop_connection_that_lost_its_prepared_statements_prepares_them_again():
    async def scenario():
        driver = await used_loop_connection()
        await driver.execute("DEALLOCATE ALL")  # as a pooler's DISCARD ALL would
        return await results_in_one_message_async([(ADD, [2, 2])])

    assert asyncio.run(scenario()) == [[(4, "100%")]]


@postgresql_only
@pytest.mark.django_db(transaction=True)
def test_a_loop_connection_that_broke_fails_once_and_is_opened_again():
    async def scenario():
        broken = await used_loop_connection()
        terminate_backend(broken.info.backend_pid)  # as a server restart would
        with pytest.raises(psycopg.OperationalError):
            await results_in_one_message_async([(ADD, [1, 1])])
        again = await results_in_one_message_async([(ADD, [3, 3])])
        return again, broken, await _loop_connection()

    again, broken, driver = asyncio.run(scenario())
    assert again == [[(6, "100%")]]
    assert broken.closed and driver is not broken


@postgresql_only
@pytest.mark.django_db(transaction=True)
def test_a_loop_connection_past_conn_max_age_is_replaced():
    async def scenario():
        first = await used_loop_connection()
        await asyncio.sleep(1.1)
        assert await results_in_one_message_async([(ADD, [1, 2])]) == [[(3, "100%")]]
        return first, await _loop_connection()

    old = connections["default"].settings_dict["CONN_MAX_AGE"]
    connections["default"].settings_dict["CONN_MAX_AGE"] = 1
    try:
        first, then = asyncio.run(scenario())
    finally:
        connections["default"].settings_dict["CONN_MAX_AGE"] = old
    assert first.closed and then is not first


@postgresql_only
@pytest.mark.django_db(transaction=True)
def test_messages_sent_at_once_over_one_loop_connection_prepare_each_statement_once():
    # Both calls find the loop's connections unopened and share the first one; both need the same statement
    # prepared. Only the first may send its PREPARE (the second's would fail: "already exists").
    statement = f"{ADD} /* {uuid.uuid4().hex} */"

    async def scenario():
        return await asyncio.gather(*(results_in_one_message_async([(statement, [number, 1])]) for number in range(4)))

    assert asyncio.run(scenario()) == [[[(number + 1, "100%")]] for number in range(4)]
