"""Preparing a task request (tasks.services.request_prepare): one path, the same on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio

import pytest
from django.db import connection
from django.test import RequestFactory

from aditus.models import ApiToken
from aditus.services import api_token_issue
from runtime import db
from tasks.responses import TaskError
from tasks.services import Prepared, request_prepare
from usage.models import TokenReservation

# Prepared from the event loop, over connections of its own: they see only what is committed.
pytestmark = pytest.mark.django_db(transaction=True)

LETTER = '{"profile": "Backend engineer, 9 years of Python.", "job": "Staff engineer, Berlin.", "tone": "friendly"}'


def letter_request(token: str | None, body: str = LETTER):
    headers = {"HTTP_AUTHORIZATION": f"Bearer {token}"} if token else {}
    return RequestFactory().post("/api/v1/cover-letter/generate", data=body, content_type="application/json", **headers)


def prepare(*requests, before=None):
    """Prepare `requests` one after the other in one event loop with a pool, as uvicorn serves them; each
    answer is a `Prepared` or the exception it raised."""
    from tasks import inputs
    from tasks.views import _letter_request

    async def scenario():
        async with db.pooled():
            if before is not None:
                await before()
            answers = []
            for number, request in enumerate(requests):
                try:
                    answers.append(
                        await request_prepare(
                            request=request,
                            task="cover_letter",
                            request_id=f"req-{number}",
                            read_input=inputs.cover_letter_input,
                            build=_letter_request,
                        )
                    )
                except Exception as error:  # noqa: BLE001 - the test looks at it
                    answers.append(error)
            return answers

    return asyncio.run(scenario())


def test_the_token_and_the_candidates_are_read_in_one_round_trip(task_config, ordinary_user_token, monkeypatch):
    config = task_config("openai")
    prepare(letter_request(ordinary_user_token))  # its first use is written (once a minute)
    sent: list[list[str]] = []
    execute = db.execute

    async def spy(statements, **kwargs):
        sent.append([sql for sql, _params in statements])
        return await execute(statements, **kwargs)

    monkeypatch.setattr(db, "execute", spy)

    [prepared] = prepare(letter_request(ordinary_user_token))

    assert [candidate.config.pk for candidate in prepared.ready] == [config.pk]
    [trip] = sent  # no limits: nothing to reserve
    assert len(trip) == 2 and all(sql.startswith("SELECT") for sql in trip)


def test_each_request_gets_its_user_candidates_and_reservation(
    task_config, ordinary_user, ordinary_user_token, django_user_model
):
    limited = task_config("openai", daily_token_limit=100_000, priority=1)
    spare = task_config("claude", priority=2)
    other = django_user_model.objects.create_user("other", password="Quiet-Lantern-Orbit-73")
    _token, other_secret = api_token_issue(user=other, otp_device=None)
    revoked, revoked_secret = api_token_issue(user=other, otp_device=None)
    ApiToken.objects.filter(pk=revoked.pk).update(revoked_at="2026-01-01T00:00:00Z")

    first, refused, bad, fourth, anonymous, malformed = prepare(
        letter_request(ordinary_user_token),
        letter_request(revoked_secret),
        letter_request(other_secret, '{"profile": ""}'),
        letter_request(other_secret),
        letter_request(None),
        letter_request("two words"),
    )

    assert isinstance(first, Prepared) and isinstance(fourth, Prepared)
    assert (first.user_id, fourth.user_id) == (ordinary_user.pk, other.pk)
    for prepared in (first, fourth):
        assert [candidate.config.pk for candidate in prepared.ready] == [limited.pk, spare.pk]
        assert prepared.first_reservation.config_id == limited.pk
    assert set(TokenReservation.objects.values_list("pk", flat=True)) == {
        first.first_reservation.id,
        fourth.first_reservation.id,
    }
    stored = TokenReservation.objects.get(pk=first.first_reservation.id)
    assert (stored.request_id, stored.user_id, stored.task, stored.attempt) == (
        "req-0",
        ordinary_user.pk,
        "cover_letter",
        1,
    )
    assert 0 < stored.input_tokens < stored.tokens
    for refusal, status in ((refused, 401), (bad, 400), (anonymous, 401), (malformed, 401)):
        assert isinstance(refusal, TaskError) and refusal.status == status
    # Each use is recorded (once a minute).
    assert ApiToken.objects.filter(last_used_at__isnull=True).count() == 1  # only the revoked one


def test_a_reservation_refused_moves_the_request_to_its_next_candidate(task_config, ordinary_user_token):
    tight = task_config("openai", daily_token_limit=3_000, priority=1)
    spare = task_config("claude", daily_token_limit=1_000_000, priority=2)

    answers = prepare(*(letter_request(ordinary_user_token) for _ in range(3)))

    # Each reserves ~2,400 tokens (the prompt and the task's output cap): the first fits the tight config.
    assert [answer.first_reservation.config_id for answer in answers] == [tight.pk, spare.pk, spare.pk]
    assert [[refusal.config_id for refusal in answer.over_limit] for answer in answers] == [[], [tight.pk], [tight.pk]]


@pytest.mark.skipif(connection.vendor != "postgresql", reason="a server connection to lose: PostgreSQL only")
def test_a_connection_found_dead_is_replaced_and_the_request_prepared_on_a_fresh_one(task_config, ordinary_user_token):
    from tests.queries import terminate_backend

    config = task_config("openai", daily_token_limit=100_000)

    async def terminate_every_connection():
        # Open the pool's connection, then end every session of the pool (as a database restart would).
        [[(pid,)]] = await db.execute([("SELECT pg_backend_pid()", [])])
        terminate_backend(pid)

    answers = prepare(*(letter_request(ordinary_user_token) for _ in range(2)), before=terminate_every_connection)

    assert [answer.first_reservation.config_id for answer in answers] == [config.pk, config.pk]
