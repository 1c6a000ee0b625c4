"""Workflows on provider configurations: create, update, delete, test, rotate — each one audited.

Every change writes a Django admin `LogEntry` naming the user, the config and the fields changed. No key, masked
or not, goes into a log entry.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from decimal import Decimal
from typing import Any

from django.apps import apps
from django.contrib.admin.models import ADDITION, CHANGE, DELETION, LogEntry
from django.contrib.auth import get_user_model
from django.contrib.contenttypes.models import ContentType
from django.db import models, transaction

from providers.clients import get_client
from providers.clients.base import Endpoint, ProviderError, ProviderType
from providers.fields import DecryptionError, EncryptedTextField
from providers.models import ProviderConfig

logger = logging.getLogger(__name__)

KEY_FIELD = "api_key"

# A stored key that no FIELD_ENCRYPTION_KEYS key decrypts (an encryption key removed too early, or rotated in the
# wrong order): every credential test reports it the same way, as a failed test, never as a server error.
DECRYPTION_ERROR_TYPE = "decryption"
UNDECRYPTABLE_KEY_MESSAGE = (
    "The stored API key cannot be decrypted with the current FIELD_ENCRYPTION_KEYS; re-enter the key, or restore "
    "the encryption key that encrypted it."
)


@dataclass(frozen=True)
class CredentialTestResult:
    ok: bool
    error_type: str | None = None
    message: str = ""
    model: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "error_type": self.error_type, "message": self.message, "model": self.model}

    @property
    def summary(self) -> str:
        return "ok" if self.ok else f"failed ({self.error_type})"


def _field_label(name: str) -> str:
    return str(ProviderConfig._meta.get_field(name).verbose_name)


def audit_value(value: Any) -> Any:
    """A field value as the audit log keeps it: JSON's own types, decimals as exact strings."""
    if isinstance(value, Decimal):
        return str(value)
    if value is None or isinstance(value, bool | int | str):
        return value
    return str(value)


def change_message(*, changes: dict[str, tuple[Any, Any]], secret_fields: list[str] = ()) -> list[dict]:
    """Django's change message, with each non-secret field's old and new value (`values`: label -> [old, new]).

    `changes` maps field names to (old, new); `secret_fields` are named as changed, never with a value. Django's
    own rendering ("Changed Model name.") ignores the extra key; the audit page shows it.
    """
    labels = [_field_label(name) for name in [*changes, *secret_fields]]
    values = {_field_label(name): [audit_value(old), audit_value(new)] for name, (old, new) in changes.items()}
    return [{"changed": {"fields": labels, "values": values}}]


def audit_log(*, user, config: ProviderConfig | None, action_flag: int, message: str | list, repr_: str = "") -> None:
    """Write one LogEntry. `config` may be unsaved (a test before saving) or already deleted (repr_ given)."""
    content_type = ContentType.objects.get_for_model(ProviderConfig)
    if isinstance(message, list):
        message = json.dumps(message)
    LogEntry.objects.create(
        user_id=user.pk,
        content_type_id=content_type.pk,
        object_id=str(config.pk) if config is not None and config.pk else None,
        object_repr=(repr_ or str(config))[:200],
        action_flag=action_flag,
        change_message=message,
    )


def provider_credentials_check(*, endpoint: Endpoint, api_key: str) -> CredentialTestResult:
    """Ask the provider for the configured model: proves the key and the model without spending tokens."""
    try:
        model = get_client(endpoint.provider_type).check_credentials(endpoint, api_key=api_key)
    except ProviderError as error:
        return CredentialTestResult(ok=False, error_type=str(error.error_type), message=error.message)
    return CredentialTestResult(ok=True, message=f"The key works and {model} is available.", model=model)


@transaction.atomic
def provider_config_create(*, user, data: dict[str, Any]) -> ProviderConfig:
    data = dict(data)
    api_key = data.pop(KEY_FIELD)
    config = ProviderConfig(**data, created_by=user, updated_by=user)
    config.set_api_key(api_key)
    config.full_clean()
    config.save()
    audit_log(user=user, config=config, action_flag=ADDITION, message=[{"added": {}}])
    return config


