from django.shortcuts import get_object_or_404
from rest_framework import status
from rest_framework.response import Response
from rest_framework.views import APIView

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


class ProviderConfigListCreateView(SuperAdminAPIView):
    def get(self, request):
        configs = ProviderConfig.objects.select_related("created_by", "updated_by")
        return Response(ProviderConfigOutputSerializer(configs, many=True).data)

    def post(self, request):
        serializer = ProviderConfigInputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        config = services.provider_config_create(user=request.user, data=serializer.validated_data)
        return Response(ProviderConfigOutputSerializer(config).data, status=status.HTTP_201_CREATED)


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


class ProviderConfigTestView(SuperAdminAPIView):
    def post(self, request, pk: int):
        config = get_object_or_404(ProviderConfig, pk=pk)
        result = services.provider_config_test(config=config, user=request.user)
        return Response(CredentialTestResultSerializer(result.as_dict()).data)


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
