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


def letter_request(token: str | None, body: str):
    headers = {"HTTP_AUTHORIZATION": f"Bearer {token}"} if token else {}
    return RequestFactory().post("/api/v1/cover-letter/generate", data=body, content_type="application/json", **headers)


LETTER = '{"profile": "Backend engineer, 9 years of Python.", "job": "Staff engineer, Berlin.", "tone": "friendly"}'


def job(request):
    from tasks import inputs
    from tasks.views import _letter_request

    return {
        "request": request,
        "task": "cover_letter",
        "read_input": inputs.cover_letter_input,
        "build": _letter_request,
    }


def test_requests_prepared_together_each_get_their_user_candidates_and_reservation(
    task_config, ordinary_user, ordinary_user_token, django_user_model
):
    from tasks.services import Prepared, requests_prepare

    limited = task_config("openai", daily_token_limit=100_000, priority=1)
    spare = task_config("claude", priority=2)
    other = django_user_model.objects.create_user("other", password="Quiet-Lantern-Orbit-73")
    _other_token, other_secret = __import__("aditus.services", fromlist=["x"]).api_token_issue(
        user=other, otp_device=None
    )
    revoked_token, revoked_secret = __import__("aditus.services", fromlist=["x"]).api_token_issue(
        user=other, otp_device=None
    )
    ApiToken.objects.filter(pk=revoked_token.pk).update(revoked_at="2026-01-01T00:00:00Z")

    answers = requests_prepare(
        jobs=[
            job(letter_request(ordinary_user_token, LETTER)),
            job(letter_request(revoked_secret, LETTER)),
            job(letter_request(other_secret, '{"profile": ""}')),  # bad input
            job(letter_request(other_secret, LETTER)),
            job(letter_request(None, LETTER)),  # neither token nor session
        ]
    )

    first, revoked, bad, fourth, anonymous = answers
    assert isinstance(first, Prepared) and isinstance(fourth, Prepared)
    assert (first.user_id, fourth.user_id) == (ordinary_user.pk, other.pk)
    for prepared in (first, fourth):
        assert [candidate.config.pk for candidate in prepared.ready] == [limited.pk, spare.pk]
        assert prepared.first_reservation is not None and prepared.first_reservation.config_id == limited.pk
    assert first.first_reservation.id != fourth.first_reservation.id
    assert isinstance(revoked, TaskError) and revoked.status == 401
    assert isinstance(bad, TaskError) and bad.status == 400
    assert isinstance(anonymous, TaskError) and anonymous.status == 401


def test_a_reservation_refused_in_a_batch_moves_that_request_to_its_next_candidate(task_config, ordinary_user_token):
    from tasks.services import requests_prepare
    from usage.services import tokens_reserve

    tight = task_config("openai", daily_token_limit=3_000, priority=1)
    spare = task_config("claude", daily_token_limit=1_000_000, priority=2)
    for config in (tight, spare):
        tokens_reserve(config=config, tokens=1)  # the windows' counter rows exist: the one-statement path

    answers = requests_prepare(jobs=[job(letter_request(ordinary_user_token, LETTER)) for _ in range(3)])

    # Each reserves ~2,400 tokens (the prompt and the task's output cap): the first fits the tight config.
    assert [answer.first_reservation.config_id for answer in answers] == [tight.pk, spare.pk, spare.pk]
    assert [len(answer.over_limit) for answer in answers] == [0, 1, 1]


# --- From the event loop (PostgreSQL, bearer tokens) ------------------------------------------------------------

postgresql_only = pytest.mark.skipif(connection.vendor != "postgresql", reason="PostgreSQL only")
# The loop's connection and the threads' see only what is committed.
committed = pytest.mark.django_db(transaction=True)


def prepare_on_loop(jobs):
    import asyncio

    from tasks.services import requests_prepare_on_loop

    return asyncio.run(requests_prepare_on_loop(jobs))


@postgresql_only
@committed
def test_requests_prepared_from_the_loop_each_get_their_user_candidates_and_reservation(
    task_config, ordinary_user, ordinary_user_token, django_user_model
):
    from aditus.services import api_token_issue
    from tasks.services import Prepared
    from usage.models import TokenReservation

    limited = task_config("openai", daily_token_limit=100_000, priority=1)
    spare = task_config("claude", priority=2)
    other = django_user_model.objects.create_user("other", password="Quiet-Lantern-Orbit-73")
    _token, other_secret = api_token_issue(user=other, otp_device=None)
    revoked, revoked_secret = api_token_issue(user=other, otp_device=None)
    ApiToken.objects.filter(pk=revoked.pk).update(revoked_at="2026-01-01T00:00:00Z")

    first, refused, bad, fourth = prepare_on_loop(
        [
            job(letter_request(ordinary_user_token, LETTER)),
            job(letter_request(revoked_secret, LETTER)),
            job(letter_request(other_secret, '{"profile": ""}')),
            job(letter_request(other_secret, LETTER)),
        ]
    )

    assert isinstance(first, Prepared) and isinstance(fourth, Prepared)
    assert (first.user_id, fourth.user_id) == (ordinary_user.pk, other.pk)
    for prepared in (first, fourth):
        assert [candidate.config.pk for candidate in prepared.ready] == [limited.pk, spare.pk]
        assert prepared.first_reservation.config_id == limited.pk
    assert first.first_reservation.id != fourth.first_reservation.id
    assert set(TokenReservation.objects.values_list("pk", flat=True)) == {
        first.first_reservation.id,
        fourth.first_reservation.id,
    }
    assert isinstance(refused, TaskError) and refused.status == 401
    assert isinstance(bad, TaskError) and bad.status == 400
    # Each use is recorded (once a minute), from a database thread.
    assert ApiToken.objects.filter(last_used_at__isnull=True).count() == 1  # only the revoked one


@postgresql_only
@committed
def test_a_reservation_refused_from_the_loop_moves_that_request_to_its_next_candidate(task_config, ordinary_user_token):
    from usage.services import tokens_reserve

    tight = task_config("openai", daily_token_limit=3_000, priority=1)
    spare = task_config("claude", daily_token_limit=1_000_000, priority=2)
    for config in (tight, spare):
        tokens_reserve(config=config, tokens=1)  # the windows' counter rows exist: the one-statement path

    answers = prepare_on_loop([job(letter_request(ordinary_user_token, LETTER)) for _ in range(3)])

    assert [answer.first_reservation.config_id for answer in answers] == [tight.pk, spare.pk, spare.pk]
    assert [len(answer.over_limit) for answer in answers] == [0, 1, 1]
    assert [refusal.config_id for answer in answers for refusal in answer.over_limit] == [tight.pk, tight.pk]


@postgresql_only
@committed
def test_when_the_loop_connection_breaks_the_requests_are_prepared_in_a_thread(task_config, ordinary_user_token):
    import asyncio

    from aditus.db import _loop_connection
    from tasks.services import requests_prepare_on_loop
    from tests.queries import terminate_backend

    config = task_config("openai", daily_token_limit=100_000)
    jobs = [job(letter_request(ordinary_user_token, LETTER)) for _ in range(2)]

    async def scenario():
        await requests_prepare_on_loop(jobs[:1])
        broken = await _loop_connection()
        terminate_backend(broken.info.backend_pid)
        return await requests_prepare_on_loop(jobs)

    answers = asyncio.run(scenario())

    assert [answer.first_reservation.config_id for answer in answers] == [config.pk, config.pk]
