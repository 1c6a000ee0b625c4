"""Bearer-token authentication: `Authorization: Bearer <token>`.

`bearer_token_user` does the work and raises a plain `InvalidBearerToken`, so both the DRF class below and the
async task views (which are not DRF views) authenticate the same way.
"""

from __future__ import annotations

import functools
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from django.db import connections, router
from django.db.models import Field, Model
from django_otp.middleware import is_verified
from rest_framework import exceptions
from rest_framework.authentication import BaseAuthentication, get_authorization_header

from aditus.models import ApiToken

# token_urlsafe(32) gives 43 characters; anything much longer is not one of ours.
MAX_TOKEN_LENGTH = 128
KEYWORD = "Bearer"


class InvalidBearerToken(Exception):
    """A bearer header was sent but does not authenticate anyone; the message says why."""


def bearer_token_user(header: bytes | str):
    """Return (user, token) for an `Authorization` header value; None when it is not a bearer header.

    Raise `InvalidBearerToken` for a malformed, unknown, revoked or expired token or a disabled account.
    Makes one query (token, user and OTP device together, hand-written: see `_token_lookup`), plus a write at
    most once a minute (`mark_used`).
    """
    secret = bearer_token_secret(header)
    if secret is None:
        return None
    return token_user(secret)


def bearer_token_secret(header: bytes | str) -> str | None:
    """The token in an `Authorization` header value; None when it is not a bearer header. Raise
    `InvalidBearerToken` when it is one but malformed. No query."""
    if isinstance(header, str):
        header = header.encode("latin-1", "replace")
    parts = header.split()
    if not parts or parts[0].lower() != KEYWORD.lower().encode():
        return None
    if len(parts) == 1:
        raise InvalidBearerToken("Invalid Authorization header: no token after 'Bearer'.")
    if len(parts) > 2:
        raise InvalidBearerToken("Invalid Authorization header: the token contains spaces.")
    try:
        secret = parts[1].decode("ascii")
    except UnicodeDecodeError:
        raise InvalidBearerToken("Invalid bearer token.") from None
    if len(secret) > MAX_TOKEN_LENGTH:
        raise InvalidBearerToken("Invalid bearer token.")
    return secret


_NOT_READ = object()


def token_user(secret: str, *, row: tuple | None = _NOT_READ, record_use: bool = True):
    """Return (user, token) for a token's plaintext; raise `InvalidBearerToken` if it does not authenticate.

    `row` is the result of `token_query(secret)` when the caller ran it (None: no such token); without it,
    the query runs here. With `record_use` false the caller records the use (`token.mark_used()`), which
    writes at most once a minute.
    """
    if row is _NOT_READ:
        token = _token_with_user_and_device(ApiToken.hash_secret(secret))
    else:
        token = _token_from_row(row, _token_connection())
    if token is None:
        raise InvalidBearerToken("Invalid bearer token.")
    if token.is_revoked:
        raise InvalidBearerToken("This bearer token has been revoked; request a new one.")
    if token.is_expired():
        raise InvalidBearerToken("This bearer token has expired; request a new one.")
    user = token.user
    if not user.is_active:
        raise InvalidBearerToken("The account this bearer token belongs to is disabled.")
    if record_use:
        token.mark_used()
    # Give token users the attributes OTPMiddleware gives session users, so `user.is_verified()` means
    # the same on both paths (IsVerifiedSuperAdmin checks the token itself all the same).
    user.otp_device = token.otp_device if token.is_mfa_verified else None
    user.is_verified = _IsVerified(user)
    return user, token


class _IsVerified:
    """`user.is_verified()` as OTPMiddleware gives it (`functools.partial(is_verified, user)`), holding the user
    weakly: set on the user, a partial made a reference cycle of every authenticated request, freed only by the
    garbage collector's full collections."""

    __slots__ = ("_user",)

    def __init__(self, user):
        self._user = weakref.ref(user)

    def __call__(self) -> bool:
        return is_verified(self._user())


def token_query(secret: str) -> tuple[str, list[str]]:
    """The token lookup for a plaintext (SQL and parameters), for a caller that sends it together with other
    statements; hand its row (or None) to `token_user`."""
    connection = _token_connection()
    sql, _parts = _token_lookup(connection.vendor, connection.alias)
    return sql, [ApiToken.hash_secret(secret)]


