"""seed_demo: the demo configs, created once, and pointed at the fake providers of each run."""

import json
from io import StringIO

import pytest
from django.contrib.admin.models import LogEntry
from django.core.management import call_command

from providers.models import ProviderConfig

pytestmark = pytest.mark.django_db


def seed(fake_url: str) -> str:
    out = StringIO()
    call_command("seed_demo", "--user", "ada", "--fake-url", fake_url, stdout=out)
    return out.getvalue()


def test_a_rerun_with_another_fake_port_repoints_the_demo_configs_and_keeps_other_changes(superadmin):
    assert seed("http://127.0.0.1:8900").count("created") == 3
    ProviderConfig.objects.filter(display_name="Claude Sonnet (demo)").update(priority=1)

    output = seed("http://127.0.0.1:8911/")

    assert "repointed  Gemini Fast (demo) to http://127.0.0.1:8911/gemini" in output
    assert sorted(ProviderConfig.objects.values_list("base_url", flat=True)) == [
        "http://127.0.0.1:8911/anthropic",
        "http://127.0.0.1:8911/gemini",
        "http://127.0.0.1:8911/openai/v1",
    ]
    assert ProviderConfig.objects.get(display_name="Claude Sonnet (demo)").priority == 1
    change = LogEntry.objects.filter(change_message__contains="8911/gemini").get()
    assert json.loads(change.change_message)[0]["changed"]["values"]["base url"] == [
        "http://127.0.0.1:8900/gemini",
        "http://127.0.0.1:8911/gemini",
    ]


def test_a_rerun_with_the_same_port_changes_nothing(superadmin):
    seed("http://127.0.0.1:8900")
    entries = LogEntry.objects.count()

    assert seed("http://127.0.0.1:8900").count("unchanged") == 3
    assert LogEntry.objects.count() == entries


def test_the_repointed_configs_work_against_the_fake_providers(superadmin, superadmin_api_client, fake_providers):
    seed("http://127.0.0.1:1")  # nothing listens there
    seed(fake_providers.url)

    for config in ProviderConfig.objects.all():
        result = superadmin_api_client.post(f"/api/v1/super-admin/providers/configs/{config.pk}/test").json()
        assert result["ok"] is True, (config.display_name, result)
