"""Pytest fixtures for the fake provider servers (wired in from tests/conftest.py)."""

import pytest

from providers.fake import FakeProviderServer


@pytest.fixture(scope="session")
def fake_providers():
    """The fake OpenAI/Anthropic/Gemini server for the whole session: `.url`, `.openai_base_url`,
    `.anthropic_base_url`, `.gemini_base_url`."""
    with FakeProviderServer() as server:
        yield server
