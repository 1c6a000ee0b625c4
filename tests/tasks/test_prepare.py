"""Reading who asks and which providers may answer: one round trip on PostgreSQL."""

from __future__ import annotations

import pytest
from django.db import connection
from django.test import RequestFactory
from django.test.utils import CaptureQueriesContext

from aditus.models import ApiToken
from tasks.responses import TaskError
from tasks.services import user_and_candidates
from tests.queries import sent_queries

pytestmark = pytest.mark.django_db


def bearer_request(token: str):
    return RequestFactory().post("/api/v1/cover-letter/generate", HTTP_AUTHORIZATION=f"Bearer {token}")


def test_the_token_and_the_candidates_are_read_together(task_config, ordinary_user, ordinary_user_token):
    config = task_config("openai")
    user_and_candidates(bearer_request(ordinary_user_token), "cover_letter")  # its first use is written (once a minute)

    with CaptureQueriesContext(connection) as context:
        user, candidates = user_and_candidates(bearer_request(ordinary_user_token), "cover_letter")

    assert user.pk == ordinary_user.pk
    assert [candidate.config.pk for candidate in candidates] == [config.pk]
    sent = sent_queries(context)
    if connection.vendor == "postgresql":
        [message] = sent
        assert message.count("SELECT") >= 2 and ";\n" in message
    else:
        assert len(sent) == 2


@pytest.mark.parametrize("change", ["revoke", "unknown", "malformed"])
def test_a_refused_token_is_a_401_even_when_read_together(task_config, ordinary_user_token, change):
    task_config("openai")
    token = ordinary_user_token
    if change == "revoke":
        ApiToken.objects.update(revoked_at="2026-01-01T00:00:00Z")
    elif change == "unknown":
        token = "x" * 43
    else:
        token = "two words"

    with pytest.raises(TaskError) as refused:
        user_and_candidates(bearer_request(token), "cover_letter")

    assert refused.value.status == 401
