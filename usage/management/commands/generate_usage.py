"""Fill the usage table with realistic synthetic calls, fast, and add them to the rollups.

For development and benchmark databases. The calls go to synthetic provider configs ("synthetic 1: gemini
flash", ...; inactive and serving no task, so the router never picks them) and synthetic users
("synthetic-user-00001", ...; no usable password), created on first use and reused by later runs. Every row is
costed by usage.pricing exactly as the gateway would cost it, so the cost sums are real.

What the data looks like: four tasks in the proportions of a job platform (extraction 45%, image validation
20%, CV drafting 20%, cover letters 15%), each served by a few configs and, for 1%, the environment fallback;
outcomes about 95% success, with rate limits, timeouts, 5xx and the rarer error types, invalid outputs and
client aborts; token counts and latencies drawn log-normally per task and model (reasoning tokens for reasoning
models, cache reads and writes); a share of unpriced models (a fine-tune, an experimental model); traffic with a
daily rhythm, quieter weekends and growth over the range; users from a long tail, 10% of calls without one.

Speed: on PostgreSQL the rows are streamed with COPY (psycopg 3) and the rollups are built afterwards with one
`INSERT ... SELECT ... GROUP BY` per rollup (usage.rollups.rollups_add_records). Rows are drawn from a pool of
precomputed, precosted call shapes, so a row costs a few random numbers and a string join. Elsewhere (SQLite)
rows go through bulk_create, much more slowly.

The rows take a block of ids reserved from the table's sequence up front, and only that block is added to
the rollups, so calls the gateway records meanwhile are not counted twice. Should one of those take an id in
the block anyway (a race of microseconds), COPY fails on the duplicate key rather than miscount.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from django.contrib.auth import get_user_model
from django.contrib.auth.hashers import make_password
from django.core.management.base import BaseCommand, CommandError
from django.db import connection, transaction
from django.utils import timezone

from providers.clients.base import TokenUsage
from providers.models import ProviderConfig
from usage.models import DailyRollup, DailyUserRollup, Outcome, UsageRecord
from usage.pricing import price_quote
from usage.rollups import rollups_add_records

TASK_SHARES = {"extraction": 0.45, "image_validation": 0.20, "cv_drafting": 0.20, "cover_letter": 0.15}
FALLBACK_SHARE = 0.01  # of each task's calls: the environment fallback (no config)
NO_USER_SHARE = 0.10

# (error type or outcome, share of calls, median latency ms)
FAILURES = [
    ("rate_limited", 0.020, 180),
    ("unavailable", 0.009, 2_500),
    ("timeout", 0.008, 60_500),
    ("bad_request", 0.004, 250),
    ("unreachable", 0.002, 40),
    ("malformed_response", 0.002, 3_000),
    ("authentication", 0.0005, 150),
    ("model_not_found", 0.0003, 150),
    ("permission", 0.0002, 150),
    ("invalid_output", 0.006, None),  # a full call whose output failed validation
    ("aborted", 0.003, None),  # the client went away part way
]
# Median (input, output) tokens and success latency (ms) per task; models scale the latency.
TASK_SHAPES = {
    "extraction": (2_500, 450, 1_400),
    "image_validation": (1_300, 60, 1_800),
    "cv_drafting": (3_500, 1_800, 9_000),
    "cover_letter": (2_200, 800, 6_000),
}


@dataclass(frozen=True)
class SyntheticConfig:
    label: str
    provider_type: str
    model_name: str
    reported_model: str  # as the provider names it in its answers
    tasks: dict[str, float]  # task -> weight among the configs serving it
    speed: float = 1.0  # latency factor
    reasoning: bool = False
    cache_writes: bool = False


CATALOGUE = [
    SyntheticConfig("gemini flash", "gemini", "gemini-2.5-flash", "gemini-2.5-flash",
                    {"extraction": 0.6, "image_validation": 0.6}, speed=0.7),
    SyntheticConfig("openai mini", "openai", "gpt-4o-mini", "gpt-4o-mini-2024-07-18",
                    {"extraction": 0.3, "image_validation": 0.3}, speed=0.9),
    SyntheticConfig("claude sonnet", "claude", "claude-sonnet-4-5", "claude-sonnet-4-5-20250929",
                    {"cv_drafting": 0.5, "cover_letter": 0.6}, cache_writes=True),
    SyntheticConfig("gemini pro", "gemini", "gemini-2.5-pro", "gemini-2.5-pro",
                    {"cv_drafting": 0.4, "cover_letter": 0.2}, speed=1.6, reasoning=True),
    SyntheticConfig("openai fine-tune (unpriced)", "openai", "ft:gpt-4o-mini:acme:letters:9xk2",
                    "ft:gpt-4o-mini:acme:letters:9xk2", {"cover_letter": 0.2}),
    SyntheticConfig("claude haiku", "claude", "claude-haiku-4-5", "claude-haiku-4-5-20251001",
                    {"extraction": 0.1, "cv_drafting": 0.1}, speed=0.6, cache_writes=True),
    SyntheticConfig("gemini experimental (unpriced)", "gemini", "gemini-exp-synthetic", "gemini-exp-synthetic",
                    {"image_validation": 0.1}),
    SyntheticConfig("openai gpt-5 mini", "openai", "gpt-5-mini", "gpt-5-mini-2025-08-07",
                    {"cv_drafting": 0.1, "extraction": 0.05}, speed=1.3, reasoning=True),
]  # fmt: skip
FALLBACK = SyntheticConfig("environment fallback", "gemini", "gemini-2.5-flash", "gemini-2.5-flash", {}, speed=0.7)

# COPY columns; the order of the tab-separated lines below.
COPY_COLUMNS = (
    "id", "created_at", "request_id", "user_id",
    "provider_config_id", "provider_type", "model", "task", "attempt", "outcome", "error_type",
    "input_tokens", "output_tokens", "cached_input_tokens", "cache_write_tokens", "reasoning_tokens",
    "cost_usd", "priced", "price_source", "latency_ms", "streamed",
)  # fmt: skip
SHAPE_POOL_SIZE = 20_000
NULL = "\\N"  # COPY's text format


@dataclass(frozen=True)
class CallShape:
    """Everything about a synthetic call but when, who and its id; costed once, used by many rows."""

    config_id: int | None
    provider_type: str
    model: str
    task: str
    attempt: int
    outcome: str
    error_type: str
    usage: TokenUsage
    cost_usd: Decimal | None
    price_source: str
    latency_ms: int
    streamed: bool

    def copy_text(self) -> str:
        """The shape's COPY columns from provider_config_id to streamed, tab-separated, latency last but one."""
        u = self.usage
        cost = NULL if self.cost_usd is None else str(self.cost_usd)
        return "\t".join(
            [
                NULL if self.config_id is None else str(self.config_id),
                self.provider_type,
                self.model,
                self.task,
                str(self.attempt),
                self.outcome,
                self.error_type,
                str(u.input_tokens),
                str(u.output_tokens),
                str(u.cached_input_tokens),
                str(u.cache_write_tokens),
                str(u.reasoning_tokens),
                cost,
                "f" if self.cost_usd is None else "t",
                self.price_source,
            ]
        )


