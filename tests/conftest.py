import os

import django
import pytest

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "aditus.settings")
# The suite runs with development defaults (no https redirect, static files found in the apps).
os.environ.setdefault("DEBUG", "1")
# The fixture modules below import models, so Django must be set up before pytest-django would do it.
django.setup()

from tests.auth_fixtures import *  # noqa: E402,F403
from tests.fake_fixtures import *  # noqa: E402,F403
from tests.usage_fixtures import *  # noqa: E402,F403


@pytest.fixture(autouse=True)
def _fast_isolated_settings(request, settings):
    """Cheap password hashing for every test, and an empty cache (throttle counters) for every test that may use
    the database, where the cache lives."""
    from django.core.cache import cache

    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    database = [name for name in ("transactional_db", "db") if name in request.fixturenames]
    if database:
        request.getfixturevalue(database[0])  # set up now: this fixture may run before the test's own ones
    elif not request.node.get_closest_marker("django_db"):
        yield
        return
    cache.clear()
    yield
    cache.clear()
