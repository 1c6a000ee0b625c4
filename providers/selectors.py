"""Read-only queries on provider configurations that other apps and pages share."""

from __future__ import annotations

from collections.abc import Iterable

from django.contrib.admin.models import LogEntry
from django.contrib.contenttypes.models import ContentType

from providers.models import ProviderConfig


def provider_config_names(*, ids: Iterable[int]) -> dict[int, str]:
    """Map config ids to display names, deleted configs included. Two queries at most.

    A deleted config keeps the name its last audit entry gives it (every delete through the API, the admin or a
    command writes one, naming the config as it was). A config deleted outside them (raw SQL, a shell) has no
    such entry and is left out.
    """
    wanted = {int(i) for i in ids if i}
    if not wanted:
        return {}
    names = dict(ProviderConfig.objects.filter(pk__in=wanted).values_list("pk", "display_name"))
    missing = wanted - names.keys()
    if missing:
        entries = (
            LogEntry.objects.filter(
                content_type=ContentType.objects.get_for_model(ProviderConfig),
                object_id__in=[str(pk) for pk in missing],
            )
            .order_by("-action_time", "-pk")
            .values_list("object_id", "object_repr")
        )
        for object_id, object_repr in entries:
            names.setdefault(int(object_id), object_repr)
    return names
