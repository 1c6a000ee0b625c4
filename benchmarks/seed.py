"""Fixtures for the gateway benchmark, run by `gateway.py` in a subprocess against its throwaway database.

    seed.py setup  --base-url URL --api-key KEY   create the user, a bearer token and the provider config
    seed.py update --config-id N [--base-url URL] [--api-key KEY]   repoint the config or change its key

Each command prints one line `SEED_JSON {...}` for the harness to read. Settings come from the environment the
harness sets (DATABASE_URL of the throwaway database, generated keys).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
USERNAME = "benchmark"
# Large but set, so every call goes through the reservation and settlement of both windows.
DAILY_TOKEN_LIMIT = 10**12
MONTHLY_TOKEN_LIMIT = 10**13


def setup(*, base_url: str, api_key: str, model: str) -> dict:
    from django.contrib.auth import get_user_model

    from aditus.services import api_token_issue
    from providers.services import provider_config_create

    user = get_user_model().objects.create_user(username=USERNAME, password=secrets.token_urlsafe(24))
    _token, plaintext = api_token_issue(user=user, otp_device=None)
    config = provider_config_create(
        user=user,
        data={
            "provider_type": "openai",
            "display_name": "benchmark openai (fake)",
            "model_name": model,
            "api_key": api_key,
            "base_url": base_url,
            "default_for_extraction": True,
            "default_for_cv_drafting": True,
            "default_for_cover_letter": True,
            "daily_token_limit": DAILY_TOKEN_LIMIT,
            "monthly_token_limit": MONTHLY_TOKEN_LIMIT,
        },
    )
    return {"token": plaintext, "config_id": config.pk}


def update(*, config_id: int, base_url: str | None, api_key: str | None) -> dict:
    from django.contrib.auth import get_user_model

    from providers.models import ProviderConfig
    from providers.services import provider_config_update

    user = get_user_model().objects.get(username=USERNAME)
    data = {}
    if base_url is not None:
        data["base_url"] = base_url
    if api_key is not None:
        data["api_key"] = api_key
    config = provider_config_update(config=ProviderConfig.objects.get(pk=config_id), user=user, data=data)
    return {"config_id": config.pk, "base_url": config.base_url}


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    create = commands.add_parser("setup")
    create.add_argument("--base-url", required=True)
    create.add_argument("--api-key", required=True)
    create.add_argument("--model", default="gpt-4o-mini")
    change = commands.add_parser("update")
    change.add_argument("--config-id", type=int, required=True)
    change.add_argument("--base-url")
    change.add_argument("--api-key")
    return parser.parse_args(argv)


def main(argv: list[str]) -> None:
    args = parse_args(argv)
    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "aditus.settings")
    import django

    django.setup()
    if args.command == "setup":
        result = setup(base_url=args.base_url, api_key=args.api_key, model=args.model)
    else:
        result = update(config_id=args.config_id, base_url=args.base_url, api_key=args.api_key)
    print("SEED_JSON " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
