"""The webhook sweep's django-q2 schedule stays one row when several workers ensure it at once.

django-q2's Schedule.name is not unique: under load two workers each created a 'webhook-sweep' row
2 ms apart, after which every ensure raised MultipleObjectsReturned and left its event "processing".
"""

from __future__ import annotations

import threading

import pytest
from django.db import connection
from django.db.models.query import QuerySet
from django_q.models import Schedule

from integrations.services.webhooks import SWEEP_SCHEDULE_NAME, SWEEP_TASK, webhook_sweep_schedule_ensure

pytestmark = pytest.mark.django_db


def _sweep_row(**fields) -> Schedule:
    return Schedule.objects.create(
        name=SWEEP_SCHEDULE_NAME, func=SWEEP_TASK, schedule_type=Schedule.MINUTES, minutes=5, repeats=-1, **fields
    )


def test_duplicate_rows_collapse_to_the_oldest_instead_of_raising():
    oldest, newer = _sweep_row(), _sweep_row()

    webhook_sweep_schedule_ensure()

    assert list(Schedule.objects.filter(name=SWEEP_SCHEDULE_NAME).values_list("pk", flat=True)) == [oldest.pk]
    assert not Schedule.objects.filter(pk=newer.pk).exists()


def test_created_once_and_an_existing_row_is_left_as_it_is():
    webhook_sweep_schedule_ensure()
    schedule = Schedule.objects.get(name=SWEEP_SCHEDULE_NAME)
    assert (schedule.func, schedule.schedule_type, schedule.minutes, schedule.repeats) == (
        SWEEP_TASK,
        Schedule.MINUTES,
        5,
        -1,
    )
    Schedule.objects.filter(pk=schedule.pk).update(minutes=15)  # e.g. changed by hand in the admin

    webhook_sweep_schedule_ensure()

    assert list(Schedule.objects.filter(name=SWEEP_SCHEDULE_NAME).values_list("pk", "minutes")) == [(schedule.pk, 15)]


@pytest.mark.django_db(transaction=True)
def test_two_workers_racing_leave_one_row(monkeypatch):
    """The first worker is held between its check and its create until the second has had its
    chance to create (or 1 s has passed): without the lease both create."""
    if connection.vendor == "sqlite":
        pytest.skip("SQLite's shared in-memory test database locks whole tables across threads; runs on PostgreSQL")
    first_checked, second_created = threading.Event(), threading.Event()
    real_create = QuerySet.create

    def create(self, **kwargs):
        if self.model is Schedule:
            if not first_checked.is_set():
                first_checked.set()
                second_created.wait(1.0)
            else:
                second_created.set()
        return real_create(self, **kwargs)

    monkeypatch.setattr(QuerySet, "create", create)
    errors: list[BaseException] = []

    def worker() -> None:
        from django.db import connection as thread_connection

        try:
            webhook_sweep_schedule_ensure()
        except BaseException as exc:  # surfaced below
            errors.append(exc)
        finally:
            thread_connection.close()

    first = threading.Thread(target=worker)
    first.start()
    assert first_checked.wait(10)
    second = threading.Thread(target=worker)
    second.start()
    first.join(30)
    second.join(30)

    assert errors == []
    assert Schedule.objects.filter(name=SWEEP_SCHEDULE_NAME).count() == 1
