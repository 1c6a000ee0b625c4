"""A deleted config keeps the name it had in the statistics (API and dashboard), not `None`."""

import pytest

from providers.models import ProviderConfig
from providers.selectors import provider_config_names
from tests.usage.test_stats_api import at, record

pytestmark = pytest.mark.django_db

DAY = "2026-03-10"


def config_groups(client) -> list[tuple[dict, int]]:
    response = client.get("/api/v1/super-admin/providers/usage/stats", {"start": DAY, "end": DAY, "group_by": "config"})
    assert response.status_code == 200
    return [(group["config"], group["calls"]) for group in response.json()["groups"]]


@pytest.fixture
def used_config(provider_config):
    config = provider_config(display_name="Old GPT", provider_type="openai", model_name="gpt-4o")
    record(when=at(DAY, "10:00"), config=config)
    record(when=at(DAY, "11:00"), config=config)
    return config


def test_a_config_deleted_through_the_api_keeps_its_name(superadmin_api_client, used_config):
    pk = used_config.pk
    assert superadmin_api_client.delete(f"/api/v1/super-admin/providers/configs/{pk}").status_code == 204
    assert not ProviderConfig.objects.filter(pk=pk).exists()

    assert config_groups(superadmin_api_client) == [({"id": pk, "name": "Old GPT"}, 2)]


def test_a_config_renamed_then_deleted_in_the_admin_keeps_its_last_name(
    superadmin_session_client, superadmin_api_client, used_config
):
    pk = used_config.pk
    renamed = superadmin_api_client.patch(
        f"/api/v1/super-admin/providers/configs/{pk}", {"display_name": "GPT (retired)"}, format="json"
    )
    assert renamed.status_code == 200
    deleted = superadmin_session_client.post(f"/admin/providers/providerconfig/{pk}/delete/", {"post": "yes"})
    assert deleted.status_code == 302 and not ProviderConfig.objects.filter(pk=pk).exists()

    assert config_groups(superadmin_api_client) == [({"id": pk, "name": "GPT (retired)"}, 2)]


def test_names_of_live_and_deleted_configs_come_in_two_queries(
    superadmin_api_client, provider_config, django_assert_num_queries
):
    live = provider_config(display_name="Live")
    gone = provider_config(display_name="Gone")
    gone_pk = gone.pk
    superadmin_api_client.delete(f"/api/v1/super-admin/providers/configs/{gone_pk}")

    with django_assert_num_queries(2):  # the live configs, the audit entries of the others
        names = provider_config_names(ids=[live.pk, gone_pk, 0])

    assert names == {live.pk: "Live", gone_pk: "Gone"}
