"""Database helpers."""

from __future__ import annotations

from collections.abc import Sequence

from django.db import connection


def results_in_one_message(statements: Sequence[tuple[str, Sequence]]) -> list[list[tuple] | None]:
    """PostgreSQL: run `statements` (SQL, parameters) as one message, in one round trip; return each one's rows
    (None for a statement that returns none).

    PostgreSQL runs the statements of one simple-protocol message as one transaction (or as part of the
    caller's, if there is one), so they commit together or not at all. Django's PostgreSQL cursors bind
    parameters on the client side, which is what lets a message hold several statements.
    """
    if connection.vendor != "postgresql":
        raise RuntimeError("results_in_one_message needs PostgreSQL")
    results: list[list[tuple] | None] = []
    sql = ";\n".join(statement for statement, _ in statements)
    with connection.cursor() as cursor:
        cursor.execute(sql, [value for _, params in statements for value in params])
        for position in range(len(statements)):
            if position and not cursor.nextset():
                raise RuntimeError("PostgreSQL returned fewer results than statements sent")
            results.append(cursor.fetchall() if cursor.description is not None else None)
    return results