class Command(BaseCommand):
    help = "Generate realistic synthetic usage rows in bulk and add them to the rollups (dev and benchmark data)."

    def add_arguments(self, parser):
        parser.add_argument("--rows", type=int, required=True, help="How many usage rows to add.")
        parser.add_argument("--days", type=int, default=90, help="Spread over the last N days (default 90).")
        parser.add_argument("--configs", type=int, default=6, help="Synthetic provider configs (default 6).")
        parser.add_argument("--users", type=int, default=500, help="Synthetic users (default 500).")
        parser.add_argument("--seed", type=int, default=1, help="Random seed (default 1).")
        parser.add_argument("--batch", type=int, default=100_000, help="Rows per COPY or bulk insert (default 100000).")

    def handle(self, *args, rows, days, configs, users, seed, batch, **options):
        for name, value, minimum in (("rows", rows, 1), ("days", days, 1), ("configs", configs, 1)):
            if value < minimum:
                raise CommandError(f"--{name} must be at least {minimum}")
        if users < 0 or batch < 1:
            raise CommandError("--users must not be negative and --batch must be at least 1")

        started = time.monotonic()
        rng = random.Random(seed)  # noqa: S311 - synthetic data, reproducible by seed
        chosen = _configs(configs)
        user_ids = _users(users)
        shapes = _shapes(rng, chosen)
        end = timezone.now().replace(minute=0, second=0, microsecond=0)
        hours = _hour_weights(rng, end, days)
        self.stderr.write(f"{len(chosen)} configs, {len(user_ids)} users, {len(shapes):,} call shapes ready")

        generator = _RowGenerator(rng=rng, shapes=shapes, hours=hours, user_ids=user_ids, seed=seed, rows=rows)
        if connection.vendor == "postgresql":
            self._copy(generator, rows, batch)
            how = "COPY"
        else:
            self._bulk_create(generator, rows, batch)
            how = "bulk_create"

        total = time.monotonic() - started
        self.stdout.write(
            f"Generated {rows:,} usage rows over {days} days in {total:.1f} s: {how} {self._copy_seconds:.1f} s "
            f"({rows / max(self._copy_seconds, 1e-9):,.0f} rows/s), rollups {self._rollup_seconds:.1f} s, "
            f"overall {rows / max(total, 1e-9):,.0f} rows/s."
        )

    def _copy(self, generator: _RowGenerator, rows: int, batch: int) -> None:
        from psycopg.copy import QueuedLibpqWriter

        table = UsageRecord._meta.db_table
        with connection.cursor() as cursor:
            # One block of ids for every row, taken from the table's own sequence.
            cursor.execute(
                "SELECT setval(seq, nextval(seq) + %s - 1) FROM pg_get_serial_sequence(%s, 'id') AS seq",
                [rows, table],
            )
            last_id = cursor.fetchone()[0]
            # Foreign keys are checked by a trigger per row, which costs more than the rest of the load. Every id
            # here comes from the configs and users just created or found, so where the role may (a superuser,
            # as pg_restore --disable-triggers) the load skips the triggers.
            cursor.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")
            skip_triggers = cursor.fetchone()[0]
        first_id = last_id - rows + 1
        sql = f"COPY {table} ({', '.join(COPY_COLUMNS)}) FROM STDIN"
        started = time.monotonic()
        done = 0
        while done < rows:
            size = min(batch, rows - done)
            data = generator.copy_lines(first_id + done, size).encode()
            with transaction.atomic(), connection.cursor() as cursor:
                if skip_triggers:
                    cursor.execute("SET LOCAL session_replication_role = replica")
                psycopg_cursor = cursor.cursor
                # The writer thread sends while this one draws the next batch.
                with psycopg_cursor.copy(sql, writer=QueuedLibpqWriter(psycopg_cursor)) as copy:
                    copy.write(data)
            done += size
            self._progress(done, rows, started)
        self._copy_seconds = time.monotonic() - started
        self._rollups(first_id, last_id)
        # Fresh planner statistics: a rollup the planner believes empty gets a plan that is several times slower.
        with connection.cursor() as cursor:
            for model in (UsageRecord, DailyRollup, DailyUserRollup):
                cursor.execute(f"ANALYZE {model._meta.db_table}")

    def _bulk_create(self, generator: _RowGenerator, rows: int, batch: int) -> None:
        started = time.monotonic()
        done = 0
        first_id = last_id = None
        while done < rows:
            size = min(batch, rows - done)
            with transaction.atomic():
                created = UsageRecord.objects.bulk_create(generator.records(size), batch_size=2_000)
            ids = [record.pk for record in created]
            first_id = min(ids) if first_id is None else first_id
            last_id = max(ids)
            done += size
            self._progress(done, rows, started)
        self._copy_seconds = time.monotonic() - started
        # SQLite lets one writer in at a time, but the batches are separate transactions: only the generated
        # rows' own id range counts, and on SQLite nothing else is expected to write to a generated database.
        self._rollups(first_id, last_id)

    def _rollups(self, first_id: int, last_id: int) -> None:
        started = time.monotonic()
        self.stderr.write("adding the rows to the rollups ...")
        rollups_add_records(min_id=first_id, max_id=last_id)
        self._rollup_seconds = time.monotonic() - started

    _rollup_seconds = _copy_seconds = 0.0

    def _progress(self, done: int, rows: int, started: float) -> None:
        rate = done / max(time.monotonic() - started, 1e-9)
        self.stderr.write(f"{done:>14,} / {rows:,} rows  ({rate:,.0f} rows/s)")


