"""HaloPSA's clock (issue 16, push item 5): its timestamps carry no offset and may be the
instance's local time, so the push measures the offset from HaloPSA's own stamp on our writes
and the status conflict rule compares on one clock. Sandbox profile `local_clock`, hours and days
away from ours (docs/push-rules.md, "Conflict rule")."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from integrations.halopsa.shape import HaloShape
from integrations.models import Connection, Invoice, PushJob, SyncRun
from integrations.services.payments import invoice_status_change, payment_record
from integrations.services.push import _clock_offset_learn, push_job_process
from tests.push.conftest import halo_invoice

pytestmark = pytest.mark.django_db

HOURS_AND_DAYS = [-420, -4320, 420]  # 7 h behind, 3 days behind, 7 h ahead
CLOCKS = [{"profile": "local_clock", "clock_offset_minutes": minutes} for minutes in HOURS_AND_DAYS]
CLOCK_IDS = [f"{minutes:+d}min" for minutes in HOURS_AND_DAYS]
# The measurement's error is at most half the write's round trip; a few seconds is plenty.
TOLERANCE = 5.0


def stored_shape(conn) -> HaloShape:
    return HaloShape.of(Connection.objects.get(pk=conn.pk))


def pull(conn, halopsa_id: int) -> Invoice:
    from integrations.services.sync import sync_record

    run = sync_record(connection=conn, entity="invoices", halopsa_id=halopsa_id, trigger=SyncRun.Trigger.MANUAL)
    assert run.state == SyncRun.State.SUCCEEDED, run.message
    return Invoice.objects.get(connection=conn, halopsa_id=halopsa_id)


def push_status(invoice, status: str, django_capture_on_commit_callbacks) -> PushJob:
    with django_capture_on_commit_callbacks(execute=True):
        job = invoice_status_change(invoice=invoice, status=status).job
    job.refresh_from_db()
    assert job.state == PushJob.State.DONE, job.last_error
    return job


@pytest.mark.parametrize("halo_sandbox", CLOCKS + [{"profile": "default"}], ids=CLOCK_IDS + ["utc"], indirect=True)
def test_a_status_write_measures_the_clock(halo_sandbox, conn, mirror, django_capture_on_commit_callbacks):
    assert stored_shape(conn).clock_offset_seconds is None
    push_status(mirror(8), "void", django_capture_on_commit_callbacks)
    shape = stored_shape(conn)
    assert shape.clock_offset_seconds == pytest.approx(halo_sandbox.profile.clock_offset_ms / 1000, abs=TOLERANCE)
    assert shape.clock_offset_measured_at
    # The status write's own answer carried the stamp: no extra read.
    assert halo_sandbox.count_requests("/api/Invoice/8", method="GET") == 1


@pytest.mark.parametrize("halo_sandbox", CLOCKS[:2], ids=CLOCK_IDS[:2], indirect=True)
def test_a_payment_post_measures_the_clock_once_a_day(halo_sandbox, conn, mirror, django_capture_on_commit_callbacks):
    invoice = mirror(1)
    with django_capture_on_commit_callbacks(execute=True):
        payment_record(invoice=invoice, amount="10.00")
    offset = halo_sandbox.profile.clock_offset_ms / 1000
    assert stored_shape(conn).clock_offset_seconds == pytest.approx(offset, abs=TOLERANCE)
    assert halo_sandbox.count_requests("/api/Invoice/1", method="GET") == 2  # before the post, and its stamp after
    # Measured already: the next payment costs no extra read.
    halo_sandbox.clear_request_log()
    with django_capture_on_commit_callbacks(execute=True):
        payment_record(invoice=Invoice.objects.get(pk=invoice.pk), amount="10.00")
    assert halo_sandbox.count_requests("/api/Invoice/1", method="GET") == 1
    # A day later it is measured again (a DST change moves a local clock).
    connection = Connection.objects.get(pk=conn.pk)
    from integrations.services.connections import connection_shape_update

    connection_shape_update(
        connection=connection,
        clock_offset_seconds=0.0,
        clock_offset_measured_at=(timezone.now() - timedelta(hours=25)).isoformat(),
    )
    with django_capture_on_commit_callbacks(execute=True):
        payment_record(invoice=Invoice.objects.get(pk=invoice.pk), amount="10.00")
    assert stored_shape(conn).clock_offset_seconds == pytest.approx(offset, abs=TOLERANCE)


class _FakeClient:
    def __init__(self, body):
        self.body = body

    def get_invoice(self, invoice_id, include_lines=False):
        return self.body


def test_a_write_halopsa_did_not_stamp_measures_nothing(conn):
    stamp = {"last_modified": "2026-12-05T03:00:00.000"}
    now = timezone.now()
    _clock_offset_learn(conn, HaloShape(), _FakeClient(stamp), 1, before=stamp, answer=stamp, started=now, ended=now)
    _clock_offset_learn(conn, HaloShape(), _FakeClient({}), 1, before={}, answer=None, started=now, ended=now)
    # A write whose round trip took too long says too little.
    later = {"last_modified": "2026-12-05T03:00:05.000"}
    _clock_offset_learn(
        conn,
        HaloShape(),
        _FakeClient(later),
        1,
        before=stamp,
        answer=later,
        started=now - timedelta(minutes=1),
        ended=now,
    )
    assert stored_shape(conn).clock_offset_seconds is None
    _clock_offset_learn(conn, HaloShape(), _FakeClient(later), 1, before=stamp, answer=later, started=now, ended=now)
    assert stored_shape(conn).clock_offset_seconds is not None


@pytest.mark.parametrize("halo_sandbox", CLOCKS, ids=CLOCK_IDS, indirect=True)
def test_a_later_change_in_halopsa_wins_on_a_clock_hours_or_days_away(
    halo_sandbox, conn, mirror, django_capture_on_commit_callbacks
):
    push_status(mirror(8), "void", django_capture_on_commit_callbacks)  # an earlier push measured the clock
    invoice = pull(conn, 1)
    with django_capture_on_commit_callbacks(execute=False):
        job = invoice_status_change(invoice=invoice, status="void").job
    Invoice.objects.filter(pk=invoice.pk).update(status_changed_locally_at=timezone.now() - timedelta(seconds=2))
    halo_sandbox.store.add_payment(1, "8950.37", reference="paid at the desk")  # HaloPSA: paid, 2 s after ours
    invoice = pull(conn, 1)
    assert invoice.status == Invoice.Status.PAID and invoice.status_changed_locally_at is None
    push_job_process(job_id=job.pk)
    job.refresh_from_db()
    assert job.state == PushJob.State.CANCELLED  # our older change is not pushed over HaloPSA's
    assert halo_invoice(halo_sandbox, 1)["voided"] is False


@pytest.mark.parametrize("halo_sandbox", CLOCKS, ids=CLOCK_IDS, indirect=True)
def test_a_later_change_here_wins_on_a_clock_hours_or_days_away(
    halo_sandbox, conn, mirror, django_capture_on_commit_callbacks
):
    push_status(mirror(8), "void", django_capture_on_commit_callbacks)
    invoice = pull(conn, 1)
    halo_sandbox.store.add_payment(1, "10.00", reference="desk")  # HaloPSA: partially paid, first
    with django_capture_on_commit_callbacks(execute=False):
        job = invoice_status_change(invoice=invoice, status="void").job
    Invoice.objects.filter(pk=invoice.pk).update(status_changed_locally_at=timezone.now() + timedelta(seconds=2))
    invoice = pull(conn, 1)
    assert invoice.status == Invoice.Status.VOID and invoice.status_changed_locally_at is not None
    push_job_process(job_id=job.pk)
    job.refresh_from_db()
    assert job.state == PushJob.State.DONE and halo_invoice(halo_sandbox, 1)["voided"] is True


@pytest.mark.parametrize("halo_sandbox", CLOCKS[:1], ids=CLOCK_IDS[:1], indirect=True)
def test_before_the_clock_is_measured_a_pull_keeps_ours(halo_sandbox, conn, mirror, django_capture_on_commit_callbacks):
    invoice = pull(conn, 1)
    with django_capture_on_commit_callbacks(execute=False):
        invoice_status_change(invoice=invoice, status="void")
    Invoice.objects.filter(pk=invoice.pk).update(status_changed_locally_at=timezone.now() - timedelta(seconds=2))
    halo_sandbox.store.add_payment(1, "10.00", reference="desk")
    assert stored_shape(conn).clock_offset_seconds is None
    invoice = pull(conn, 1)
    assert invoice.status == Invoice.Status.VOID and invoice.status_changed_locally_at is not None
