from rest_framework.response import Response
from rest_framework.views import APIView

from aditus.permissions import IsVerifiedSuperAdmin
from usage.selectors import usage_stats
from usage.serializers import UsageStatsQuerySerializer, UsageStatsSerializer


class UsageStatsView(APIView):
    """Calls, errors, tokens, cost and latency for a range of days, grouped and filtered (usage.serializers)."""

    permission_classes = [IsVerifiedSuperAdmin]

    def get(self, request):
        query = UsageStatsQuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        arguments = query.selector_arguments()
        stats = usage_stats(**arguments)
        return Response(UsageStatsSerializer(UsageStatsSerializer.shape(stats, arguments=arguments)).data)