def _configs(count: int) -> list[tuple[int, SyntheticConfig]]:
    """Create (or find) `count` synthetic configs, cycling through the catalogue."""
    chosen = []
    for number in range(1, count + 1):
        spec = CATALOGUE[(number - 1) % len(CATALOGUE)]
        name = f"synthetic {number}: {spec.label}"
        config = ProviderConfig.objects.filter(display_name=name).first()
        if config is None:
            config = ProviderConfig(
                provider_type=spec.provider_type,
                display_name=name,
                model_name=spec.model_name,
                is_active=False,  # never routed to
            )
            config.set_api_key(f"synthetic-not-a-key-{number:04d}")
            config.save()
        chosen.append((config.pk, spec))
    return chosen


def _users(count: int) -> list[int]:
    """Create (or find) `count` synthetic users; return their ids, the busiest first."""
    user_model = get_user_model()
    names = [f"synthetic-user-{n:05d}" for n in range(1, count + 1)]
    existing = set(user_model.objects.filter(username__in=names).values_list("username", flat=True))
    unusable = make_password(None)
    user_model.objects.bulk_create(
        [user_model(username=name, password=unusable) for name in names if name not in existing], batch_size=1000
    )
    ids = dict(user_model.objects.filter(username__in=names).values_list("username", "pk"))
    return [ids[name] for name in names]


