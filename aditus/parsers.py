"""JSON input that the rest of the code can take: not nested too deeply, and text that is text.

`JSONParser` is DRF's, refusing with a 400 what it would have handed on to fail later: JSON nested deeper than
MAX_JSON_DEPTH (Python's recursion limit turned about a thousand levels into a 500 with a traceback) and strings
holding a lone surrogate (`"\\ud800"`, which JSON can spell but no database driver or provider SDK can encode).
The task endpoints read their JSON themselves (tasks.inputs) with the same rules.
"""

from __future__ import annotations

from typing import Any

from rest_framework import parsers
from rest_framework.exceptions import ParseError

# Deeper than any real input (a profile object is a few levels deep), well short of the recursion limit.
MAX_JSON_DEPTH = 32


def nested_deeper_than(value: Any, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether a parsed JSON value has containers more than `limit` levels deep (walked level by level: a
    recursive walk is what overflows)."""
    level = [value] if isinstance(value, (dict, list)) else []
    for _ in range(limit):
        level = [
            child
            for container in level
            for child in (container.values() if isinstance(container, dict) else container)
            if isinstance(child, (dict, list))
        ]
        if not level:
            return False
    return True


def lone_surrogate_at(text: str) -> int | None:
    """The index of the first lone surrogate (U+D800-U+DFFF) in `text`, or None when it is all text."""
    if text.isascii():  # a flag of the string: no scan
        return None
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as problem:
        return problem.start
    return None


def lone_surrogate_message(text: str, index: int) -> str:
    return (
        f"holds a lone surrogate (U+{ord(text[index]):04X}) at character {index}, which is not text; send valid UTF-8."
    )


def first_unencodable_field(data: Any) -> tuple[str, str] | None:
    """The first string (key or value) anywhere in `data` holding a lone surrogate: (the top-level field it is
    under, or "non_field_errors" for a bare value, and the message)."""
    pending: list[tuple[str, Any]] = (
        [(str(key), (key, value)) for key, value in data.items()] if isinstance(data, dict) else [("", data)]
    )
    while pending:
        field, value = pending.pop()
        if isinstance(value, str):
            index = lone_surrogate_at(value)
            if index is not None:
                return field or "non_field_errors", lone_surrogate_message(value, index)
        elif isinstance(value, dict):
            pending.extend((field, item) for pair in value.items() for item in pair)
        elif isinstance(value, (list, tuple)):
            pending.extend((field, item) for item in value)
    return None


class JSONParser(parsers.JSONParser):
    """DRF's JSON parser, refusing JSON nested too deeply and strings that are not text (400)."""

    def parse(self, stream, media_type=None, parser_context=None):
        try:
            data = super().parse(stream, media_type, parser_context)
        except RecursionError:
            raise ParseError(f"JSON parse error - nested too deeply (more than {MAX_JSON_DEPTH} levels).") from None
        if nested_deeper_than(data):
            raise ParseError(f"JSON parse error - nested too deeply (more than {MAX_JSON_DEPTH} levels).")
        problem = first_unencodable_field(data)
        if problem is not None:
            field, message = problem
            raise ParseError({field: [message]})
        return data
