"""Getting and giving back a bearer token."""

from drf_spectacular.utils import OpenApiResponse, extend_schema, extend_schema_serializer
from rest_framework import serializers, status
from rest_framework.permissions import AllowAny, IsAuthenticated
from rest_framework.response import Response
from rest_framework.throttling import ScopedRateThrottle
from rest_framework.views import APIView

from aditus.authentication import BearerTokenAuthentication
from aditus.openapi import INVALID, NOT_AUTHENTICATED, NOT_JSON, THROTTLED
from aditus.services import ApiTokenRefused, api_token_obtain, api_token_revoke


class TokenObtainView(APIView):
    """Exchange a username, password and (for super-admins) a TOTP code for a bearer token.

    Refusals are 400 with `{"detail", "code"}`, as an OAuth2 token endpoint answers `invalid_grant`.
    """

    # The credentials are in the body: a stale bearer header or session cookie must not stand in the way.
    authentication_classes = ()
    permission_classes = (AllowAny,)
    throttle_classes = (ScopedRateThrottle,)
    throttle_scope = "auth"

    @extend_schema_serializer(component_name="TokenCredentials")
    class InputSerializer(serializers.Serializer):
        username = serializers.CharField(max_length=150)
        password = serializers.CharField(max_length=4096, trim_whitespace=False, write_only=True)
        otp_token = serializers.RegexField(
            r"^\d{6,8}$",
            required=False,
            allow_blank=True,
            error_messages={"invalid": "otp_token must be the 6 to 8 digit code shown by your authenticator app."},
        )

    @extend_schema_serializer(component_name="Token")
    class OutputSerializer(serializers.Serializer):
        token = serializers.CharField()
        expires_at = serializers.DateTimeField()
        mfa_verified = serializers.BooleanField()

    @extend_schema(
        tags=["auth"],
        operation_id="auth_token_obtain",
        summary="Obtain a bearer token",
        request=InputSerializer,
        responses={
            201: OutputSerializer,
            400: OpenApiResponse(
                INVALID.response,
                description="The input is invalid (messages per field) or not readable JSON (`detail`), or the login "
                "is refused (`detail`, and `code`: `invalid_credentials` or `mfa_enrolment_required`).",
            ),
            415: NOT_JSON,
            429: THROTTLED,
        },
        auth=[],
    )
    def post(self, request):
        serializer = self.InputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        try:
            token, secret = api_token_obtain(**serializer.validated_data, request=request._request)
        except ApiTokenRefused as refusal:
            return Response({"detail": str(refusal), "code": refusal.code}, status=status.HTTP_400_BAD_REQUEST)
        output = self.OutputSerializer(
            {"token": secret, "expires_at": token.expires_at, "mfa_verified": token.is_mfa_verified}
        )
        return Response(output.data, status=status.HTTP_201_CREATED)


class LogoutView(APIView):
    """Revoke the bearer token that authenticates this request."""

    authentication_classes = (BearerTokenAuthentication,)
    permission_classes = (IsAuthenticated,)
    # Counted per user (the caller is authenticated). It bounds the revocation writes one token holder can cause;
    # it cannot slow guessing, which fails at authentication before any throttle runs.
    throttle_classes = (ScopedRateThrottle,)
    throttle_scope = "auth"

    @extend_schema(
        tags=["auth"],
        operation_id="auth_logout",
        summary="Revoke this bearer token",
        request=None,
        responses={204: None, 401: NOT_AUTHENTICATED, 429: THROTTLED},
    )
    def post(self, request):
        api_token_revoke(token=request.auth)
        return Response(status=status.HTTP_204_NO_CONTENT)
