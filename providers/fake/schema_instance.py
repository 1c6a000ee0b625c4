"""Build a deterministic JSON value that validates against a JSON schema (or a Gemini OpenAPI-style schema).

Handled (also in Gemini's dialect: upper-case type names, snake_case fields such as min_items): type
(also a list such as ["string", "null"]), object with properties / required / propertyOrdering, array with
items / prefixItems / minItems / maxItems, string with enum / const / format (date, date-time, time, uri,
email, uuid, ...) / minLength / maxLength, integer and number with minimum / maximum / exclusive bounds /
multipleOf, boolean, null, anyOf / oneOf (the first non-null branch), allOf (merged), $ref into $defs /
definitions. `pattern` is not honoured. Recursion is cut at MAX_DEPTH by taking a null branch or only the
required properties and the fewest items.

anthropic's `transform_schema` (used by `messages.parse`) moves constraints the API does not take into the
description as a trailing `{minItems: 2, minimum: 3}`; like a real model, the fake reads them back from there.

Values: strings are "fake <property name>" (with " <n>" for the n-th array item), numbers start at 1
(or the minimum), booleans are true, arrays have max(minItems, 1) items unless maxItems is lower.

`invalid_instance_from_schema` builds the opposite, for the `output=invalid` directive: valid JSON that fails the
schema, by giving each required property (every property when none is required) a value of a type it does not
allow, the first of 5, "fake", true, [], {}, null that fits none of its types (a `{"title": "..."}` object with
`title` a string gets `{"title": 5, ...}`). A schema that is not an object gets such a value itself.
"""

from __future__ import annotations

import math
import re
from typing import Any

MAX_DEPTH = 8

_FORMATS = {
    "date": "2025-01-01",
    "date-time": "2025-01-01T00:00:00Z",
    "time": "00:00:00",
    "duration": "P1D",
    "uri": "https://example.com/",
    "url": "https://example.com/",
    "uri-reference": "https://example.com/",
    "iri": "https://example.com/",
    "email": "fake@example.com",
    "idn-email": "fake@example.com",
    "hostname": "example.com",
    "idn-hostname": "example.com",
    "ipv4": "127.0.0.1",
    "ipv6": "::1",
    "uuid": "00000000-0000-4000-8000-000000000000",
}


def instance_from_schema(schema: Any) -> Any:
    """Return a value valid against `schema`."""
    return _Builder(schema).build(schema, "value", 0, 0)


def invalid_instance_from_schema(schema: Any) -> Any:
    """Return a JSON value that fails `schema` on the types of its required properties (see the module doc).
    A schema that takes any value (`{}`, `true`) cannot be failed: it gets a valid instance."""
    builder = _Builder(schema)
    value = builder.build(schema, "value", 0, 0)
    node = builder.flatten(schema)
    if isinstance(value, dict) and node is not None:
        properties = node.get("properties") if isinstance(node.get("properties"), dict) else {}
        names = [name for name in node.get("required") or [] if isinstance(name, str)] or list(properties)
        broken = False
        for name in names:
            wrong = builder.wrong_value(properties.get(name, True))
            if wrong is not _NO_VALUE:
                value[name] = wrong
                broken = True
        if broken:
            return value
    wrong = builder.wrong_value(schema)
    return value if wrong is _NO_VALUE else wrong


_NO_VALUE = object()
# A value of each JSON type, tried in this order for a value of the wrong type; with the types it has.
_WRONG_VALUES: list[tuple[Any, frozenset[str]]] = [
    (5, frozenset({"integer", "number"})),
    ("fake", frozenset({"string"})),
    (True, frozenset({"boolean"})),
    ([], frozenset({"array"})),
    ({}, frozenset({"object"})),
    (None, frozenset({"null"})),
]


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object"


