"""An encrypted model field on `cryptography`'s MultiFernet.

The keys come from `settings.FIELD_ENCRYPTION_KEYS` (never from SECRET_KEY): the first key encrypts, every key
decrypts, so a new key can be added first and the old one dropped after `rotate_encryption_keys`.

On the model instance the value is a `Sealed` object holding ciphertext; plaintext exists only for the moment a
caller calls `.reveal()`. Fernet is AES-128-CBC with an HMAC-SHA256 tag, under a 256-bit key split in two.
"""

from __future__ import annotations

import functools

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import models
from django.db.models.query_utils import DeferredAttribute


class DecryptionError(Exception):
    """No key in FIELD_ENCRYPTION_KEYS decrypts a stored value."""


@functools.lru_cache(maxsize=4)
def _fernet(keys: tuple[str, ...]) -> MultiFernet:
    if not keys:
        raise ImproperlyConfigured("FIELD_ENCRYPTION_KEYS is empty: encrypted fields need at least one key")
    return MultiFernet([Fernet(key) for key in keys])


def current_fernet() -> MultiFernet:
    return _fernet(tuple(settings.FIELD_ENCRYPTION_KEYS))


class Sealed:
    """An encrypted value. Its repr and str never show the plaintext."""

    __slots__ = ("token", "label")

    def __init__(self, token: str, label: str = "value"):
        self.token = token
        self.label = label

    @classmethod
    def seal(cls, plaintext: str, label: str = "value") -> Sealed:
        return cls(current_fernet().encrypt(plaintext.encode()).decode(), label)

    def reveal(self) -> str:
        try:
            return current_fernet().decrypt(self.token.encode()).decode()
        except InvalidToken:
            raise DecryptionError(
                f"Cannot decrypt {self.label}: no key in FIELD_ENCRYPTION_KEYS decrypts it. "
                "The keys are wrong, or the key that encrypted it was removed."
            ) from None

    def is_current(self) -> bool:
        """Whether the first (encrypting) key already encrypts this value."""
        try:
            Fernet(settings.FIELD_ENCRYPTION_KEYS[0]).decrypt(self.token.encode())
        except InvalidToken:
            return False
        return True

    def rotated(self) -> Sealed:
        """The same plaintext encrypted under the first key."""
        try:
            return Sealed(current_fernet().rotate(self.token.encode()).decode(), self.label)
        except InvalidToken:
            raise DecryptionError(
                f"Cannot re-encrypt {self.label}: no key in FIELD_ENCRYPTION_KEYS decrypts it."
            ) from None

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Sealed) and other.token == self.token

    def __hash__(self) -> int:
        return hash(self.token)

    def __repr__(self) -> str:
        return f"<Sealed {self.label}>"

    __str__ = __repr__


class _SealingAttribute(DeferredAttribute):
    """Seal plaintext the moment it is assigned, so it does not sit on the instance until save()."""

    def __set__(self, instance, value):
        if isinstance(value, str):
            value = Sealed.seal(value, self.field.label_for_errors)
        instance.__dict__[self.field.attname] = value


class EncryptedTextField(models.TextField):
    descriptor_class = _SealingAttribute

    @property
    def label_for_errors(self) -> str:
        model = getattr(self, "model", None)
        owner = f"{model._meta.label}." if model is not None else ""
        return f"{owner}{self.name}"

    def from_db_value(self, value, expression, connection):
        if value is None or value == "":
            return value
        return Sealed(value, self.label_for_errors)

    def to_python(self, value):
        if value is None or isinstance(value, Sealed):
            return value
        return Sealed.seal(str(value), self.label_for_errors)

    def get_prep_value(self, value):
        if value is None or value == "":
            return value
        if isinstance(value, str):
            value = Sealed.seal(value, self.label_for_errors)
        return value.token

    def value_to_string(self, obj):
        # Serialisation (dumpdata) carries ciphertext, never plaintext.
        value = self.value_from_object(obj)
        return value.token if isinstance(value, Sealed) else value

    def formfield(self, **kwargs):
        # Forms handle the key through their own write-only field.
        return None
