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
        psycopg_query_cache_widen()
