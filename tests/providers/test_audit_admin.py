"""The audit page: every change to a provider config, read-only, filterable by config (deleted ones too), user,
action and date, with old -> new values of the fields an update changed, and never a key."""

from datetime import timedelta

import pytest
from django.contrib.admin.models import LogEntry
from django.utils import timezone
from django_otp.plugins.otp_totp.models import TOTPDevice

from aditus.services import api_token_issue
from providers.models import AuditEntry, ProviderConfig
from tests.auth_fixtures import bearer

pytestmark = pytest.mark.django_db

AUDIT = "/admin/providers/auditentry/"
CONFIGS = "/api/v1/super-admin/providers/configs"
KEY = "AIzaSyA-audited-secret-key-first-a1a1"
NEW_KEY = "AIzaSyA-audited-secret-key-second-b2b2"


@pytest.fixture
def history(superadmin_api_client, fake_providers, django_user_model):
    """A config created, changed, tested and re-keyed by ada; another created by ada and deleted by bob."""
    body = {
        "provider_type": "gemini",
        "api_key": KEY,
        "model_name": "gemini-2.5-flash",
        "display_name": "Gemini Audited",
        "base_url": fake_providers.gemini_base_url,
        "tasks": ["extraction"],
    }
    kept = superadmin_api_client.post(CONFIGS, body, format="json").json()
    superadmin_api_client.patch(
        f"{CONFIGS}/{kept['id']}", {"model_name": "gemini-2.5-pro", "priority": 50}, format="json"
    )
    superadmin_api_client.post(f"{CONFIGS}/{kept['id']}/test")
    superadmin_api_client.patch(f"{CONFIGS}/{kept['id']}", {"api_key": NEW_KEY}, format="json")
    gone = superadmin_api_client.post(CONFIGS, {**body, "display_name": "Old Claude"}, format="json").json()

    bob = django_user_model.objects.create_superuser("bob", "bob@example.com", "Another-Long-Passphrase-44")
    _, secret = api_token_issue(user=bob, otp_device=TOTPDevice.objects.create(user=bob, name="app", confirmed=True))
    superadmin_api_client.credentials(**bearer(secret))
    assert superadmin_api_client.delete(f"{CONFIGS}/{gone['id']}").status_code == 204
    return {"kept": kept["id"], "gone": gone["id"]}


def rows(client, **params) -> list[str]:
    response = client.get(AUDIT, params)
    assert response.status_code == 200
    page = response.content.decode()
    body = page[page.index("<tbody>") : page.index("</tbody>")] if "<tbody>" in page else ""
    return [row for row in body.split("<tr")[1:]]


def test_it_lists_every_kind_of_change_with_old_and_new_values_and_no_key(superadmin_session_client, history):
    response = superadmin_session_client.get(AUDIT)
    page = response.content.decode()

    assert response.status_code == 200
    assert len(rows(superadmin_session_client)) == 7
    for action in ("created", "updated", "credentials tested", "key rotated", "deleted"):
        assert f'<td class="field-action">{action}</td>' in page
    assert "model name: gemini-2.5-flash → gemini-2.5-pro" in page
    assert "priority: 100 → 50" in page
    assert "API key changed" in page
    assert 'Old Claude <span class="audit-deleted">(deleted)</span>' in page
    assert KEY not in page and NEW_KEY not in page and "a1a1" not in page and "b2b2" not in page


def test_it_filters_by_config_including_a_deleted_one(superadmin_session_client, history):
    page = superadmin_session_client.get(AUDIT).content.decode()
    assert "Old Claude (deleted)" in page  # offered in the configuration filter

    gone = rows(superadmin_session_client, config=history["gone"])
    kept = rows(superadmin_session_client, config=history["kept"])

    assert len(gone) == 2 and all("Old Claude" in row for row in gone)
    assert len(kept) == 5 and all("Gemini Audited" in row for row in kept)


def test_it_filters_by_user_action_and_date(superadmin_session_client, history, django_user_model):
    bob = django_user_model.objects.get(username="bob")
    by_bob = rows(superadmin_session_client, user__id__exact=bob.pk)
    assert len(by_bob) == 1 and "deleted" in by_bob[0]

    assert len(rows(superadmin_session_client, action="created")) == 2
    assert len(rows(superadmin_session_client, action="updated")) == 2  # the model and priority, the key's fields
    assert len(rows(superadmin_session_client, action="tested")) == 1
    assert len(rows(superadmin_session_client, action="rotated")) == 1
    assert len(rows(superadmin_session_client, action="deleted")) == 1

    LogEntry.objects.filter(action_flag=1).update(action_time=timezone.now() - timedelta(days=40))
    # What the filter's "Past 7 days" link sends.
    midnight = timezone.localtime().replace(hour=0, minute=0, second=0, microsecond=0)
    recent = rows(
        superadmin_session_client,
        action_time__gte=str(midnight - timedelta(days=7)),
        action_time__lt=str(midnight + timedelta(days=1)),
    )
    assert len(recent) == 5


def test_it_is_read_only(superadmin_session_client, history):
    entry = AuditEntry.objects.first()

    assert superadmin_session_client.get(f"{AUDIT}add/").status_code == 403
    assert superadmin_session_client.post(f"{AUDIT}{entry.pk}/delete/", {"post": "yes"}).status_code == 403
    change = superadmin_session_client.post(f"{AUDIT}{entry.pk}/change/", {"change_message": "rewritten"})
    assert change.status_code == 403
    assert LogEntry.objects.count() == 7
    assert "delete_selected" not in superadmin_session_client.get(AUDIT).content.decode()


def test_an_admin_form_save_records_old_and_new_values_without_the_key(superadmin_session_client, history):
    config = ProviderConfig.objects.get(pk=history["kept"])
    form = {
        "provider_type": "gemini",
        "display_name": "Gemini Audited",
        "model_name": "gemini-2.5-pro",
        "new_api_key": "AIzaSyA-typed-in-the-admin-c3c3c3",
        "base_url": config.base_url,
        "is_active": "on",
        "default_for_extraction": "on",
        "priority": "50",
        "weight": "3",
        "request_timeout_seconds": "60",
    }

    response = superadmin_session_client.post(f"/admin/providers/providerconfig/{config.pk}/change/", form)

    assert response.status_code == 302
    page = superadmin_session_client.get(AUDIT, {"config": config.pk, "action": "updated"}).content.decode()
    assert "weight: 1 → 3" in page and "API key changed" in page and "c3c3" not in page