@transaction.atomic
def provider_config_update(*, config: ProviderConfig, user, data: dict[str, Any]) -> ProviderConfig:
    """Apply changed fields. An omitted or empty key keeps the stored one; a new key is a rotation."""
    data = dict(data)
    new_key = data.pop(KEY_FIELD, None) or None
    changes = {name: (getattr(config, name), value) for name, value in data.items() if getattr(config, name) != value}
    for name, (_, value) in changes.items():
        setattr(config, name, value)
    rotated = new_key is not None and not _same_key(config, new_key)
    if rotated:
        config.set_api_key(new_key)
    if not changes and not rotated:
        return config
    config.updated_by = user
    config.full_clean()
    config.save()
    message = change_message(changes=changes, secret_fields=[KEY_FIELD] if rotated else [])
    audit_log(user=user, config=config, action_flag=CHANGE, message=message)
    if rotated:
        audit_log(user=user, config=config, action_flag=CHANGE, message="Rotated the API key.")
    return config


def _same_key(config: ProviderConfig, candidate: str) -> bool:
    try:
        return config.reveal_api_key() == candidate
    except DecryptionError:
        # A key no configured encryption key can read is being replaced: that is the fix, let it through.
        return False


def provider_config_rotate_key(*, config: ProviderConfig, user, api_key: str) -> ProviderConfig:
    return provider_config_update(config=config, user=user, data={KEY_FIELD: api_key})


@transaction.atomic
def provider_config_delete(*, config: ProviderConfig, user) -> None:
    repr_ = str(config)
    pk = config.pk
    config.delete()
    config.pk = pk
    audit_log(user=user, config=config, action_flag=DELETION, message="Deleted.", repr_=repr_)


def _stored_key_check(*, config: ProviderConfig, endpoint: Endpoint) -> CredentialTestResult:
    """Check `endpoint` with the config's stored key; a key that cannot be decrypted is a failed test."""
    try:
        api_key = config.reveal_api_key()
    except DecryptionError:
        return CredentialTestResult(ok=False, error_type=DECRYPTION_ERROR_TYPE, message=UNDECRYPTABLE_KEY_MESSAGE)
    return provider_credentials_check(endpoint=endpoint, api_key=api_key)


def provider_config_test(*, config: ProviderConfig, user) -> CredentialTestResult:
    """Test a saved config's credentials, record the result on it and in the audit log."""
    result = _stored_key_check(config=config, endpoint=config.endpoint())
    config.record_test(ok=result.ok, error="" if result.ok else f"{result.error_type}: {result.message}")
    audit_log(user=user, config=config, action_flag=CHANGE, message=f"Tested credentials: {result.summary}.")
    logger.info("credential test config=%s result=%s", config.pk, result.summary)
    return result


def provider_settings_test(
    *,
    user,
    provider_type: str,
    model_name: str,
    api_key: str,
    base_url: str = "",
    timeout: float = 30.0,
    display_name: str = "",
) -> CredentialTestResult:
    """Test credentials that are not saved (the "test before saving" flow); audited, nothing stored."""
    endpoint = Endpoint(
        provider_type=ProviderType(provider_type),
        model=model_name,
        base_url=base_url or None,
        timeout=timeout,
    )
    result = provider_credentials_check(endpoint=endpoint, api_key=api_key)
    label = display_name or f"{provider_type} {model_name}"
    audit_log(
        user=user,
        config=None,
        action_flag=CHANGE,
        message=f"Tested unsaved credentials: {result.summary}.",
        repr_=f"{label} (unsaved)",
    )
    logger.info("credential test unsaved provider=%s result=%s", provider_type, result.summary)
    return result


def provider_config_form_test(
    *,
    config: ProviderConfig,
    user,
    provider_type: str,
    model_name: str,
    api_key: str | None,
    base_url: str = "",
    timeout: float = 30.0,
    unsaved_changes: list[str],
) -> CredentialTestResult:
    """Test a saved config's change form as typed (`api_key` None: the stored key); audited against the config.

    Without unsaved changes to what a test depends on, this is `provider_config_test`: the result is recorded on
    the config. With some, the result describes settings that are not saved, so it goes into the config's history
    naming the changed fields, and the config's last-test columns keep describing its saved settings.
    """
    if not unsaved_changes:
        return provider_config_test(config=config, user=user)
    endpoint = Endpoint(
        provider_type=ProviderType(provider_type), model=model_name, base_url=base_url or None, timeout=timeout
    )
    if api_key:
        result = provider_credentials_check(endpoint=endpoint, api_key=api_key)
    else:
        result = _stored_key_check(config=config, endpoint=endpoint)
    audit_log(
        user=user,
        config=config,
        action_flag=CHANGE,
        message=f"Tested credentials with unsaved changes ({', '.join(unsaved_changes)}): {result.summary}.",
    )
    logger.info(
        "credential test config=%s unsaved_changes=%d result=%s", config.pk, len(unsaved_changes), result.summary
    )
    return result


