import pytest
from django.core.management import CommandError, call_command

from tests.auth_fixtures import totp_code

pytestmark = pytest.mark.django_db


def test_it_prints_the_current_code_in_debug(superadmin, superadmin_device, settings, capsys):
    settings.DEBUG = True
    call_command("totp_code", superadmin.username)
    assert capsys.readouterr().out.strip() == totp_code(superadmin_device)


def test_it_refuses_to_run_without_debug(superadmin, settings):
    settings.DEBUG = False
    with pytest.raises(CommandError, match="only runs with DEBUG on"):
        call_command("totp_code", superadmin.username)


def test_it_names_a_user_without_a_device(superuser_without_otp, settings):
    settings.DEBUG = True
    with pytest.raises(CommandError, match="No confirmed TOTP device"):
        call_command("totp_code", superuser_without_otp.username)
