"""Deferred pushes (docs/push-rules.md, "Outcome"): a push that cannot go now because another push
holds its invoice, or because HaloPSA asks the portal to wait (429 and Retry-After), is put off:
`retrying` later without counting an attempt, no incident, and it runs once its time comes."""

from __future__ import annotations

import importlib
from datetime import timedelta

import pytest
from django.apps import apps
from django.utils import timezone

from integrations.models import Incident, PushJob
from integrations.services.leases import lease_acquire, lease_release
from integrations.services.payments import payment_record
from integrations.services.push import BUSY_DELAY, INCIDENT_AFTER_FAILURES, push_due_dispatch, push_job_process
from tests.push.conftest import assert_ledgers_agree, halo_payments

pytestmark = pytest.mark.django_db


@pytest.fixture
def queued(mirror, django_capture_on_commit_callbacks):
    """A payment recorded on invoice 1 whose push has not run yet (the enqueue is dropped)."""
    invoice = mirror(1)
    with django_capture_on_commit_callbacks(execute=False):
        payment = payment_record(invoice=invoice, amount="25.00")
    return invoice, payment, PushJob.objects.get(payment=payment)


def push_failing_open(job: PushJob) -> bool:
    return Incident.objects.filter(
        connection=job.connection, kind=Incident.Kind.PUSH_FAILING, resolved_at=None
    ).exists()


def time_passes(job: PushJob) -> None:
    PushJob.objects.filter(pk=job.pk).update(next_attempt_at=timezone.now() - timedelta(seconds=1))


def assert_posted_once(srv, invoice, payment, job) -> None:
    job.refresh_from_db()
    assert job.state == PushJob.State.DONE, job.last_error
    assert job.deferred_reason == ""
    assert len(halo_payments(srv, invoice.halopsa_id, payment.reference)) == 1
    assert_ledgers_agree(srv, invoice)


def test_a_push_whose_invoice_is_busy_is_deferred_not_failed_and_runs_later(halo_sandbox, queued):
    invoice, payment, job = queued
    # The job had failed as often as opens an incident (HaloPSA was down), then recovered: waiting
    # for the invoice is no further failure, so it must not open one now.
    PushJob.objects.filter(pk=job.pk).update(attempts=INCIDENT_AFTER_FAILURES)
    lease = f"push:invoice:{invoice.pk}"
    owner = lease_acquire(lease, 60)  # another push of the same invoice is running
    before = timezone.now()

    push_job_process(job_id=job.pk)

    job.refresh_from_db()
    assert job.state == PushJob.State.RETRYING
    assert job.deferred_reason == PushJob.DeferredReason.INVOICE_BUSY
    assert job.attempts == INCIDENT_AFTER_FAILURES  # the attempt was given back
    assert before + BUSY_DELAY <= job.next_attempt_at <= timezone.now() + BUSY_DELAY
    assert not push_failing_open(job)
    assert halo_sandbox.count_requests("/api/InvoicePayment", method="POST") == 0
    # Not before its time: the sweeper leaves it, a duplicated task claims nothing.
    assert push_due_dispatch() == 0
    push_job_process(job_id=job.pk)
    job.refresh_from_db()
    assert (job.state, job.attempts) == (PushJob.State.RETRYING, INCIDENT_AFTER_FAILURES)

    lease_release(lease, owner)
    time_passes(job)
    assert push_due_dispatch() == 1
    assert_posted_once(halo_sandbox, invoice, payment, job)
    assert not push_failing_open(job)


def test_a_push_halopsa_asks_to_wait_is_deferred_however_often_and_runs_later(halo_sandbox, queued):
    invoice, payment, job = queued
    rounds = INCIDENT_AFTER_FAILURES + 1  # more than the failures that open an incident
    halo_sandbox.add_fault("status", status=429, retry_after=300, method="GET", path="/api/Invoice", count=rounds)

    for _ in range(rounds):
        before = timezone.now()
        push_job_process(job_id=job.pk)
        job.refresh_from_db()
        assert job.state == PushJob.State.RETRYING, job.last_error
        assert job.attempts == 0  # none counted: HaloPSA asked for the wait
        assert job.next_attempt_at >= before + timedelta(seconds=300)  # its Retry-After
        assert not push_failing_open(job)
        time_passes(job)

    assert halo_sandbox.count_requests("/api/InvoicePayment", method="POST") == 0
    assert push_due_dispatch() == 1
    assert_posted_once(halo_sandbox, invoice, payment, job)


def test_migration_0010_reads_the_reason_from_the_old_message(conn):
    """Jobs stored before the field: the busy-invoice message becomes the reason, nothing else does."""
    migration = importlib.import_module("integrations.migrations.0010_pushjob_deferred_reason")
    busy = PushJob.objects.create(
        connection=conn,
        kind=PushJob.Kind.INVOICE_STATUS,
        key="busy",
        state=PushJob.State.RETRYING,
        last_error="Waiting for another push to the same invoice to finish.",
    )
    failed = PushJob.objects.create(
        connection=conn,
        kind=PushJob.Kind.INVOICE_STATUS,
        key="failed",
        state=PushJob.State.RETRYING,
        last_error="HaloPSA answered 503.",
    )

    migration.reason_from_last_error(apps, None)

    busy.refresh_from_db()
    failed.refresh_from_db()
    assert (busy.deferred_reason, failed.deferred_reason) == (PushJob.DeferredReason.INVOICE_BUSY, "")