@transaction.atomic
def provider_configs_set_active(*, configs, user, active: bool) -> int:
    """Activate or deactivate configs; returns how many changed. One audit entry per changed config."""
    to_change = list(configs.exclude(is_active=active))
    for config in to_change:
        config.is_active = active
        config.updated_by = user
        config.save(update_fields=["is_active", "updated_by", "updated_at"])
        audit_log(
            user=user,
            config=config,
            action_flag=CHANGE,
            message=change_message(changes={"is_active": (not active, active)}),
        )
    return len(to_change)


# --- operations (commands) ---


class ActingUserError(Exception):
    """No user, or no single obvious user, for a command to name in the audit log."""


def acting_user_get(*, username: str | None):
    """Return the superuser a command acts as: the one named, else the only active superuser."""
    user_model = get_user_model()
    superusers = user_model._default_manager.filter(is_superuser=True, is_active=True)
    if username:
        user = superusers.filter(**{user_model.USERNAME_FIELD: username}).first()
        if user is None:
            raise ActingUserError(f"No active superuser named {username!r}; --as must name one.")
        return user
    found = list(superusers[:2])
    if len(found) == 1:
        return found[0]
    if not found:
        raise ActingUserError("There is no active superuser to record in the audit log; create one first.")
    raise ActingUserError("There are several superusers; say which one acts (for the audit log) with --as USERNAME.")


def provider_config_rotate_key_tested(*, config: ProviderConfig, user, api_key: str) -> CredentialTestResult:
    """Test a new key against the config's provider and model; rotate to it only if it works. Both audited.

    The provider call happens outside any transaction, so no database connection waits on it.
    """
    result = provider_credentials_check(endpoint=config.endpoint(), api_key=api_key)
    audit_log(
        user=user,
        config=config,
        action_flag=CHANGE,
        message=f"Tested a new API key before rotating: {result.summary}.",
    )
    if result.ok:
        with transaction.atomic():
            provider_config_rotate_key(config=config, user=user, api_key=api_key)
            config.record_test(ok=True)
    return result


@dataclass(frozen=True)
class EncryptedColumn:
    model: type[models.Model]
    field: EncryptedTextField

    @property
    def label(self) -> str:
        return f"{self.model._meta.label}.{self.field.name}"


def encrypted_columns() -> list[EncryptedColumn]:
    """Every EncryptedTextField column of every installed, managed model."""
    return [
        EncryptedColumn(model, field)
        for model in apps.get_models()
        if model._meta.managed and not model._meta.proxy
        for field in model._meta.local_concrete_fields
        if isinstance(field, EncryptedTextField)
    ]


@dataclass
class ReencryptProgress:
    column: EncryptedColumn
    total: int
    seen: int = 0
    reencrypted: int = 0
    already_current: int = 0
    # Saved by someone else between our read and our write: left to them (and to a re-run).
    changed_meanwhile: int = 0
    # "id 7 (Gemini Fast)" for each value no key decrypts.
    undecryptable: list[str] = dataclass_field(default_factory=list)


def encrypted_column_reencrypt(
    *, column: EncryptedColumn, batch_size: int = 100, dry_run: bool = False
) -> Iterator[ReencryptProgress]:
    """Re-encrypt one column under the first FIELD_ENCRYPTION_KEYS key; yield the progress after each batch.

    Each batch is its own transaction, so an interrupted run keeps what it did and a re-run skips values already
    under the first key. A write happens only if the ciphertext is still the one read (one conditional UPDATE),
    so a key saved meanwhile is never overwritten with an older one. A value no key decrypts is left untouched.
    Not audited per row: the plaintext keys do not change.
    """
    manager = column.model._base_manager
    name = column.field.attname
    rows = manager.exclude(**{f"{name}__isnull": True}).exclude(**{name: ""}).order_by("pk")
    progress = ReencryptProgress(column=column, total=rows.count())
    last_pk = None
    while True:
        with transaction.atomic():
            page = rows if last_pk is None else rows.filter(pk__gt=last_pk)
            batch = list(page.values_list("pk", name)[:batch_size])
            if not batch:
                return
            for pk, sealed in batch:
                if sealed.is_current():
                    progress.already_current += 1
                    continue
                try:
                    fresh = sealed.rotated()
                except DecryptionError:
                    progress.undecryptable.append(f"id {pk} ({manager.get(pk=pk)})")
                    continue
                # Filtering on the Sealed value compares ciphertext: the write is conditional on no one else's.
                if dry_run or manager.filter(pk=pk, **{name: sealed}).update(**{name: fresh}):
                    progress.reencrypted += 1
                else:
                    progress.changed_meanwhile += 1
        progress.seen += len(batch)
        last_pk = batch[-1][0]
        yield progress
