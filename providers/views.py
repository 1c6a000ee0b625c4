from django.shortcuts import get_object_or_404
from drf_spectacular.utils import OpenApiResponse, extend_schema, extend_schema_view
from rest_framework import status
from rest_framework.response import Response
from rest_framework.views import APIView

from aditus.openapi import INVALID, NOT_FOUND, NOT_JSON, SUPERADMIN_REFUSALS
from aditus.permissions import IsVerifiedSuperAdmin
from providers import services
from providers.models import ProviderConfig
from providers.serializers import (
    CredentialTestResultSerializer,
    ProviderConfigInputSerializer,
    ProviderConfigOutputSerializer,
    ProviderSettingsTestSerializer,
)


class SuperAdminAPIView(APIView):
    permission_classes = [IsVerifiedSuperAdmin]


CONFIG = ProviderConfigOutputSerializer
TEST_RESULT = OpenApiResponse(
    CredentialTestResultSerializer, description="The outcome of a test call; `ok` false says why it failed."
)


@extend_schema_view(
    get=extend_schema(
        operation_id="provider_configs_list",
        summary="List the provider configurations",
        responses={200: CONFIG(many=True), **SUPERADMIN_REFUSALS},
    ),
    post=extend_schema(
        operation_id="provider_config_create",
        summary="Create a provider configuration",
        request=ProviderConfigInputSerializer,
        responses={201: CONFIG, 400: INVALID, **SUPERADMIN_REFUSALS, 415: NOT_JSON},
    ),
)
@extend_schema(tags=["providers"])
class ProviderConfigListCreateView(SuperAdminAPIView):
    def get(self, request):
        configs = ProviderConfig.objects.select_related("created_by", "updated_by")
        return Response(ProviderConfigOutputSerializer(configs, many=True).data)

    def post(self, request):
        serializer = ProviderConfigInputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        config = services.provider_config_create(user=request.user, data=serializer.validated_data)
        return Response(ProviderConfigOutputSerializer(config).data, status=status.HTTP_201_CREATED)


@extend_schema_view(
    get=extend_schema(
        operation_id="provider_config_retrieve",
        summary="Show a provider configuration",
        responses={200: CONFIG, **SUPERADMIN_REFUSALS, 404: NOT_FOUND},
    ),
    put=extend_schema(
        operation_id="provider_config_update",
        summary="Replace a provider configuration",
        description="An omitted or empty `api_key` keeps the stored key.",
        request=ProviderConfigInputSerializer,
        responses={200: CONFIG, 400: INVALID, **SUPERADMIN_REFUSALS, 404: NOT_FOUND, 415: NOT_JSON},
    ),
    patch=extend_schema(
        operation_id="provider_config_partial_update",
        summary="Change some fields of a provider configuration",
        description="An omitted or empty `api_key` keeps the stored key.",
        request=ProviderConfigInputSerializer,
        responses={200: CONFIG, 400: INVALID, **SUPERADMIN_REFUSALS, 404: NOT_FOUND, 415: NOT_JSON},
    ),
    delete=extend_schema(
        operation_id="provider_config_destroy",
        summary="Delete a provider configuration",
        responses={204: None, **SUPERADMIN_REFUSALS, 404: NOT_FOUND},
    ),
)
@extend_schema(tags=["providers"])
class ProviderConfigDetailView(SuperAdminAPIView):
    def get_object(self, pk: int) -> ProviderConfig:
        return get_object_or_404(ProviderConfig.objects.select_related("created_by", "updated_by"), pk=pk)

    def get(self, request, pk: int):
        return Response(ProviderConfigOutputSerializer(self.get_object(pk)).data)

    def put(self, request, pk: int):
        return self._update(request, pk, partial=False)

    def patch(self, request, pk: int):
        return self._update(request, pk, partial=True)

    def _update(self, request, pk: int, *, partial: bool):
        config = self.get_object(pk)
        serializer = ProviderConfigInputSerializer(config, data=request.data, partial=partial)
        serializer.is_valid(raise_exception=True)
        config = services.provider_config_update(config=config, user=request.user, data=serializer.validated_data)
        return Response(ProviderConfigOutputSerializer(config).data)

    def delete(self, request, pk: int):
        services.provider_config_delete(config=self.get_object(pk), user=request.user)
        return Response(status=status.HTTP_204_NO_CONTENT)


@extend_schema_view(
    post=extend_schema(
        tags=["providers"],
        operation_id="provider_config_test",
        summary="Test a saved provider configuration",
        description="Make a small call with the stored key and record the outcome on the configuration.",
        request=None,
        responses={200: TEST_RESULT, **SUPERADMIN_REFUSALS, 404: NOT_FOUND},
    )
)
class ProviderConfigTestView(SuperAdminAPIView):
    def post(self, request, pk: int):
        config = get_object_or_404(ProviderConfig, pk=pk)
        result = services.provider_config_test(config=config, user=request.user)
        return Response(CredentialTestResultSerializer(result.as_dict()).data)


@extend_schema_view(
    post=extend_schema(
        tags=["providers"],
        operation_id="provider_settings_test",
        summary="Test provider settings before saving them",
        description="Make a small call with the given settings; nothing is stored.",
        request=ProviderSettingsTestSerializer,
        responses={200: TEST_RESULT, 400: INVALID, **SUPERADMIN_REFUSALS, 415: NOT_JSON},
    )
)
class ProviderSettingsTestView(SuperAdminAPIView):
    def post(self, request):
        serializer = ProviderSettingsTestSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        result = services.provider_settings_test(
            user=request.user,
            provider_type=data["provider_type"],
            model_name=data["model_name"],
            api_key=data["api_key"],
            base_url=data.get("base_url", ""),
            timeout=float(data.get("request_timeout_seconds", 30)),
            display_name=data.get("display_name", ""),
        )
        return Response(CredentialTestResultSerializer(result.as_dict()).data)
