"""Input and output of the usage statistics endpoint (see usage.views.UsageStatsView)."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.utils.datastructures import MultiValueDict
from rest_framework import serializers

from providers.clients.base import ProviderType
from providers.models import Task
from usage.models import FAILURE_KINDS
from usage.selectors import DIMENSIONS, MAX_RANGE_DAYS, ConfigRef, DateRange, UsageGroup, UsageStats, UserRef

MAX_DAYS = 365
DEFAULT_DAYS = 30


# The largest id a database column holds (a signed 64-bit integer); a larger one is nobody's, and SQLite cannot
# even be asked about it.
MAX_ID = 2**63 - 1


class UsageStatsQuerySerializer(serializers.Serializer):
    """The query string: a range (`days`, or `start` and `end`), exact filters and the `group_by` dimensions.

    `group_by` may be repeated or comma-separated. Every other parameter takes one value; unknown parameters
    are refused, so a misspelt filter is a 400 rather than a silently unfiltered answer. `validated_data` has
    `period` (a DateRange), `group_by` (a list) and the filters as `usage_stats` takes them.
    """

    days = serializers.IntegerField(min_value=1, max_value=MAX_DAYS, required=False)
    start = serializers.DateField(required=False)
    end = serializers.DateField(required=False)
    provider = serializers.ChoiceField(choices=[t.value for t in ProviderType], required=False)
    config = serializers.IntegerField(min_value=1, max_value=MAX_ID, required=False)
    task = serializers.ChoiceField(choices=Task.choices, required=False)
    user = serializers.CharField(max_length=150, required=False, help_text="A user id, or else a username.")
    model = serializers.CharField(max_length=200, required=False)
    group_by = serializers.ListField(child=serializers.ChoiceField(choices=DIMENSIONS), required=False)

    def to_internal_value(self, data):
        if isinstance(data, MultiValueDict):
            data = self._single_values(data)
        return super().to_internal_value(data)

    def _single_values(self, query: MultiValueDict) -> dict[str, Any]:
        errors: dict[str, list[str]] = {}
        values: dict[str, Any] = {}
        for name in query:
            if name not in self.fields:
                errors[name] = [f"Unknown parameter; the parameters are {', '.join(self.fields)}."]
            elif name == "group_by":
                values[name] = [
                    part.strip() for item in query.getlist(name) for part in item.split(",") if part.strip()
                ]
            elif len(query.getlist(name)) > 1:
                errors[name] = ["Give one value."]
            else:
                values[name] = query[name]
        if errors:
            raise serializers.ValidationError(errors)
        return values

    def validate_user(self, value: str) -> int:
        # An id is taken as it is: the rollups keep the usage of users deleted since. ASCII digits only: "²" is a
        # digit to str.isdigit() but not to int().
        if value.isascii() and value.isdigit():
            if int(value) > MAX_ID:
                raise serializers.ValidationError("No user has this id or username.")
            return int(value)
        user_model = get_user_model()
        user_id = user_model.objects.filter(**{user_model.USERNAME_FIELD: value}).values_list("pk", flat=True).first()
        if user_id is None:
            raise serializers.ValidationError("No user has this id or username.")
        return user_id

    def validate_group_by(self, value: list[str]) -> list[str]:
        return list(dict.fromkeys(value))

    def validate(self, attrs):
        start, end, days = attrs.pop("start", None), attrs.pop("end", None), attrs.pop("days", None)
        if days is not None and (start is not None or end is not None):
            raise serializers.ValidationError({"days": ["Give either days or start and end, not both."]})
        if (start is None) != (end is None):
            missing = "end" if end is None else "start"
            raise serializers.ValidationError({missing: ["Give start and end together."]})
        if start is None:
            attrs["period"] = DateRange.last(days=days or DEFAULT_DAYS)
        elif start > end:
            raise serializers.ValidationError({"start": ["Must be on or before end."]})
        else:
            attrs["period"] = DateRange(start=start, end=end)
            if attrs["period"].days > MAX_RANGE_DAYS:
                raise serializers.ValidationError({"end": [f"The range is at most {MAX_RANGE_DAYS} days."]})
        attrs.setdefault("group_by", [])
        return attrs

    def selector_arguments(self) -> dict[str, Any]:
        """The validated query as keyword arguments of `usage.selectors.usage_stats`."""
        data = self.validated_data
        return {
            "period": data["period"],
            "group_by": data["group_by"],
            "provider_type": data.get("provider"),
            "config_id": data.get("config"),
            "task": data.get("task"),
            "user_id": data.get("user"),
            "model": data.get("model"),
        }


class UsageGroupSerializer(serializers.Serializer):
    """A group's dimension values (only those grouped by), then its numbers.

    The fields document the shape; `to_representation` builds the dict directly, because DRF's per-field
    machinery costs about 0.1 ms a group, which is most of the response time for hundreds of groups.
    """

    calls = serializers.IntegerField()
    successes = serializers.IntegerField()
    errors = serializers.IntegerField(help_text="Every attempt that did not succeed: the sum of errors_by_type.")
    errors_by_type = serializers.DictField(
        child=serializers.IntegerField(), help_text="A count for every failure kind, zeros included."
    )
    success_rate = serializers.FloatField(allow_null=True, help_text="successes / calls, 4 places; null: no calls.")
    input_tokens = serializers.IntegerField()
    output_tokens = serializers.IntegerField()
    cached_input_tokens = serializers.IntegerField()
    cache_write_tokens = serializers.IntegerField()
    reasoning_tokens = serializers.IntegerField()
    cost_usd = serializers.DecimalField(
        max_digits=30, decimal_places=10, coerce_to_string=True, help_text="Of the priced calls, exact."
    )
    unpriced_calls = serializers.IntegerField()
    avg_latency_ms = serializers.FloatField(allow_null=True)
    p95_latency_ms = serializers.IntegerField(allow_null=True, help_text="From the latency histogram.")

    def to_representation(self, instance: UsageGroup) -> dict[str, Any]:
        data = {name: _key_representation(value) for name, value in instance.key.items()}
        errors_by_type = instance.errors_by_type
        data.update(
            calls=instance.calls,
            successes=instance.successes,
            errors=instance.errors,
            errors_by_type={kind: errors_by_type[kind] for kind in FAILURE_KINDS},
            success_rate=instance.success_rate,
            input_tokens=instance.input_tokens,
            output_tokens=instance.output_tokens,
            cached_input_tokens=instance.cached_input_tokens,
            cache_write_tokens=instance.cache_write_tokens,
            reasoning_tokens=instance.reasoning_tokens,
            cost_usd=f"{instance.cost_usd:.10f}",
            unpriced_calls=instance.unpriced_calls,
            avg_latency_ms=instance.avg_latency_ms,
            p95_latency_ms=instance.p95_latency_ms,
        )
        return data


def _key_representation(value: Any) -> Any:
    if isinstance(value, ConfigRef):
        return {"id": value.id, "name": value.name}
    if isinstance(value, UserRef):
        return {"id": value.id, "username": value.username}
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return value


class RangeSerializer(serializers.Serializer):
    start = serializers.DateField()
    end = serializers.DateField()
    days = serializers.IntegerField()
    time_zone = serializers.CharField()


class FiltersSerializer(serializers.Serializer):
    provider = serializers.CharField(allow_null=True)
    config = serializers.IntegerField(allow_null=True)
    task = serializers.CharField(allow_null=True)
    user = serializers.IntegerField(allow_null=True)
    model = serializers.CharField(allow_null=True)


class UsageStatsSerializer(serializers.Serializer):
    """The answer: the resolved range and filters, the groups (none without group_by) and the totals."""

    range = RangeSerializer()
    filters = FiltersSerializer()
    group_by = serializers.ListField(child=serializers.CharField())
    groups = UsageGroupSerializer(many=True)
    totals = UsageGroupSerializer()

    @staticmethod
    def shape(stats: UsageStats, *, arguments: dict[str, Any]) -> dict[str, Any]:
        """Arrange `usage_stats`' answer and the arguments that asked for it for this serializer."""
        return {
            "range": {
                "start": stats.period.start,
                "end": stats.period.end,
                "days": stats.period.days,
                "time_zone": settings.TIME_ZONE,
            },
            "filters": {
                "provider": arguments["provider_type"],
                "config": arguments["config_id"],
                "task": arguments["task"],
                "user": arguments["user_id"],
                "model": arguments["model"],
            },
            "group_by": list(stats.group_by),
            "groups": stats.groups,
            "totals": stats.totals,
        }
