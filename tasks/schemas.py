"""Output schemas of the structured tasks, and their validators.

Each schema exists twice: `*_SCHEMA` is the full JSON Schema that the provider's answer is validated against;
`wire_schema()` of it is what is sent to the provider's structured-output mechanism. The two differ only in
keywords that not every provider takes (Anthropic's structured outputs refuse numeric and length bounds), which
move into the description instead, as the Anthropic SDK's own `transform_schema` does. Nullable values use
`anyOf` with `null`, the form all three providers accept.
"""

from __future__ import annotations

import copy
import json
from typing import Any

from jsonschema import Draft202012Validator

REMOTE_POLICIES = ["onsite", "hybrid", "remote", "unspecified"]
EMPLOYMENT_TYPES = ["full_time", "part_time", "contract", "temporary", "internship", "freelance", "unspecified"]
SENIORITIES = ["intern", "junior", "mid", "senior", "lead", "principal", "executive", "unspecified"]
SALARY_PERIODS = ["hour", "day", "week", "month", "year"]


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    return {"anyOf": [schema, {"type": "null"}]}


def _strings(description: str) -> dict[str, Any]:
    return {"type": "array", "items": {"type": "string"}, "description": description}


def _object(properties: dict[str, Any]) -> dict[str, Any]:
    # Every property required and nothing else allowed: OpenAI's strict mode insists on both.
    return {
        "type": "object",
        "properties": properties,
        "required": list(properties),
        "additionalProperties": False,
    }


JOB_POSTING_SCHEMA: dict[str, Any] = _object(
    {
        "title": {"type": "string", "minLength": 1, "description": "The job title as the posting states it."},
        "company": _nullable({"type": "string", "description": "The hiring company; null if not named."}),
        "location": _nullable({"type": "string", "description": "City/region/country; null if not stated."}),
        "remote_policy": {"type": "string", "enum": REMOTE_POLICIES},
        "employment_type": {"type": "string", "enum": EMPLOYMENT_TYPES},
        "seniority": {"type": "string", "enum": SENIORITIES},
        "salary": _nullable(
            _object(
                {
                    "min": _nullable({"type": "number", "minimum": 0}),
                    "max": _nullable({"type": "number", "minimum": 0}),
                    "currency": {"type": "string", "description": "ISO 4217 code, e.g. EUR."},
                    "period": {"type": "string", "enum": SALARY_PERIODS},
                }
            )
        ),
        "skills": _strings("Skills and technologies asked for."),
        "requirements": _strings("Requirements: experience, education, languages, permits."),
        "responsibilities": _strings("What the job holder will do."),
        "benefits": _strings("Benefits offered."),
        "language": {"type": "string", "description": "The posting's language as an ISO 639-1 code, e.g. en."},
        "summary": {"type": "string", "description": "Two or three sentences summing up the job."},
    }
)

IMAGE_VERDICT_SCHEMA: dict[str, Any] = _object(
    {
        "is_job_posting": {"type": "boolean", "description": "Whether the image shows a job posting."},
        "confidence": {"type": "number", "minimum": 0, "maximum": 1, "description": "How sure, from 0 to 1."},
        "reason": {"type": "string", "description": "One sentence explaining the verdict."},
        "extracted_text": {"type": "string", "description": "The text readable in the image; empty if none."},
    }
)

# Keywords some provider refuses in a structured-output schema; described in words instead.
_UNSUPPORTED = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "minLength", "maxLength")


def wire_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """Return `schema` without the keywords some provider refuses, each noted in the description."""
    schema = copy.deepcopy(schema)

    def strip(node: Any) -> None:
        if isinstance(node, dict):
            moved = {name: node.pop(name) for name in _UNSUPPORTED if name in node}
            if moved:
                note = "{" + ", ".join(f"{name}: {value}" for name, value in moved.items()) + "}"
                node["description"] = f"{node.get('description', '')} {note}".strip()
            for value in node.values():
                strip(value)
        elif isinstance(node, list):
            for value in node:
                strip(value)

    strip(schema)
    return schema


class OutputInvalid(Exception):
    """A provider's structured output is not JSON or does not match the schema; the message says where."""


class OutputSchema:
    """One output schema: what to send to the provider, and a compiled validator for the answer."""

    def __init__(self, name: str, schema: dict[str, Any]):
        Draft202012Validator.check_schema(schema)
        self.name = name
        self.schema = schema
        self.wire = wire_schema(schema)
        self._validator = Draft202012Validator(schema)

    def parse(self, text: str) -> Any:
        """Return the value in `text`; raise `OutputInvalid` naming the first problem."""
        try:
            value = json.loads(text)
        except ValueError:
            raise OutputInvalid("the output is not valid JSON") from None
        error = next(self._validator.iter_errors(value), None)
        if error is not None:
            where = "/".join(str(part) for part in error.absolute_path) or "(root)"
            # The validator's own message may quote the output at length: name the rule, not the value.
            raise OutputInvalid(f"{where}: fails '{error.validator}' of the {self.name} schema")
        return value


JOB_POSTING = OutputSchema("job_posting", JOB_POSTING_SCHEMA)
IMAGE_VERDICT = OutputSchema("job_image_verdict", IMAGE_VERDICT_SCHEMA)
