"""Bearer-token authentication: `Authorization: Bearer <token>`.

`bearer_token_user` does the work and raises a plain `InvalidBearerToken`, so both the DRF class below and the
async task views (which are not DRF views) authenticate the same way.
"""

import functools

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
    Makes one query (token, user and OTP device together), plus a write at most once a minute (`mark_used`).
    """
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
    return token_user(secret)


def token_user(secret: str):
    """Return (user, token) for a token's plaintext; raise `InvalidBearerToken` if it does not authenticate."""
    token = ApiToken.objects.for_secret(secret).select_related("user", "otp_device").first()
    if token is None:
        raise InvalidBearerToken("Invalid bearer token.")
    if token.is_revoked:
        raise InvalidBearerToken("This bearer token has been revoked; request a new one.")
    if token.is_expired():
        raise InvalidBearerToken("This bearer token has expired; request a new one.")
    user = token.user
    if not user.is_active:
        raise InvalidBearerToken("The account this bearer token belongs to is disabled.")
    token.mark_used()
    # Give token users the attributes OTPMiddleware gives session users, so `user.is_verified()` means
    # the same on both paths (IsVerifiedSuperAdmin checks the token itself all the same).
    user.otp_device = token.otp_device if token.is_mfa_verified else None
    user.is_verified = functools.partial(is_verified, user)
    return user, token


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