@dataclass(frozen=True)
class _Part:
    """One model of the token lookup: its concrete fields, in order, and each field's value converters."""

    model: type[Model]
    fields: tuple[Field, ...]
    converters: tuple[tuple[tuple[Callable, ...], Any], ...]  # per field: (converters, the column expression)

    @classmethod
    def of(cls, model: type[Model], alias: str, connection) -> _Part:
        fields = tuple(model._meta.concrete_fields)
        converters = []
        for field in fields:
            column = field.get_col(alias)
            converters.append(
                (tuple(connection.ops.get_db_converters(column) + field.get_db_converters(connection)), column)
            )
        return cls(model, fields, tuple(converters))

    def instance(self, row: tuple, connection) -> Model | None:
        values = list(row)
        for position, (functions, column) in enumerate(self.converters):
            for function in functions:
                values[position] = function(values[position], column, connection)
        if values[0] is None:  # the primary key of a LEFT JOIN that found nothing
            return None
        return self.model.from_db(connection.alias, [field.attname for field in self.fields], values)


@functools.cache
def _token_lookup(vendor: str, alias: str) -> tuple[str, tuple[_Part, _Part, _Part]]:
    """The token lookup as one hand-written query, built from the models' metadata, and its three parts.

    `ApiToken.objects.for_secret(...).select_related("user", "otp_device")` compiles to the same query, but
    compiling it cost about 0.6 ms of CPU on every authenticated request.
    """
    connection = connections[alias]
    quote = connection.ops.quote_name
    device_model = ApiToken._meta.get_field("otp_device").related_model
    user_model = ApiToken._meta.get_field("user").related_model
    parts = (
        _Part.of(ApiToken, "t", connection),
        _Part.of(user_model, "u", connection),
        _Part.of(device_model, "d", connection),
    )
    columns = ", ".join(
        f"{alias}.{quote(field.column)}" for alias, part in zip("tud", parts, strict=True) for field in part.fields
    )
    token_meta = ApiToken._meta
    sql = (
        f"SELECT {columns} FROM {quote(token_meta.db_table)} t "  # noqa: S608 - identifiers from the models
        f"INNER JOIN {quote(user_model._meta.db_table)} u ON u.{quote(user_model._meta.pk.column)} = "
        f"t.{quote(token_meta.get_field('user').column)} "
        f"LEFT JOIN {quote(device_model._meta.db_table)} d ON d.{quote(device_model._meta.pk.column)} = "
        f"t.{quote(token_meta.get_field('otp_device').column)} "
        f"WHERE t.{quote(token_meta.get_field('token_hash').column)} = %s"
    )
    return sql, parts


def _token_connection():
    return connections[router.db_for_read(ApiToken)]


def _token_with_user_and_device(token_hash: str) -> ApiToken | None:
    """The token with that hash, its user and its OTP device (or None) loaded: one query."""
    connection = _token_connection()
    sql, _parts = _token_lookup(connection.vendor, connection.alias)
    with connection.cursor() as cursor:
        cursor.execute(sql, [token_hash])
        row = cursor.fetchone()
    return _token_from_row(row, connection)


def _token_from_row(row: tuple | None, connection) -> ApiToken | None:
    if row is None:
        return None
    _sql, (token_part, user_part, device_part) = _token_lookup(connection.vendor, connection.alias)
    token_end = len(token_part.fields)
    user_end = token_end + len(user_part.fields)
    token = token_part.instance(row[:token_end], connection)
    token.user = user_part.instance(row[token_end:user_end], connection)
    token.otp_device = device_part.instance(row[user_end:], connection)
    return token


class BearerTokenAuthentication(BaseAuthentication):
    """Authenticate with an ApiToken; `request.auth` is the token."""

    keyword = KEYWORD

    def authenticate(self, request):
        try:
            return bearer_token_user(get_authorization_header(request))
        except InvalidBearerToken as error:
            raise exceptions.AuthenticationFailed(str(error)) from None

    def authenticate_credentials(self, secret: str):
        try:
            return token_user(secret)
        except InvalidBearerToken as error:
            raise exceptions.AuthenticationFailed(str(error)) from None

    def authenticate_header(self, request):
        return self.keyword