class _Builder:
    def __init__(self, root: Any):
        self.root = root

    def build(self, schema: Any, key: str, index: int, depth: int) -> Any:
        if schema is True or not isinstance(schema, dict):
            return f"fake {key}"
        schema = _with_described_constraints(_camel_case(self.resolve(schema)))
        if "const" in schema:
            return schema["const"]
        enum = schema.get("enum")
        if isinstance(enum, list) and enum:
            return enum[index % len(enum)]
        if isinstance(schema.get("allOf"), list):
            return self.build(self.merge(schema), key, index, depth)
        for combinator in ("anyOf", "oneOf"):
            branches = schema.get(combinator)
            if isinstance(branches, list) and branches:
                return self.build(self.pick(branches, depth), key, index, depth + 1)
        kind = self.kind(schema, depth)
        if kind == "null":
            return None
        if kind == "boolean":
            return True
        if kind == "integer":
            return self.number(schema, index, integer=True)
        if kind == "number":
            return self.number(schema, index, integer=False)
        if kind == "array":
            return self.array(schema, key, depth)
        if kind == "object":
            return self.object(schema, depth)
        return self.string(schema, key, index)

    def flatten(self, schema: Any) -> dict | None:
        """`schema` with its $ref resolved, its allOf merged and its fields camelCased; None for `true`."""
        if not isinstance(schema, dict):
            return None
        schema = _with_described_constraints(_camel_case(self.resolve(schema)))
        return self.merge(schema) if isinstance(schema.get("allOf"), list) else schema

    def allowed_types(self, schema: Any, depth: int = 0) -> set[str] | None:
        """The JSON types `schema` takes (integer counted as a number too), or None when it takes any."""
        node = self.flatten(schema)
        if node is None or depth > MAX_DEPTH:
            return None
        if "const" in node:
            types = {_json_type(node["const"])}
        elif isinstance(node.get("enum"), list) and node["enum"]:
            types = {_json_type(value) for value in node["enum"]}
        elif any(isinstance(node.get(name), list) and node[name] for name in ("anyOf", "oneOf")):
            types = set()
            for name in ("anyOf", "oneOf"):
                for branch in node.get(name) or []:
                    branch_types = self.allowed_types(branch, depth + 1)
                    if branch_types is None:
                        return None
                    types |= branch_types
        else:
            declared = node.get("type")
            names = declared if isinstance(declared, list) else [declared] if isinstance(declared, str) else []
            types = {str(name).lower() for name in names} - {"type_unspecified", ""}
            if not types:
                if "properties" in node or "required" in node:
                    types = {"object"}
                elif "items" in node or "prefixItems" in node:
                    types = {"array"}
                else:
                    return None
        if node.get("nullable") is True:  # Gemini's OpenAPI dialect
            types.add("null")
        if "integer" in types:
            types.add("number")
        if "number" in types:
            types.add("integer")
        return types

    def wrong_value(self, schema: Any) -> Any:
        """A value of a type `schema` does not take, or _NO_VALUE when it takes any type."""
        types = self.allowed_types(schema)
        if types is None:
            return _NO_VALUE
        for value, value_types in _WRONG_VALUES:
            if not value_types & types:
                return value
        return _NO_VALUE

    def resolve(self, schema: dict, seen: int = 0) -> dict:
        ref = schema.get("$ref")
        if not isinstance(ref, str) or seen > 32:
            return schema
        target: Any = self.root
        if ref.startswith("#"):
            for part in ref[1:].split("/"):
                if not part:
                    continue
                part = part.replace("~1", "/").replace("~0", "~")
                target = target.get(part, {}) if isinstance(target, dict) else {}
        else:
            target = {}
        siblings = {k: v for k, v in schema.items() if k != "$ref"}
        merged = {**target, **siblings} if isinstance(target, dict) else siblings
        return self.resolve(merged, seen + 1)

    def merge(self, schema: dict) -> dict:
        merged: dict[str, Any] = {k: v for k, v in schema.items() if k != "allOf"}
        properties = dict(merged.get("properties") or {})
        required = list(merged.get("required") or [])
        for part in schema["allOf"]:
            part = self.resolve(part) if isinstance(part, dict) else {}
            if isinstance(part.get("allOf"), list):
                part = self.merge(part)
            properties.update(part.get("properties") or {})
            required += [name for name in part.get("required") or [] if name not in required]
            for name, value in part.items():
                if name not in ("properties", "required"):
                    merged.setdefault(name, value)
        if properties:
            merged["properties"] = properties
            merged.setdefault("type", "object")
        if required:
            merged["required"] = required
        return merged

    def pick(self, branches: list, depth: int) -> Any:
        def is_null(branch: Any) -> bool:
            if not isinstance(branch, dict):
                return False
            branch = self.resolve(branch)
            return str(branch.get("type", "")).lower() == "null"

        if depth >= MAX_DEPTH:
            for branch in branches:
                if is_null(branch):
                    return branch
        for branch in branches:
            if not is_null(branch):
                return branch
        return branches[0]

    @staticmethod
    def kind(schema: dict, depth: int) -> str:
        declared = schema.get("type")
        if isinstance(declared, list):
            names = [str(name).lower() for name in declared]
            if depth >= MAX_DEPTH and "null" in names:
                return "null"
            names = [name for name in names if name != "null"] or names
            return names[0] if names else "string"
        if isinstance(declared, str) and declared:
            name = declared.lower()
            return "string" if name == "type_unspecified" else name
        if "properties" in schema or "required" in schema:
            return "object"
        if "items" in schema or "prefixItems" in schema:
            return "array"
        return "string"

    def object(self, schema: dict, depth: int) -> dict:
        properties = schema.get("properties") or {}
        required = [name for name in schema.get("required") or [] if isinstance(name, str)]
        ordering = schema.get("propertyOrdering") or []
        names = [name for name in ordering if name in properties]
        names += [name for name in properties if name not in names]
        names += [name for name in required if name not in names]
        if depth >= MAX_DEPTH:
            names = [name for name in names if name in required]
        result: dict[str, Any] = {}
        for name in names:
            result[name] = self.build(properties.get(name, {"type": "string"}), name, 0, depth + 1)
        minimum = _int(schema.get("minProperties")) or 0
        extra = 1
        while len(result) < minimum:
            result[f"extra_{extra}"] = f"fake extra {extra}"
            extra += 1
        return result

    def array(self, schema: dict, key: str, depth: int) -> list:
        low = _int(schema.get("minItems")) or 0
        high = _int(schema.get("maxItems"))
        count = low if depth >= MAX_DEPTH else max(low, 1)
        if high is not None:
            count = min(count, high)
        prefix = schema.get("prefixItems") or []
        items = schema.get("items")
        if isinstance(items, list):  # draft-04 tuple form
            prefix, items = items, schema.get("additionalItems", {})
        count = max(count, len(prefix)) if high is None else count
        item_key = key[:-1] if key.endswith("s") and len(key) > 1 else key
        values = []
        for position in range(count):
            item_schema = prefix[position] if position < len(prefix) else (items if items is not None else {})
            values.append(self.build(item_schema, item_key, position, depth + 1))
        return values

    @staticmethod
    def string(schema: dict, key: str, index: int) -> str:
        value = _FORMATS.get(str(schema.get("format", "")).lower())
        if value is None:
            value = f"fake {key}" + (f" {index + 1}" if index else "")
        low = _int(schema.get("minLength")) or 0
        high = _int(schema.get("maxLength"))
        if len(value) < low:
            value += "x" * (low - len(value))
        if high is not None and len(value) > high:
            value = value[:high]
        return value

    @staticmethod
    def number(schema: dict, index: int, *, integer: bool) -> int | float:
        low = _num(schema.get("minimum"))
        high = _num(schema.get("maximum"))
        exclusive_low = schema.get("exclusiveMinimum")
        exclusive_high = schema.get("exclusiveMaximum")
        step = 1 if integer else 0.5
        if exclusive_low is True and low is not None:  # draft-04 boolean form
            low += step
        elif _num(exclusive_low) is not None:
            low = _num(exclusive_low) + step
        if exclusive_high is True and high is not None:
            high -= step
        elif _num(exclusive_high) is not None:
            high = _num(exclusive_high) - step
        value: float = (low if low is not None else 1) + index
        if high is not None and value > high:
            value = high if low is None else max(low, high)
        multiple = _num(schema.get("multipleOf"))
        if multiple:
            value = math.ceil(value / multiple) * multiple
            if high is not None and value > high:
                value -= multiple
        if integer:
            return int(math.ceil(value))
        return float(value)