def _lognormal(rng: random.Random, median: float, sigma: float) -> float:
    return median * math.exp(rng.gauss(0, sigma))


def _shapes(rng: random.Random, configs: list[tuple[int, SyntheticConfig]]) -> list[CallShape]:
    """Draw SHAPE_POOL_SIZE call shapes; a row picks one uniformly, so the pool carries every proportion."""
    serving = {}
    for task in TASK_SHARES:
        candidates = [(config_id, spec, spec.tasks[task]) for config_id, spec in configs if task in spec.tasks]
        if not candidates:  # too few configs chosen for this task: all of them serve it
            candidates = [(config_id, spec, 1.0) for config_id, spec in configs]
        weight = sum(w for _, _, w in candidates)
        serving[task] = [
            *((config_id, spec, (1 - FALLBACK_SHARE) * w / weight) for config_id, spec, w in candidates),
            (None, FALLBACK, FALLBACK_SHARE),
        ]
    failure_total = sum(share for _, share, _ in FAILURES)
    shapes = []
    tasks, task_weights = list(TASK_SHARES), list(TASK_SHARES.values())
    for _ in range(SHAPE_POOL_SIZE):
        task = rng.choices(tasks, task_weights)[0]
        config_id, spec, _ = rng.choices(serving[task], [w for _, _, w in serving[task]])[0]
        failure = None
        if rng.random() < failure_total:
            failure = rng.choices(FAILURES, [share for _, share, _ in FAILURES])[0]
        shapes.append(_shape(rng, task, config_id, spec, failure))
    return shapes


def _shape(rng, task, config_id, spec: SyntheticConfig, failure) -> CallShape:
    median_in, median_out, median_latency = TASK_SHAPES[task]
    input_tokens = max(1, round(_lognormal(rng, median_in, 0.45)))
    output_tokens = max(1, round(_lognormal(rng, median_out, 0.6)))
    cached = round(input_tokens * rng.uniform(0.4, 0.9)) if rng.random() < 0.3 else 0
    written = round((input_tokens - cached) * rng.uniform(0.3, 0.8)) if spec.cache_writes and rng.random() < 0.1 else 0
    reasoning = round(output_tokens * rng.uniform(0.2, 0.6)) if spec.reasoning else 0
    latency = _lognormal(rng, median_latency * spec.speed, 0.5)
    outcome, error_type = Outcome.SUCCESS, ""
    usage = TokenUsage(input_tokens, output_tokens, cached, written, reasoning)
    if failure is not None:
        kind, _, failure_latency = failure
        if kind == "invalid_output":
            outcome = Outcome.INVALID_OUTPUT
        elif kind == "aborted":
            outcome = Outcome.ABORTED
            latency *= rng.uniform(0.05, 0.9)
            usage = TokenUsage(input_tokens, round(output_tokens * rng.uniform(0, 0.8)), cached, written, 0)
        else:
            outcome, error_type = Outcome.ERROR, kind
            latency = _lognormal(rng, failure_latency, 0.3)
            usage = TokenUsage()
    streamed = task in ("cv_drafting", "cover_letter") and rng.random() < 0.6
    quote = price_quote(provider_type=spec.provider_type, model=spec.reported_model, usage=usage)
    attempt = rng.choices([1, 2, 3], [0.97, 0.025, 0.005])[0]
    return CallShape(
        config_id=config_id,
        provider_type=spec.provider_type,
        model=spec.reported_model,
        task=task,
        attempt=attempt,
        outcome=str(outcome),
        error_type=error_type,
        usage=usage,
        cost_usd=quote.cost_usd,
        price_source=quote.source,
        latency_ms=max(1, round(latency)),
        streamed=streamed,
    )


def _hour_weights(rng: random.Random, end: datetime, days: int) -> tuple[list[datetime], list[float]]:
    """Every hour of the range and its share of traffic: a daily rhythm, quieter weekends, growth, some noise."""
    zone = timezone.get_default_timezone()
    count = days * 24
    starts = [end - timedelta(hours=count - n) for n in range(count)]
    weights = []
    for n, start in enumerate(starts):
        local = timezone.localtime(start, zone)
        daily = 0.25 + math.exp(-(((local.hour + 0.5) - 14) ** 2) / 18)  # peaks mid-afternoon
        weekly = 0.55 if local.weekday() >= 5 else 1.0
        growth = 0.7 + 0.6 * n / count
        weights.append(daily * weekly * growth * rng.uniform(0.9, 1.1))
    return starts, weights


