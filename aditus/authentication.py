"""DRF authentication with `Authorization: Bearer <token>`."""

import functools

from django_otp.middleware import is_verified
from rest_framework import exceptions
from rest_framework.authentication import BaseAuthentication, get_authorization_header

from aditus.models import ApiToken

# token_urlsafe(32) gives 43 characters; anything much longer is not one of ours.
MAX_TOKEN_LENGTH = 128


class BearerTokenAuthentication(BaseAuthentication):
    """Authenticate with an ApiToken; `request.auth` is the token."""

    keyword = "Bearer"

    def authenticate(self, request):
        parts = get_authorization_header(request).split()
        if not parts or parts[0].lower() != self.keyword.lower().encode():
            return None
        if len(parts) == 1:
            raise exceptions.AuthenticationFailed("Invalid Authorization header: no token after 'Bearer'.")
        if len(parts) > 2:
            raise exceptions.AuthenticationFailed("Invalid Authorization header: the token contains spaces.")
        try:
            secret = parts[1].decode("ascii")
        except UnicodeDecodeError:
            raise exceptions.AuthenticationFailed("Invalid bearer token.") from None
        if len(secret) > MAX_TOKEN_LENGTH:
            raise exceptions.AuthenticationFailed("Invalid bearer token.")
        return self.authenticate_credentials(secret)

    def authenticate_credentials(self, secret: str):
        token = ApiToken.objects.for_secret(secret).select_related("user", "otp_device").first()
        if token is None:
            raise exceptions.AuthenticationFailed("Invalid bearer token.")
        if token.is_revoked:
            raise exceptions.AuthenticationFailed("This bearer token has been revoked; request a new one.")
        if token.is_expired():
            raise exceptions.AuthenticationFailed("This bearer token has expired; request a new one.")
        user = token.user
        if not user.is_active:
            raise exceptions.AuthenticationFailed("The account this bearer token belongs to is disabled.")
        token.mark_used()
        # Give token users the attributes OTPMiddleware gives session users, so `user.is_verified()` means
        # the same on both paths (IsVerifiedSuperAdmin checks the token itself all the same).
        user.otp_device = token.otp_device if token.is_mfa_verified else None
        user.is_verified = functools.partial(is_verified, user)
        return user, token

    def authenticate_header(self, request):
        return self.keyword
