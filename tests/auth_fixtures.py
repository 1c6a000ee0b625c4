"""Users, tokens and clients for tests that need an identity. Load as a plugin (pytest_plugins or `-p`).

Every user's password is PASSWORD. Models are imported inside the fixtures because plugins load before Django.
"""

import pytest

PASSWORD = "Quiet-Lantern-Orbit-73"


def totp_code(device) -> str:
    """Return the code `device` accepts right now, zero-padded as an authenticator app shows it."""
    from django_otp.oath import totp

    code = totp(device.bin_key, step=device.step, t0=device.t0, digits=device.digits, drift=device.drift)
    return f"{code:0{device.digits}d}"


def wrong_totp_code(device) -> str:
    """Return a well-formed code that `device` refuses at every step its tolerance allows."""
    from django_otp.oath import TOTP

    accepted = {
        TOTP(device.bin_key, device.step, device.t0, device.digits, device.drift + offset).token()
        for offset in range(-device.tolerance - 1, device.tolerance + 2)
    }
    return next(f"{code:0{device.digits}d}" for code in range(10**device.digits) if code not in accepted)


def bearer(secret: str) -> dict[str, str]:
    """Return test-client keyword arguments that send `secret` as a bearer token."""
    return {"HTTP_AUTHORIZATION": f"Bearer {secret}"}


@pytest.fixture
def api_client():
    """An anonymous DRF APIClient."""
    from rest_framework.test import APIClient

    return APIClient()


@pytest.fixture
def ordinary_user(db, django_user_model):
    """An active user who is neither staff nor superuser."""
    return django_user_model.objects.create_user("olivia", "olivia@example.com", PASSWORD)


@pytest.fixture
def superuser_without_otp(db, django_user_model):
    """A superuser with no TOTP device: never a verified super-admin."""
    return django_user_model.objects.create_superuser("sam", "sam@example.com", PASSWORD)


@pytest.fixture
def superadmin(db, django_user_model):
    """A superuser with one confirmed TOTP device (see `superadmin_device`)."""
    from django_otp.plugins.otp_totp.models import TOTPDevice

    user = django_user_model.objects.create_superuser("ada", "ada@example.com", PASSWORD)
    TOTPDevice.objects.create(user=user, name="Authenticator app", confirmed=True)
    return user


@pytest.fixture
def superadmin_device(superadmin):
    """The super-admin's confirmed TOTPDevice."""
    from django_otp.plugins.otp_totp.models import TOTPDevice

    return TOTPDevice.objects.get(user=superadmin)


@pytest.fixture
def superadmin_token(superadmin, superadmin_device):
    """The plaintext of a bearer token verified by the super-admin's TOTP device."""
    from aditus.services import api_token_issue

    _, secret = api_token_issue(user=superadmin, otp_device=superadmin_device)
    return secret


@pytest.fixture
def superadmin_api_client(superadmin_token):
    """An APIClient that sends `superadmin_token` with every request."""
    from rest_framework.test import APIClient

    client = APIClient()
    client.credentials(**bearer(superadmin_token))
    return client


@pytest.fixture
def ordinary_user_token(ordinary_user):
    """The plaintext of a bearer token of `ordinary_user`."""
    from aditus.services import api_token_issue

    _, secret = api_token_issue(user=ordinary_user, otp_device=None)
    return secret


@pytest.fixture
def superuser_without_otp_token(superuser_without_otp):
    """The plaintext of a bearer token of `superuser_without_otp`, not verified by any device."""
    from aditus.services import api_token_issue

    _, secret = api_token_issue(user=superuser_without_otp, otp_device=None)
    return secret


@pytest.fixture
def superadmin_session_client(superadmin, superadmin_device):
    """A Django test Client with a session of the super-admin, verified by their TOTP device."""
    from django.test import Client
    from django_otp import DEVICE_ID_SESSION_KEY

    client = Client()
    client.force_login(superadmin)
    # What django_otp.login() stores after the admin login form has checked a code.
    session = client.session
    session[DEVICE_ID_SESSION_KEY] = superadmin_device.persistent_id
    session.save()
    return client


@pytest.fixture
def outsiders(ordinary_user_token, superuser_without_otp, superuser_without_otp_token):
    """Callers every super-admin endpoint must refuse, each with the status it must get."""
    from rest_framework.test import APIClient

    anonymous = APIClient()
    ordinary = APIClient()
    ordinary.credentials(HTTP_AUTHORIZATION=f"Bearer {ordinary_user_token}")
    unverified_token = APIClient()
    unverified_token.credentials(HTTP_AUTHORIZATION=f"Bearer {superuser_without_otp_token}")
    unverified_session = APIClient()
    unverified_session.force_login(superuser_without_otp)
    return [(anonymous, 401), (ordinary, 403), (unverified_token, 403), (unverified_session, 403)]
