from drf_spectacular.utils import extend_schema, extend_schema_view
from rest_framework.response import Response
from rest_framework.views import APIView

from aditus.openapi import INVALID_QUERY, SUPERADMIN_REFUSALS
from aditus.permissions import IsVerifiedSuperAdmin
from usage.selectors import usage_stats
from usage.serializers import UsageStatsQuerySerializer, UsageStatsSerializer


@extend_schema_view(
    get=extend_schema(
        tags=["usage"],
        operation_id="usage_stats",
        summary="Usage statistics",
        parameters=[UsageStatsQuerySerializer],
        responses={200: UsageStatsSerializer, 400: INVALID_QUERY, **SUPERADMIN_REFUSALS},
    )
)
class UsageStatsView(APIView):
    """Calls, errors, tokens, cost and latency for a range of days, grouped and filtered (usage.serializers)."""

    permission_classes = [IsVerifiedSuperAdmin]

    def get(self, request):
        query = UsageStatsQuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        arguments = query.selector_arguments()
        stats = usage_stats(**arguments)
        return Response(UsageStatsSerializer(UsageStatsSerializer.shape(stats, arguments=arguments)).data)
