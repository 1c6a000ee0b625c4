"""The seed's `ai_provider_usage_logs` table, as a database view over the usage records.

The seed's dashboards query `ai_provider_usage_logs`; aditus keeps the same facts in `usage_usagerecord`. The view
gives them the seed's names, so the seed's SQL runs unchanged on PostgreSQL (and on SQLite with its
`NOW() - INTERVAL '30 days'` written the SQLite way). It is read-only, and `estimated_cost_usd` is in cents, as
the seed's query (`SUM(estimated_cost_usd)/100.0 AS cost_usd`) has it; NULL for an unpriced call.

It is not created by a migration: a view that depends on the table would make later migrations of that table
fail (SQLite rebuilds a table to alter it and refuses while a view names it; PostgreSQL refuses to change the type
of a column a view uses). So `migrate` drops it before it migrates anything and creates it again afterwards
(usage.apps connects both to Django's pre_migrate and post_migrate signals).
"""

from __future__ import annotations

from django.db import connections

VIEW = "ai_provider_usage_logs"
SOURCE = "usage_usagerecord"

# The view's columns, in the seed's words: (name, expression over the usage record `r`).
COLUMNS: tuple[tuple[str, str], ...] = (
    ("id", "r.id"),
    ("created_at", "r.created_at"),
    ("request_id", "r.request_id"),
    ("user_id", "r.user_id"),
    ("provider_config_id", "r.provider_config_id"),
    ("provider_type", "r.provider_type"),
    ("model_name", "r.model"),
    ("task_type", "r.task"),
    ("attempt", "r.attempt"),
    ("input_tokens", "r.input_tokens"),
    ("output_tokens", "r.output_tokens"),
    ("total_tokens", "r.input_tokens + r.output_tokens"),
    ("estimated_cost_usd", "r.cost_usd * 100"),  # cents, as the seed's query divides it by 100.0
    ("priced", "r.priced"),
    ("latency_ms", "r.latency_ms"),
    ("success", "r.outcome = 'success'"),
    ("outcome", "r.outcome"),
    ("error_type", "r.error_type"),
    ("streamed", "r.streamed"),
)


def usage_logs_view_drop(*, using: str = "default") -> None:
    """Drop the view if it exists (before migrations alter the tables under it)."""
    connection = connections[using]
    with connection.cursor() as cursor:
        cursor.execute(f"DROP VIEW IF EXISTS {connection.ops.quote_name(VIEW)}")


def usage_logs_view_create(*, using: str = "default") -> bool:
    """(Re)create the view; False, doing nothing, when the usage table does not exist (e.g. `migrate usage zero`)."""
    connection = connections[using]
    usage_logs_view_drop(using=using)
    if SOURCE not in connection.introspection.table_names():
        return False
    quote = connection.ops.quote_name
    columns = ",\n    ".join(f"{expression} AS {quote(name)}" for name, expression in COLUMNS)
    with connection.cursor() as cursor:
        cursor.execute(f"CREATE VIEW {quote(VIEW)} AS\nSELECT\n    {columns}\nFROM {quote(SOURCE)} r")
    return True


def drop_before_migrating(*, using: str = "default", **kwargs) -> None:
    usage_logs_view_drop(using=using)


def create_after_migrating(*, using: str = "default", **kwargs) -> None:
    usage_logs_view_create(using=using)
