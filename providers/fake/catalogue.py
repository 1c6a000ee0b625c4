"""The models each fake provider knows. Any other model id gets the provider's real 404.

OpenAI and Anthropic answer with the dated snapshot id for an alias (gpt-4o -> gpt-4o-2024-08-06), as the real
services do; Gemini echoes the model id it was called with.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class OpenAIModel:
    id: str
    snapshot: str
    created: int
    owned_by: str = "system"
    reasoning: bool = False


_OPENAI_SNAPSHOTS = [
    # alias, dated snapshot, created, reasoning
    ("gpt-4o", "gpt-4o-2024-08-06", 1722814719, False),
    ("gpt-4o-mini", "gpt-4o-mini-2024-07-18", 1721172717, False),
    ("gpt-4.1", "gpt-4.1-2025-04-14", 1744316542, False),
    ("gpt-4.1-mini", "gpt-4.1-mini-2025-04-14", 1744317547, False),
    ("gpt-4.1-nano", "gpt-4.1-nano-2025-04-14", 1744321025, False),
    ("o4-mini", "o4-mini-2025-04-16", 1744133506, True),
    ("gpt-5", "gpt-5-2025-08-07", 1754075360, True),
    ("gpt-5-mini", "gpt-5-mini-2025-08-07", 1754075360, True),
]

OPENAI_MODELS: dict[str, OpenAIModel] = {}
for _alias, _snapshot, _created, _reasoning in _OPENAI_SNAPSHOTS:
    OPENAI_MODELS[_alias] = OpenAIModel(_alias, _snapshot, _created, reasoning=_reasoning)
    OPENAI_MODELS[_snapshot] = OpenAIModel(_snapshot, _snapshot, _created, reasoning=_reasoning)


@dataclass(frozen=True)
class AnthropicModel:
    id: str
    snapshot: str
    display_name: str
    created_at: str
    max_input_tokens: int
    max_tokens: int

    def info(self) -> dict:
        """Return the model object of GET /v1/models (always under the dated id)."""
        return {
            "type": "model",
            "id": self.snapshot,
            "display_name": self.display_name,
            "created_at": self.created_at,
            "lifecycle": "active",
            "max_input_tokens": self.max_input_tokens,
            "max_tokens": self.max_tokens,
        }


_ANTHROPIC_SNAPSHOTS = [
    # alias, dated snapshot, display name, created_at, max input, max output; newest first, as listed
    ("claude-opus-4-5", "claude-opus-4-5-20251101", "Claude Opus 4.5", "2025-11-24T00:00:00Z", 200000, 64000),
    (
        "claude-haiku-4-5",
        "claude-haiku-4-5-20251001",
        "Claude Haiku 4.5",
        "2025-10-15T00:00:00Z",
        200000,
        64000,
    ),
    (
        "claude-sonnet-4-5",
        "claude-sonnet-4-5-20250929",
        "Claude Sonnet 4.5",
        "2025-09-29T00:00:00Z",
        200000,
        64000,
    ),
    ("claude-opus-4-1", "claude-opus-4-1-20250805", "Claude Opus 4.1", "2025-08-05T00:00:00Z", 200000, 32000),
]

ANTHROPIC_MODELS: dict[str, AnthropicModel] = {}
for _alias, _snapshot, _name, _created_at, _max_in, _max_out in _ANTHROPIC_SNAPSHOTS:
    for _id in (_alias, _snapshot):
        ANTHROPIC_MODELS[_id] = AnthropicModel(_id, _snapshot, _name, _created_at, _max_in, _max_out)
ANTHROPIC_LISTED = [ANTHROPIC_MODELS[snapshot] for _, snapshot, *_ in _ANTHROPIC_SNAPSHOTS]

_GEMINI_METHODS = ["generateContent", "countTokens", "createCachedContent", "batchGenerateContent"]


def _gemini(name: str, version: str, display: str, description: str, output_limit: int, top_k: int, thinking: bool):
    model = {
        "name": f"models/{name}",
        "version": version,
        "displayName": display,
        "description": description,
        "inputTokenLimit": 1048576,
        "outputTokenLimit": output_limit,
        "supportedGenerationMethods": list(_GEMINI_METHODS),
        "temperature": 1,
        "topP": 0.95,
        "topK": top_k,
        "maxTemperature": 2,
    }
    if thinking:
        model["thinking"] = True
    return name, model


# Copied from a real GET /v1beta/models answer; `thinking` marks the models that report thoughtsTokenCount.
GEMINI_MODELS: dict[str, dict] = dict(
    [
        _gemini(
            "gemini-2.5-flash",
            "001",
            "Gemini 2.5 Flash",
            "Stable version of Gemini 2.5 Flash, our mid-size multimodal model that supports up to 1 million "
            "tokens, released in June of 2025.",
            65536,
            64,
            True,
        ),
        _gemini(
            "gemini-2.5-pro",
            "2.5",
            "Gemini 2.5 Pro",
            "Stable release (June 17th, 2025) of Gemini 2.5 Pro",
            65536,
            64,
            True,
        ),
        _gemini("gemini-2.0-flash", "2.0", "Gemini 2.0 Flash", "Gemini 2.0 Flash", 8192, 40, False),
        _gemini(
            "gemini-2.0-flash-001",
            "2.0",
            "Gemini 2.0 Flash 001",
            "Stable version of Gemini 2.0 Flash, our fast and versatile multimodal model for scaling across "
            "diverse tasks, released in January of 2025.",
            8192,
            40,
            False,
        ),
        _gemini("gemini-2.0-flash-lite", "2.0", "Gemini 2.0 Flash-Lite", "Gemini 2.0 Flash-Lite", 8192, 40, False),
        _gemini(
            "gemini-2.5-flash-lite",
            "001",
            "Gemini 2.5 Flash-Lite",
            "Stable version of Gemini 2.5 Flash-Lite, released in July of 2025",
            65536,
            64,
            True,
        ),
    ]
)
