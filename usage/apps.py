from django.apps import AppConfig

# psycopg converts a query's `%s` placeholders with a regular expression, and caches the result only for queries
# of up to 4096 bytes and 50 parameters (psycopg._queries). The message `usage.services.attempt_record` sends on
# PostgreSQL (the usage row, the settlement and both rollups in one round trip) is about 11 KB with 128
# parameters, so without a larger bound it was split again on every provider call: about 0.6 ms of CPU, a fifth
# of the gateway's budget. The cache stays bounded (psycopg's lru_cache keeps 128 queries).
PSYCOPG_CACHED_QUERY_BYTES = 32 * 1024
PSYCOPG_CACHED_QUERY_PARAMS = 512


def psycopg_query_cache_widen() -> None:
    try:
        from psycopg import _queries
    except ImportError:  # SQLite only: nothing to tune
        return
    _queries.MAX_CACHED_STATEMENT_LENGTH = max(_queries.MAX_CACHED_STATEMENT_LENGTH, PSYCOPG_CACHED_QUERY_BYTES)
    _queries.MAX_CACHED_STATEMENT_PARAMS = max(_queries.MAX_CACHED_STATEMENT_PARAMS, PSYCOPG_CACHED_QUERY_PARAMS)


class UsageConfig(AppConfig):
    name = "usage"

    def ready(self):
        from django.db.models.signals import post_migrate, pre_migrate

        from usage.seed_views import create_after_migrating, drop_before_migrating

        psycopg_query_cache_widen()
        # The seed's ai_provider_usage_logs view: out of the way while migrations run, back after (usage.seed_views).
        pre_migrate.connect(drop_before_migrating, sender=self, dispatch_uid="usage.seed_views.drop")
        post_migrate.connect(create_after_migrating, sender=self, dispatch_uid="usage.seed_views.create")