class _RowGenerator:
    """Rows in time order, drawn from the shape pool, each with its own time, user, latency jitter and request id.

    In time order because that is how the gateway writes them, and because it keeps every index insert near
    the right edge of its B-tree: loading in random order is several times slower once the indexes outgrow
    the buffer cache.
    """

    def __init__(self, *, rng, shapes, hours, user_ids, seed, rows):
        self.rng = rng
        self.shapes = shapes
        self.shape_text = [shape.copy_text() for shape in shapes]
        self.hour_starts, weights = hours
        self.hour_text = [start.astimezone(UTC).strftime("%Y-%m-%d %H:") for start in self.hour_starts]
        self.minute_second = [f"{s // 60:02d}:{s % 60:02d}" for s in range(3600)]
        # Rows per hour in proportion to its weight, rounded so that they add up to `rows` exactly.
        total, running, self.per_hour = sum(weights), 0.0, []
        for weight in weights:
            before = round(rows * running / total)
            running += weight
            self.per_hour.append(round(rows * running / total) - before)
        # A long tail: user n is picked in proportion to 1 / n.
        ranks = [1 / rank for rank in range(1, len(user_ids) + 1)]
        self.user_pool = rng.choices(user_ids, ranks, k=50_000) if user_ids else []
        self.request_prefix = f"syn{seed}-{rng.randrange(16**6):06x}-"
        self._rows = self._draw_all()
        self.made = 0

    def _draw_all(self):
        """Yield (hour, microsecond within it, shape index, user id or None, latency ms) in time order."""
        rng = self.rng
        random_ = rng.random
        shape_count, pool, pool_size = len(self.shapes), self.user_pool, len(self.user_pool)
        shapes = self.shapes
        for hour, count in enumerate(self.per_hour):
            for micro in sorted(int(random_() * 3_600_000_000) for _ in range(count)):
                index = int(random_() * shape_count)
                user = pool[int(random_() * pool_size)] if pool_size and random_() >= NO_USER_SHARE else None
                # +-25% around the shape's latency, so latencies are continuous, not the pool's 20,000 values.
                latency = max(1, int(shapes[index].latency_ms * (0.75 + 0.5 * random_())))
                yield hour, micro, index, user, latency

    def copy_lines(self, first_id: int, count: int) -> str:
        """The next `count` rows as COPY text lines, with ids from `first_id`."""
        lines = []
        append = lines.append
        hour_text, minute_second, shape_text, shapes = self.hour_text, self.minute_second, self.shape_text, self.shapes
        prefix = self.request_prefix
        for row_id, (hour, micro, index, user, latency) in zip(
            range(first_id, first_id + count), self._rows, strict=False
        ):
            user_text = NULL if user is None else user
            streamed = "t" if shapes[index].streamed else "f"
            second, micro = divmod(micro, 1_000_000)
            append(
                f"{row_id}\t{hour_text[hour]}{minute_second[second]}.{micro:06d}+00\t{prefix}{row_id:012x}\t"
                f"{user_text}\t{shape_text[index]}\t{latency}\t{streamed}\n"
            )
        return "".join(lines)

    def records(self, count: int) -> list[UsageRecord]:
        """The next `count` rows as unsaved UsageRecords."""
        records = []
        for (hour, micro, index, user, latency), _ in zip(self._rows, range(count), strict=False):
            self.made += 1
            shape = self.shapes[index]
            usage = shape.usage
            records.append(
                UsageRecord(
                    created_at=self.hour_starts[hour] + timedelta(microseconds=micro),
                    request_id=f"{self.request_prefix}{self.made:012x}",
                    user_id=user,
                    task=shape.task,
                    provider_config_id=shape.config_id,
                    provider_type=shape.provider_type,
                    model=shape.model,
                    attempt=shape.attempt,
                    outcome=shape.outcome,
                    error_type=shape.error_type,
                    input_tokens=usage.input_tokens,
                    output_tokens=usage.output_tokens,
                    cached_input_tokens=usage.cached_input_tokens,
                    cache_write_tokens=usage.cache_write_tokens,
                    reasoning_tokens=usage.reasoning_tokens,
                    cost_usd=shape.cost_usd,
                    priced=shape.cost_usd is not None,
                    price_source=shape.price_source,
                    latency_ms=latency,
                    streamed=shape.streamed,
                )
            )
        return records
