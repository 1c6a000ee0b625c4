"""Fake OpenAI, Anthropic and Gemini servers for tests, the demo and benchmarks; none reaches the internet.

One aiohttp app on one port speaks each provider's real wire format, so the unmodified official SDKs work
against it given only a base URL and a key:

    OpenAI(api_key="sk-test", base_url=f"{url}/openai/v1")
    Anthropic(api_key="sk-ant-test", base_url=f"{url}/anthropic")
    genai.Client(api_key="AIzaTest", http_options=types.HttpOptions(base_url=f"{url}/gemini"))

Run it with `manage.py fake_providers`, or in-process with `FakeProviderServer` (a context manager; the
`fake_providers` pytest fixture in tests/fake_fixtures.py wraps one). What makes a key valid and the
behaviour directives (latency, failures, cached tokens, structured output that fails its schema, stalled
streams) are in `behaviour`; the token formula and reply text in `generation`; the known models in `catalogue`.
"""

from .app import build_app
from .server import FakeProviderServer

__all__ = ["FakeProviderServer", "build_app"]
