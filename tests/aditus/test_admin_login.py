import pytest
from django.test import Client

from tests.auth_fixtures import PASSWORD, totp_code, wrong_totp_code

pytestmark = pytest.mark.django_db


def login(client, user, code):
    return client.post(
        "/admin/login/?next=/admin/",
        {"username": user.username, "password": PASSWORD, "otp_token": code},
    )


def test_a_superadmin_with_one_device_logs_in_without_choosing_it(superadmin, superadmin_device):
    client = Client()
    response = login(client, superadmin, totp_code(superadmin_device))

    assert response.status_code == 302 and response["Location"] == "/admin/"
    assert client.get("/admin/providers/providerconfig/").status_code == 200


def test_a_wrong_code_keeps_the_admin_closed(superadmin, superadmin_device):
    client = Client()
    response = login(client, superadmin, wrong_totp_code(superadmin_device))

    assert response.status_code == 200
    assert client.get("/admin/providers/providerconfig/").status_code == 302


def test_a_superuser_without_a_device_cannot_log_in(superuser_without_otp):
    client = Client()
    response = login(client, superuser_without_otp, "123456")

    assert response.status_code == 200
    assert client.get("/admin/").status_code == 302
