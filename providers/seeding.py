"""Read a provider seed file, validate every entry, and plan what applying it would change.

The file is YAML:

    providers:
      - display_name: Gemini Fast          # the match key: an existing config of that name is updated
        provider_type: gemini
        model_name: gemini-2.5-flash
        api_key_env: GEMINI_API_KEY         # the NAME of an environment variable; keys never go in the file
        tasks: [extraction, image_validation]   # or `all`; tasks not listed are switched off
        priority: 10
        daily_token_limit: 2000000

Every other field is a field of the super-admin API (ProviderConfigInputSerializer), with its validation. A field an
entry leaves out keeps its stored value on an update (write `null` to clear a limit) and its default on a create.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from providers.fields import DecryptionError
from providers.models import TASK_FLAGS, ProviderConfig, Task
from providers.serializers import ProviderConfigInputSerializer

KEY_ENV = "api_key_env"
TASKS = "tasks"
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class SeedError(Exception):
    """The file cannot be applied; `problems` lists every reason, one line each, none showing a key."""

    def __init__(self, problems: list[str]):
        super().__init__("\n".join(problems))
        self.problems = problems


@dataclass
class SeedEntry:
    display_name: str
    # Validated field values, the plaintext key among them: kept out of the repr.
    data: dict[str, Any] = field(repr=False)
    config: ProviderConfig | None
    changed: list[str]

    @property
    def action(self) -> str:
        if self.config is None:
            return "created"
        return "changed" if self.changed else "unchanged"


def seed_file_read(path: str | Path) -> list[Any]:
    """Return the file's list of entries, or raise SeedError for a file that is not a seed file."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise SeedError([f"Cannot read {path}: {exc.strerror}."]) from None
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        # Only the position and the problem: the offending line itself could hold something secret.
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "not valid YAML"
        raise SeedError([f"{path} is not valid YAML{where}: {problem}."]) from None
    if not isinstance(document, dict) or not isinstance(document.get("providers"), list):
        raise SeedError([f"{path} must be a mapping with a `providers:` list of configs."])
    unknown = sorted(str(name) for name in document if name != "providers")
    if unknown:
        raise SeedError([f"{path}: unknown top-level key(s): {', '.join(unknown)} (only `providers:`)."])
    if not document["providers"]:
        raise SeedError([f"{path}: the `providers:` list is empty."])
    return document["providers"]


def seed_plan(entries: list[Any], *, environ: Mapping[str, str] | None = None) -> list[SeedEntry]:
    """Validate every entry against the database; return what each would do, or raise SeedError listing all errors."""
    environ = os.environ if environ is None else environ
    problems: list[str] = []
    plan: list[SeedEntry] = []
    seen: set[str] = set()
    for number, raw in enumerate(entries, start=1):
        name = raw.get("display_name") if isinstance(raw, dict) else None
        label = f"entry {number}" + (f" ({name})" if isinstance(name, str) and name else "")
        if isinstance(name, str) and name in seen:
            problems.append(f"{label}: display_name: another entry already has this name.")
            continue
        if isinstance(name, str):
            seen.add(name)
        try:
            plan.append(_entry_plan(raw, environ))
        except SeedError as exc:
            problems.extend(f"{label}: {problem}" for problem in exc.problems)
    if problems:
        raise SeedError(problems)
    return plan


def _entry_plan(raw: Any, environ: Mapping[str, str]) -> SeedEntry:
    if not isinstance(raw, dict):
        raise SeedError(["must be a mapping of field names to values."])
    data = {str(name): value for name, value in raw.items()}
    problems: list[str] = []
    if "api_key" in data:
        # Never echo the value: it is very likely a real key.
        problems.append(
            "api_key: keys never go in the file; put the key in an environment variable and name the variable "
            f"with `{KEY_ENV}:`."
        )
        del data["api_key"]
    env_name = data.pop(KEY_ENV, None)
    if env_name is None:
        problems.append(f"{KEY_ENV}: required: the name of the environment variable that holds the API key.")
    elif not isinstance(env_name, str) or not ENV_NAME.fullmatch(env_name):
        problems.append(f"{KEY_ENV}: must be an environment variable name such as GEMINI_API_KEY.")
    elif env_name not in environ:
        problems.append(f"{KEY_ENV}: the environment variable {env_name} is not set.")
    elif not environ[env_name].strip():
        problems.append(f"{KEY_ENV}: the environment variable {env_name} is empty.")
    else:
        data["api_key"] = environ[env_name]
    if TASKS in data:
        try:
            data.update(_task_flags(data.pop(TASKS), explicit=[flag for flag in TASK_FLAGS.values() if flag in data]))
        except SeedError as exc:
            problems.extend(exc.problems)

    name = data.get("display_name")
    config = ProviderConfig.objects.filter(display_name=name).first() if isinstance(name, str) else None
    serializer = ProviderConfigInputSerializer(config, data=data, partial=config is not None)
    if not serializer.is_valid():
        errors = dict(serializer.errors)
        if "api_key" not in data:
            errors.pop("api_key", None)  # already told against api_key_env above
        problems.extend(_error_lines(errors, env_name=env_name))
    if problems:
        raise SeedError(problems)
    values = dict(serializer.validated_data)
    return SeedEntry(
        display_name=values.get("display_name", name),
        data=values,
        config=config,
        changed=_changed_fields(config, values) if config is not None else [],
    )


def _task_flags(tasks: Any, *, explicit: list[str]) -> dict[str, bool]:
    if explicit:
        raise SeedError([f"{TASKS}: give either `tasks:` or the flags {', '.join(explicit)}, not both."])
    if tasks == "all":
        tasks = list(TASK_FLAGS)
    if not isinstance(tasks, list) or not all(isinstance(task, str) for task in tasks):
        raise SeedError([f"{TASKS}: must be `all` or a list of tasks: {', '.join(Task.values)}."])
    unknown = [task for task in tasks if task not in TASK_FLAGS]
    if unknown:
        raise SeedError([f"{TASKS}: unknown task(s) {', '.join(unknown)}; the tasks are {', '.join(Task.values)}."])
    return {flag: task in tasks for task, flag in TASK_FLAGS.items()}


def _error_lines(errors: Any, *, env_name: Any) -> list[str]:
    """Flatten DRF errors to `field: message` lines; the key's errors are told against its variable."""
    lines = []
    for name, messages in errors.items():
        shown = f"{KEY_ENV} ({env_name})" if name == "api_key" else name
        for message in messages if isinstance(messages, list) else [messages]:
            lines.append(f"{shown}: {message}")
    return lines


def _changed_fields(config: ProviderConfig, values: dict[str, Any]) -> list[str]:
    """The fields an update would change, as provider_config_update decides it (the key compared decrypted)."""
    changed = [name for name, value in values.items() if name != "api_key" and getattr(config, name) != value]
    if "api_key" in values:
        try:
            same_key = config.reveal_api_key() == values["api_key"]
        except DecryptionError:
            same_key = False  # the service replaces an unreadable key: a change
        if not same_key:
            changed.append("api_key")
    return changed
