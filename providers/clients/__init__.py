"""The provider clients, one per provider type, each on its own shared connection pool.

    client = get_client(ProviderType.OPENAI)
    result = await client.agenerate(endpoint, request, api_key=key)

An SDK is imported the first time its client is asked for, so commands that never call a provider do not pay
for importing all three.
"""

from __future__ import annotations

import importlib
import threading

from .base import ProviderClient, ProviderType

_MODULES = {
    ProviderType.OPENAI: ("openai_client", "OpenAIClient"),
    ProviderType.CLAUDE: ("anthropic_client", "AnthropicClient"),
    ProviderType.GEMINI: ("gemini_client", "GeminiClient"),
}
_clients: dict[ProviderType, ProviderClient] = {}
_lock = threading.Lock()


def get_client(provider_type: ProviderType | str) -> ProviderClient:
    """Return the process-wide client for `provider_type` (a `ProviderType` or its value)."""
    provider_type = ProviderType(provider_type)
    client = _clients.get(provider_type)
    if client is None:
        with _lock:
            client = _clients.get(provider_type)
            if client is None:
                module_name, class_name = _MODULES[provider_type]
                module = importlib.import_module(f"{__name__}.{module_name}")
                client = _clients[provider_type] = getattr(module, class_name)()
    return client
