"""How much of a daily token budget 60 concurrent clients can spend, with the input estimate as characters / 4
(before issue 13) and as UTF-8 bytes (now), for a Chinese prompt.

    .venv/bin/python benchmarks/budget.py

Runs the real reservation and settlement (`usage.services.tokens_reserve` and `attempt_record`) from 60 threads
against a throwaway PostgreSQL database. Each call's prompt is CLIENT_TEXT (Chinese: about one token per
character, as BPE tokenizers count it), its output OUTPUT_TOKENS; each client calls until it is refused for
good (a refusal while calls in flight hold the room is tried again). Prints, per estimate, the tokens used
against the limit: over 100% means the limit was passed.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.gateway import ThrowawayDatabase, server_env  # noqa: E402

CLIENTS = 60
DAILY_LIMIT = 200_000
CLIENT_TEXT = "我们正在寻找一位经验丰富的后端工程师，负责设计和维护高可用的支付平台。" * 20  # 700 characters
MAX_OUTPUT_TOKENS = 1_024
OUTPUT_TOKENS = MAX_OUTPUT_TOKENS  # a reasoning model that spends its whole output cap, as in the issue


def spend(estimate_of) -> tuple[int, int]:
    """(tokens used, calls made) by CLIENTS threads against a fresh config."""
    from django.db import connection

    from providers.clients.base import TokenUsage
    from providers.models import ProviderConfig
    from usage.models import Period, TokenCounter
    from usage.services import Hold, LimitExceeded, attempt_record, tokens_reserve

    config = ProviderConfig(
        provider_type="openai",
        display_name=f"budget {time.time()}",
        model_name="gpt-4o-mini",
        daily_token_limit=DAILY_LIMIT,
    )
    config.set_api_key("sk-budget")
    config.save()
    estimate = estimate_of(CLIENT_TEXT) + MAX_OUTPUT_TOKENS
    actual_input = len(CLIENT_TEXT)  # about a token per Chinese character
    calls = [0]
    lock = threading.Lock()

    def client() -> None:
        try:
            while True:
                try:
                    reservation = tokens_reserve(config=config, tokens=estimate, hold=Hold(task="cover_letter"))
                except LimitExceeded as refusal:
                    if refusal.in_flight:
                        time.sleep(0.005)
                        continue
                    return
                attempt_record(
                    reservation=reservation,
                    request_id="budget",
                    user_id=None,
                    task="cover_letter",
                    config=config,
                    provider_type="openai",
                    model="gpt-4o-mini",
                    attempt=1,
                    outcome="success",
                    usage=TokenUsage(actual_input, OUTPUT_TOKENS),
                    latency_ms=1,
                    streamed=False,
                )
                with lock:
                    calls[0] += 1
        finally:
            connection.close()

    threads = [threading.Thread(target=client) for _ in range(CLIENTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return TokenCounter.objects.get(provider_config=config, period=Period.DAY).used, calls[0]


def main() -> int:
    database = ThrowawayDatabase(os.environ.get("BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres"))
    database.create()
    try:
        env = server_env(database.url)
        subprocess.run(
            [sys.executable, "manage.py", "migrate", "--noinput"], cwd=ROOT, env=env, check=True, capture_output=True
        )
        os.environ.update(env)
        import django

        django.setup()
        rows = []
        for name, estimate_of in (
            ("characters / 4 (before)", lambda text: -(-len(text) // 4)),
            ("UTF-8 bytes (now)", lambda text: len(text.encode())),
        ):
            used, calls = spend(estimate_of)
            rows.append(f"| {name} | {calls} | {used:,} | {used / DAILY_LIMIT:.1%} |")
        print(
            f"{CLIENTS} clients, daily limit {DAILY_LIMIT:,}, prompt {len(CLIENT_TEXT)} Chinese characters "
            f"({len(CLIENT_TEXT.encode())} bytes) + {OUTPUT_TOKENS} output tokens per call\n"
        )
        print("| Input estimate | Calls | Tokens used | Of the limit |\n|---|---|---|---|")
        print("\n".join(rows))
    finally:
        from django.db import connections

        connections.close_all()
        database.drop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
