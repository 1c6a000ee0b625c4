"""What the fake providers answer and how they count tokens: pure and deterministic, so tests can predict it.

Token formula (one rule for the three providers, each reported in its own shape):

    text_tokens(s) = ceil(len(s) / 4)          # len() in Python characters; "" counts 0

    input tokens  = sum of text_tokens(t) over every text part of the request, each part counted on its own
                    (system prompt / systemInstruction, and every message of every role; Anthropic
                    tool_result text too)
                  + a fixed cost per image:
                      OpenAI     85 per image_url part (any detail, data URL or http URL)
                      Gemini     258 per inlineData / fileData part
                      Anthropic  base64 block: ceil(len(base64 data) / 1000) clamped to [1, 1600];
                                 url block: 1600
                    Nothing else counts: no per-message overhead, no tool definitions, no schemas.

    output text   = reply_text(model, prompt, images), where model is the model id as sent in the request,
                    prompt the text parts of the last user message joined with " ", images the number of
                    image parts in the whole request; or, when the request asks for JSON with a schema,
                    json_text(schema_instance.instance_from_schema(schema)); for JSON without a schema
                    (OpenAI json_object, Gemini application/json alone) json_text({"reply": reply_text(...)}).
    output tokens = text_tokens(output text)

    max tokens    = if text_tokens(output text) > limit, the text is cut to its first 4 * limit characters
                    (so output tokens == limit) and the finish reason is length / max_tokens / MAX_TOKENS.
                    Limits: OpenAI max_completion_tokens or max_tokens; Anthropic max_tokens; Gemini
                    generationConfig.maxOutputTokens.

    reasoning     = OpenAI reasoning models (o4-mini, gpt-5, gpt-5-mini): reasoning_tokens = 2 * output
                    tokens, and completion_tokens = output tokens + reasoning_tokens (as OpenAI counts).
                    Gemini thinking models (the 2.5 family) unless thinkingConfig.thinkingBudget == 0:
                    thoughtsTokenCount = 2 * candidatesTokenCount. The limit cuts the visible text only.

    cached        = the `cached=<n>` directive: cached = min(n, input tokens).
                    OpenAI:    prompt_tokens = input tokens (cached included);
                               prompt_tokens_details.cached_tokens = cached
                    Anthropic: input_tokens = input tokens - cached; cache_read_input_tokens = cached;
                               cache_creation_input_tokens = 0
                    Gemini:    promptTokenCount = input tokens (cached included); cachedContentTokenCount
                               (present only when not zero)

    totals        = OpenAI total_tokens = prompt_tokens + completion_tokens;
                    Gemini totalTokenCount = promptTokenCount + candidatesTokenCount + thoughtsTokenCount.

Each provider module has a `count_input(...)` returning (input tokens, images, prompt) for a request body.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

OPENAI_IMAGE_TOKENS = 85
GEMINI_IMAGE_TOKENS = 258
ANTHROPIC_URL_IMAGE_TOKENS = 1600
ANTHROPIC_MAX_IMAGE_TOKENS = 1600

SNIPPET_CHARS = 48
MAX_STREAM_DELTAS = 12


def text_tokens(text: str) -> int:
    """Count tokens the fake way: one per started group of four characters."""
    return math.ceil(len(text) / 4)


def anthropic_image_tokens(base64_data: str) -> int:
    """Return the size-based token cost of one base64 image block for the fake Anthropic."""
    return min(ANTHROPIC_MAX_IMAGE_TOKENS, max(1, math.ceil(len(base64_data) / 1000)))


def reply_text(model: str, prompt: str, images: int = 0) -> str:
    """Return the fake reply to `prompt` (the last user text) sent to `model` with `images` images."""
    collapsed = " ".join(prompt.split())
    snippet = collapsed[:SNIPPET_CHARS] + ("..." if len(collapsed) > SNIPPET_CHARS else "")
    text = f'Fake reply from {model} to "{snippet}".'
    if images:
        text += f" I saw {images} image{'' if images == 1 else 's'}."
    return text


def json_text(value: Any) -> str:
    """Serialise a structured-output value the way the fake puts it in the reply text."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def truncate(text: str, max_tokens: int | None) -> tuple[str, bool]:
    """Cut `text` to `max_tokens`; return the text and whether it was cut."""
    if max_tokens is None or text_tokens(text) <= max_tokens:
        return text, False
    return text[: max(0, max_tokens) * 4], True


def cached_tokens(requested: int, input_tokens: int) -> int:
    return max(0, min(requested, input_tokens))


def stream_pieces(text: str, limit: int = MAX_STREAM_DELTAS, *, exact: bool = False) -> list[str]:
    """Split `text` into word-sized deltas (at most `limit`) that join back to exactly `text`; with `exact`, into
    `limit` deltas (pieces of words when the text has fewer words), as the `chunks` directive asks."""
    if not text:
        return [""]
    if exact and len(text) >= limit:
        bounds = [round(number * len(text) / limit) for number in range(limit + 1)]
        return [text[start:end] for start, end in zip(bounds, bounds[1:], strict=False)]
    words = re.findall(r"\s*\S+", text)
    tail = text[sum(len(w) for w in words) :]
    if tail:
        words.append(tail)
    if len(words) <= limit:
        return words
    # `limit` pieces of as even a number of words as can be
    bounds = [round(number * len(words) / limit) for number in range(limit + 1)]
    return ["".join(words[start:end]) for start, end in zip(bounds, bounds[1:], strict=False)]
