"""Reading a task's candidate configs, and ordering them.

The candidates query runs on every task request, so it is hand-written SQL built once from the models' metadata
rather than an ORM query: compiling the equivalent ORM query (with its cooldown join and annotations) costs about
a millisecond of CPU here, a third of the gateway's whole budget per request, while the SQL costs a tenth of that.
Only the fields the router, the clients and `usage` read are loaded; `ProviderConfig.from_db` leaves the rest
deferred (reading one would cost a query, so nothing on the request path does).
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from django.db import connection
from django.utils import timezone

from providers.clients.base import GenerateRequest
from providers.models import TASK_FLAGS, ProviderConfig
from runtime import db
from usage.models import ProviderCooldown

_random = random.SystemRandom()

# What the request path reads of a config: endpoint(), reveal_api_key(), the router, tokens_reserve, attempt_record.
CANDIDATE_FIELDS = (
    "id",
    "provider_type",
    "display_name",
    "model_name",
    "api_key",
    "base_url",
    "priority",
    "weight",
    "daily_token_limit",
    "monthly_token_limit",
    "input_price_per_million",
    "output_price_per_million",
    "request_timeout_seconds",
)
_DECIMALS = ("input_price_per_million", "output_price_per_million")


def _candidates_sql(task: str) -> str:
    quote = connection.ops.quote_name
    meta = ProviderConfig._meta
    cooldown = ProviderCooldown._meta
    columns = ", ".join(f"c.{quote(meta.get_field(name).column)}" for name in CANDIDATE_FIELDS)
    flag = quote(meta.get_field(TASK_FLAGS[task]).column)
    config_fk = quote(cooldown.get_field("provider_config").column)
    # Only identifiers from the models' metadata go into the string; the values are parameters.
    return (
        f"SELECT {columns}, d.{quote('until')}, d.{quote('consecutive_failures')} "  # noqa: S608
        f"FROM {quote(meta.db_table)} c LEFT JOIN {quote(cooldown.db_table)} d ON d.{config_fk} = c.{quote('id')} "
        f"WHERE c.{quote('is_active')} = %s AND c.{flag} = %s "
        f"ORDER BY c.{quote('priority')}, c.{quote('id')}"
    )


_SQL: dict[str, str] = {}


@dataclass(frozen=True, slots=True)
class CandidateConfig:
    config: ProviderConfig
    cooling_until: datetime | None  # set only while the config is cooling down
    known_failures: int  # consecutive failures when read; passed on to attempt_record

    @property
    def priority(self) -> int:
        return self.config.priority

    @property
    def weight(self) -> int:
        return self.config.weight


def candidate_configs(task: str, *, now: datetime | None = None) -> list[CandidateConfig]:
    """The active configs serving `task`, by priority, with their cooldowns. One query."""
    sql, params = candidates_query(task)
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        rows = cursor.fetchall()
    return candidates_from_rows(rows, now=now)


def candidates_query(task: str) -> tuple[str, list]:
    """The candidates query for `task` (SQL and parameters), for a caller that sends it together with other
    statements; hand its rows to `candidates_from_rows`."""
    sql = _SQL.get(task)
    if sql is None:
        sql = _SQL[task] = _candidates_sql(task)
    return sql, [True, True]


def candidates_from_rows(rows: Iterable[tuple], *, now: datetime | None = None) -> list[CandidateConfig]:
    now = now or timezone.now()
    api_key = ProviderConfig._meta.get_field("api_key")
    candidates = []
    for row in rows:
        values = dict(zip(CANDIDATE_FIELDS, row, strict=False))
        values["api_key"] = api_key.from_db_value(values["api_key"], None, connection)
        for name in _DECIMALS:
            # PostgreSQL gives Decimals; SQLite numbers.
            if values[name] is not None and not isinstance(values[name], Decimal):
                values[name] = Decimal(str(values[name]))
        config = ProviderConfig.from_db(connection.alias, CANDIDATE_FIELDS, list(values.values()))
        until = db.as_datetime(row[-2])
        candidates.append(
            CandidateConfig(config, until if until is not None and until > now else None, int(row[-1] or 0))
        )
    return candidates


def weighted_order(configs: Iterable, rng: random.Random = _random) -> list:
    """Order configs (anything with `priority` and `weight`) by priority; within a priority, a weighted random
    permutation.

    Each config draws u ** (1 / weight) for u uniform in [0, 1) and the highest draw goes first
    (Efraimidis-Spirakis): a config is first with probability weight / sum of weights, and so on down the list.
    """
    keyed = [(config.priority, -(rng.random() ** (1 / max(config.weight, 1))), config) for config in configs]
    keyed.sort(key=lambda item: (item[0], item[1]))
    return [config for _, _, config in keyed]


def estimate_tokens(request: GenerateRequest, image_allowance: int) -> int:
    """The tokens a call may use, reserved before it: an upper bound for the prompt text (its UTF-8 bytes), an
    allowance per image, the output cap.

    A byte-level BPE tokenizer (OpenAI's, Anthropic's) or a SentencePiece one with byte fallback (Gemini's) never
    makes more tokens of a text than it has UTF-8 bytes, so the bound holds for every language and for code and
    emoji, where characters / 4 undercounted (Chinese runs about a token per character, an emoji several). The
    price: English text reserves about four times what it uses, for the length of the call.
    """
    return (
        _utf8_bytes(request.system)
        + _utf8_bytes(request.user_text)
        + (image_allowance if request.image is not None else 0)
        + request.max_output_tokens
    )


def _utf8_bytes(text: str) -> int:
    # isascii() reads a flag of the string (no scan), and ASCII text is one byte a character: encode only the rest.
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))
