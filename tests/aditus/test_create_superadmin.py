"""manage.py create_superadmin."""

from io import StringIO

import pytest
from django.contrib.auth import get_user_model
from django.core.management import CommandError, call_command
from django_otp.plugins.otp_totp.models import TOTPDevice

from aditus.management.commands.create_superadmin import Command
from aditus.models import ApiToken
from tests.auth_fixtures import PASSWORD, totp_code

NEW_PASSWORD = "Copper-Kettle-Harbour-19"
DEMO_KEY = "3132333435363738393031323334353637383930"

pytestmark = pytest.mark.django_db


def run(*args: str) -> str:
    out = StringIO()
    call_command("create_superadmin", *args, stdout=out, stderr=StringIO())
    return out.getvalue()


@pytest.fixture
def answers(monkeypatch):
    """Feed the getpass prompts from a list; record the prompts shown."""
    prompts: list[str] = []
    queue: list[str] = []

    def fake_getpass(prompt: str = "Password: ", stream=None) -> str:
        prompts.append(prompt)
        return queue.pop(0)

    monkeypatch.setattr("getpass.getpass", fake_getpass)
    monkeypatch.setattr("sys.stdin", Terminal())
    return queue, prompts


class Terminal(StringIO):
    """A stdin that is a terminal, as when an operator runs the command by hand."""

    def isatty(self) -> bool:
        return True


def test_without_a_terminal_it_names_the_environment_variable_option_instead_of_a_traceback(monkeypatch):
    monkeypatch.setattr("sys.stdin", StringIO(""))  # a script, CI, `docker run` without -t: no terminal

    with pytest.raises(CommandError) as refused:
        run("--username", "ada")

    assert "no terminal to prompt for the password" in str(refused.value)
    assert "--password-env" in str(refused.value)
    assert not get_user_model().objects.filter(username="ada").exists()


def test_a_prompt_cut_short_by_end_of_input_is_the_same_clear_error(monkeypatch):
    def end_of_input(prompt: str = "Password: ", stream=None) -> str:
        raise EOFError

    monkeypatch.setattr("sys.stdin", Terminal())
    monkeypatch.setattr("getpass.getpass", end_of_input)

    with pytest.raises(CommandError, match="--password-env"):
        run("--username", "ada")


def test_it_creates_a_superadmin_with_a_confirmed_device_from_a_password_in_the_environment(monkeypatch):
    monkeypatch.setenv("ADITUS_TEST_PASSWORD", NEW_PASSWORD)

    output = run("--username", "root", "--email", "Root@Example.COM", "--password-env", "ADITUS_TEST_PASSWORD")

    user = get_user_model().objects.get(username="root")
    assert user.is_superuser and user.is_staff and user.is_active
    assert user.email == "Root@example.com"
    assert user.check_password(NEW_PASSWORD)
    device = TOTPDevice.objects.get(user=user)
    assert device.confirmed
    assert "Created super-admin 'root'" in output
    assert device.config_url in output
    assert "otpauth://totp/aditus%3Aroot?secret=" in output
    assert "▀" in output or "▄" in output  # the QR code
    assert NEW_PASSWORD not in output


def test_it_prompts_twice_for_the_password(answers):
    queue, prompts = answers
    queue.extend([NEW_PASSWORD, NEW_PASSWORD])

    run("--username", "root")

    assert prompts == ["Password: ", "Password (again): "]
    assert get_user_model().objects.get(username="root").check_password(NEW_PASSWORD)


def test_it_refuses_passwords_that_do_not_match(answers):
    queue, _ = answers
    queue.extend([NEW_PASSWORD, NEW_PASSWORD + "!"])

    with pytest.raises(CommandError, match="do not match"):
        run("--username", "root")

    assert not get_user_model().objects.filter(username="root").exists()


