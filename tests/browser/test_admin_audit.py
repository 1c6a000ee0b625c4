"""The audit page in a real browser: a deleted config's history is found through the configuration filter."""

import pytest

from providers.models import ProviderConfig
from tests.browser.conftest import log_in, save_screenshot

pytestmark = pytest.mark.django_db(transaction=True)

CONFIGS = "/api/v1/super-admin/providers/configs"


def test_a_superadmin_reads_the_history_of_a_deleted_config(
    page, live_server, superadmin, superadmin_device, superadmin_api_client, fake_providers
):
    body = {
        "provider_type": "claude",
        "api_key": "sk-ant-browser-audit-secret-key-9191",
        "model_name": "claude-sonnet-4-5",
        "display_name": "Claude Retired",
        "base_url": fake_providers.anthropic_base_url,
        "tasks": ["cover_letter"],
    }
    created = superadmin_api_client.post(CONFIGS, body, format="json").json()
    superadmin_api_client.patch(f"{CONFIGS}/{created['id']}", {"weight": 4, "is_active": False}, format="json")
    superadmin_api_client.post(f"{CONFIGS}/{created['id']}/test")
    superadmin_api_client.delete(f"{CONFIGS}/{created['id']}")
    assert not ProviderConfig.objects.exists()

    log_in(page, live_server, superadmin, superadmin_device)
    page.click("text=Audit log")
    page.click("#changelist-filter >> text=Claude Retired (deleted)")
    page.wait_for_url("**/admin/providers/auditentry/?config=*")
    save_screenshot(page, "admin-audit-deleted-config")

    actions = page.locator("td.field-action").all_inner_texts()
    assert actions == ["deleted", "credentials tested", "updated", "created"]
    details = page.inner_text("#result_list")
    assert "weight: 1 → 4" in details and "is active: True → False" in details
    assert "9191" not in page.content()
    assert page.locator("#result_list td.field-details").first.is_visible()
