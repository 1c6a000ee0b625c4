"""Fixtures for the usage app's tests (wired in from tests/conftest.py).

Models are imported inside the fixtures, as in tests/auth_fixtures.py.
"""

import itertools

import pytest


@pytest.fixture
def provider_config(db):
    """A factory of saved ProviderConfigs: `provider_config(daily_token_limit=1000, model_name="gpt-4o", ...)`.

    Defaults to an unlimited Gemini config named "Config <n>"; `api_key=` sets the key.
    """
    from providers.models import ProviderConfig

    numbers = itertools.count(1)

    def make(**fields) -> ProviderConfig:
        number = next(numbers)
        api_key = fields.pop("api_key", f"AIzaSy-usage-test-key-{number:08d}")
        values = {
            "provider_type": "gemini",
            "display_name": f"Config {number}",
            "model_name": "gemini-2.5-flash",
            **fields,
        }
        config = ProviderConfig(**values)
        config.set_api_key(api_key)
        config.save()
        return config

    return make