# google-genai sends some Gemini schema fields in snake_case (`min_items`, `property_ordering`, `any_of`).
_SNAKE_FIELDS = {
    "min_items": "minItems",
    "max_items": "maxItems",
    "min_length": "minLength",
    "max_length": "maxLength",
    "min_properties": "minProperties",
    "any_of": "anyOf",
    "property_ordering": "propertyOrdering",
}


def _camel_case(schema: dict) -> dict:
    if not any(name in schema for name in _SNAKE_FIELDS):
        return schema
    schema = dict(schema)
    for snake, camel in _SNAKE_FIELDS.items():
        if snake in schema:
            schema.setdefault(camel, schema.pop(snake))
    return schema


_DESCRIBED = re.compile(r"\{([^{}]*)\}\s*$")
_NUMERIC_CONSTRAINTS = frozenset(
    {
        "minItems", "maxItems", "minLength", "maxLength", "minProperties", "minimum", "maximum",
        "exclusiveMinimum", "exclusiveMaximum", "multipleOf",
    }
)  # fmt: skip


def _with_described_constraints(schema: dict) -> dict:
    description = schema.get("description")
    if not isinstance(description, str) or not description.endswith("}"):
        return schema
    match = _DESCRIBED.search(description)
    if match is None:
        return schema
    extra: dict[str, Any] = {}
    for item in match.group(1).split(", "):
        name, _, value = item.partition(": ")
        if name in schema:
            continue
        if name in _NUMERIC_CONSTRAINTS and _num(value) is not None:
            extra[name] = _num(value)
        elif name == "format":
            extra[name] = value
    return {**schema, **extra} if extra else schema


def _int(value: Any) -> int | None:
    # Gemini sends int64 fields such as minItems as strings.
    try:
        return int(float(value)) if value is not None and not isinstance(value, bool) else None
    except (TypeError, ValueError):
        return None


def _num(value: Any) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None