def test_it_refuses_a_password_the_validators_reject(monkeypatch):
    monkeypatch.setenv("ADITUS_TEST_PASSWORD", "qwertyuiop")

    with pytest.raises(CommandError, match="too short") as raised:
        run("--username", "root", "--password-env", "ADITUS_TEST_PASSWORD")

    assert "too common" in str(raised.value)
    assert "qwertyuiop" not in str(raised.value)
    assert not get_user_model().objects.filter(username="root").exists()
    assert not TOTPDevice.objects.exists()


def test_it_refuses_an_unset_environment_variable(monkeypatch):
    monkeypatch.delenv("ADITUS_TEST_PASSWORD", raising=False)

    with pytest.raises(CommandError, match="ADITUS_TEST_PASSWORD is not set"):
        run("--username", "root", "--password-env", "ADITUS_TEST_PASSWORD")


def test_it_has_no_way_to_take_the_password_from_the_command_line():
    parser = Command().create_parser("manage.py", "create_superadmin")
    options = {option for action in parser._actions for option in action.option_strings}

    assert {option for option in options if "password" in option} == {"--password-env"}
    with pytest.raises(CommandError):
        run("--username", "root", "--password", NEW_PASSWORD)


def test_it_refuses_an_existing_user_without_update(monkeypatch, ordinary_user):
    monkeypatch.setenv("ADITUS_TEST_PASSWORD", NEW_PASSWORD)

    with pytest.raises(CommandError, match="--update"):
        run("--username", "olivia", "--password-env", "ADITUS_TEST_PASSWORD")

    ordinary_user.refresh_from_db()
    assert not ordinary_user.is_superuser
    assert ordinary_user.check_password(PASSWORD)


def test_update_resets_the_password_replaces_the_device_and_revokes_tokens(
    monkeypatch, superadmin, superadmin_device, superadmin_token
):
    monkeypatch.setenv("ADITUS_TEST_PASSWORD", NEW_PASSWORD)

    output = run("--username", "ada", "--update", "--password-env", "ADITUS_TEST_PASSWORD")

    superadmin.refresh_from_db()
    assert superadmin.check_password(NEW_PASSWORD)
    assert not TOTPDevice.objects.filter(pk=superadmin_device.pk).exists()
    new_device = TOTPDevice.objects.get(user=superadmin)
    assert new_device.confirmed
    assert new_device.key != superadmin_device.key
    token = ApiToken.objects.get()
    assert token.revoked_at is not None
    assert token.otp_device is None
    assert "1 old TOTP device(s) replaced, 1 API token(s) revoked" in output
    assert new_device.config_url in output


def test_update_makes_an_ordinary_user_a_superadmin(monkeypatch, ordinary_user):
    monkeypatch.setenv("ADITUS_TEST_PASSWORD", NEW_PASSWORD)

    run("--username", "olivia", "--update", "--password-env", "ADITUS_TEST_PASSWORD")

    ordinary_user.refresh_from_db()
    assert ordinary_user.is_superuser and ordinary_user.is_staff
    assert TOTPDevice.objects.get(user=ordinary_user).confirmed


def test_a_demo_can_fix_the_totp_secret(monkeypatch):
    monkeypatch.setenv("ADITUS_TEST_PASSWORD", NEW_PASSWORD)

    output = run("--username", "demo", "--password-env", "ADITUS_TEST_PASSWORD", "--totp-secret-hex", DEMO_KEY)

    device = TOTPDevice.objects.get(user__username="demo")
    assert device.key == DEMO_KEY
    assert "demo use only" in output
    assert device.verify_token(totp_code(device))


@pytest.mark.parametrize("key", ["not-hex-at-all", "31323334", "31" * 41])
def test_it_refuses_an_unusable_totp_secret_without_echoing_it(monkeypatch, key):
    monkeypatch.setenv("ADITUS_TEST_PASSWORD", NEW_PASSWORD)

    with pytest.raises(CommandError, match="--totp-secret-hex must") as raised:
        run("--username", "demo", "--password-env", "ADITUS_TEST_PASSWORD", "--totp-secret-hex", key)

    assert key not in str(raised.value)
    assert not get_user_model().objects.filter(username="demo").exists()
