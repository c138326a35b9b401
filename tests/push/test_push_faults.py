"""Exactly-once under faults: every path ends with one payment in HaloPSA and the job done."""

from __future__ import annotations

import threading
from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from integrations.models import AuditEvent, Incident, PushJob
from integrations.services.payments import payment_record
from integrations.services.push import (
    INCIDENT_AFTER_FAILURES,
    PushJobRefused,
    push_backoff,
    push_due_dispatch,
    push_job_process,
    push_job_retry,
    push_schedule_ensure,
    push_settle_delay,
)
from tests.push.conftest import assert_ledgers_agree, halo_invoice, halo_payments

pytestmark = pytest.mark.django_db


@pytest.fixture
def queued(mirror, django_capture_on_commit_callbacks):
    """A payment recorded on invoice 1 whose push has not run yet (the enqueue is dropped)."""

    def make(amount: str = "25.00"):
        invoice = mirror(1)
        with django_capture_on_commit_callbacks(execute=False):
            payment = payment_record(invoice=invoice, amount=amount)
        return invoice, payment, PushJob.objects.get(payment=payment)

    return make


def time_passes() -> None:
    """Every waiting job's backoff is over (the clock is not mocked; the due time moves)."""
    PushJob.objects.filter(state=PushJob.State.RETRYING).update(next_attempt_at=timezone.now() - timedelta(seconds=1))


def assert_exactly_one(srv, invoice, payment, job) -> None:
    job.refresh_from_db()
    assert job.state == PushJob.State.DONE, job.last_error
    rows = halo_payments(srv, invoice.halopsa_id, payment.reference)
    assert len(rows) == 1 and rows[0]["amount"] == payment.amount
    payment.refresh_from_db()
    assert payment.halopsa_id == rows[0]["id"]
    assert_ledgers_agree(srv, invoice)


def arm_after_first_post(srv, mode: str, **options) -> None:
    """Add a fault only once HaloPSA has received the payment POST (for "lookup fails after")."""
    original = srv.faults.pick
    armed = []

    def pick(method: str, path: str, *query):
        rule = original(method, path, *query)
        if not armed and method == "POST" and path.lower().startswith("/api/invoicepayment"):
            armed.append(True)
            srv.add_fault(mode, **options)
        return rule

    srv.faults.pick = pick


@pytest.mark.parametrize("status", [500, 502, 503])
def test_server_errors_on_the_post_are_retried_and_post_once(halo_sandbox, queued, status):
    invoice, payment, job = queued()
    halo_sandbox.add_fault("status", status=status, path="/api/InvoicePayment", method="POST", count=2)
    push_job_process(job_id=job.pk)
    assert_exactly_one(halo_sandbox, invoice, payment, job)


def test_lost_response_on_post_is_found_by_reference_not_posted_again(halo_sandbox, queued):
    invoice, payment, job = queued()
    halo_sandbox.add_fault("lost_response", path="/api/InvoicePayment", method="POST")
    push_job_process(job_id=job.pk)
    assert_exactly_one(halo_sandbox, invoice, payment, job)
    assert halo_sandbox.count_requests("/api/InvoicePayment", method="POST") == 1


def test_dropped_connection_before_halopsa_acted_posts_once(halo_sandbox, queued):
    invoice, payment, job = queued()
    halo_sandbox.add_fault("drop", path="/api/InvoicePayment", method="POST")
    push_job_process(job_id=job.pk)
    assert_exactly_one(halo_sandbox, invoice, payment, job)


def test_timeout_after_halopsa_committed_is_settled_by_the_next_attempt(halo_sandbox, queued, settings):
    """A read timeout is never re-posted in the same attempt; the retry finds the payment."""
    settings.HALOPSA_READ_TIMEOUT = 0.3
    invoice, payment, job = queued()
    halo_sandbox.add_fault("slow", delay=1.0, path="/api/InvoicePayment", method="POST")
    before = timezone.now()
    push_job_process(job_id=job.pk)
    job.refresh_from_db()
    assert job.state == PushJob.State.RETRYING and "did not answer" in job.last_error
    # The write may still commit in HaloPSA: the look-up waits the settle time, not the 30 s backoff.
    assert job.next_attempt_at >= before + push_settle_delay()

    time_passes()
    push_due_dispatch()  # the sweeper, once the backoff has passed
    assert_exactly_one(halo_sandbox, invoice, payment, job)
    assert halo_sandbox.count_requests("/api/InvoicePayment", method="POST") == 1


def test_lost_response_and_lookup_failing_needs_review_then_manual_retry_finds_it(halo_sandbox, queued, partner_user):
    invoice, payment, job = queued()
    halo_sandbox.add_fault("lost_response", path="/api/InvoicePayment", method="POST")
    # Every source of the lookup fails: the invoice's own payments and GET /InvoicePayment.
    arm_after_first_post(halo_sandbox, "status", status=503, path="/api/Invoice", method="GET", count=100)
    push_job_process(job_id=job.pk)
    job.refresh_from_db()
    assert job.state == PushJob.State.NEEDS_REVIEW
    assert "did not confirm" in job.last_error
    assert Incident.objects.filter(
        connection=job.connection, kind=Incident.Kind.PUSH_FAILING, resolved_at=None
    ).exists()
    # Never re-posted on its own, even by the sweeper.
    time_passes()
    push_due_dispatch()
    assert halo_sandbox.count_requests("/api/InvoicePayment", method="POST") == 1

    halo_sandbox.clear_faults()
    push_job_retry(job=job, user=partner_user)
    push_job_process(job_id=job.pk)  # what the on-commit enqueue does in production
    assert_exactly_one(halo_sandbox, invoice, payment, job)
    assert halo_sandbox.count_requests("/api/InvoicePayment", method="POST") == 1
    assert AuditEvent.objects.filter(action="push.retry", user=partner_user).exists()
    assert not Incident.objects.filter(
        connection=job.connection, kind=Incident.Kind.PUSH_FAILING, resolved_at=None
    ).exists()


def test_duplicated_task_posts_once(halo_sandbox, queued):
    invoice, payment, job = queued()
    push_job_process(job_id=job.pk)
    push_job_process(job_id=job.pk)
    time_passes()
    push_due_dispatch()
    assert_exactly_one(halo_sandbox, invoice, payment, job)
    assert halo_sandbox.count_requests("/api/InvoicePayment", method="POST") == 1


def test_a_job_claimed_elsewhere_is_left_alone(halo_sandbox, queued):
    invoice, payment, job = queued()
    PushJob.objects.filter(pk=job.pk).update(state=PushJob.State.RUNNING, attempts=1, updated_at=timezone.now())
    halo_sandbox.clear_request_log()
    push_job_process(job_id=job.pk)
    push_due_dispatch()  # not stale yet
    assert halo_sandbox.count_requests() == 0
    job.refresh_from_db()
    assert job.state == PushJob.State.RUNNING


def test_duplicate_task_arriving_mid_post_posts_once(halo_sandbox, queued, monkeypatch):
    """A second delivery of the task runs while the first is inside the POST: it finds the job taken."""
    from integrations.halopsa.client import HaloClient

    invoice, payment, job = queued()
    real_create = HaloClient.create_payment
    duplicates: list[object] = []

    def create_with_a_duplicate_arriving(self, **kwargs):
        duplicates.append(push_job_process(job_id=job.pk))  # the same task delivered again, right now
        return real_create(self, **kwargs)

    monkeypatch.setattr(HaloClient, "create_payment", create_with_a_duplicate_arriving)
    push_job_process(job_id=job.pk)
    assert len(duplicates) == 1 and duplicates[0].state == PushJob.State.RUNNING
    assert_exactly_one(halo_sandbox, invoice, payment, job)
    assert halo_sandbox.count_requests("/api/InvoicePayment", method="POST") == 1


@pytest.mark.django_db(transaction=True)
def test_concurrent_tasks_post_once(halo_sandbox, mirror, django_capture_on_commit_callbacks):
    from django.db import connection

    if connection.vendor == "sqlite":
        pytest.skip("SQLite's shared in-memory test database locks whole tables across threads; runs on PostgreSQL")
    invoice = mirror(1)
    with django_capture_on_commit_callbacks(execute=False):
        payment = payment_record(invoice=invoice, amount="25.00")
    job = PushJob.objects.get(payment=payment)
    halo_sandbox.add_fault("slow", delay=0.5, path="/api/InvoicePayment", method="POST")
    errors: list[BaseException] = []

    def worker() -> None:
        from django.db import connection as thread_connection

        try:
            push_job_process(job_id=job.pk)
        except BaseException as exc:  # surfaced below
            errors.append(exc)
        finally:
            thread_connection.close()

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for thread in threads:
        thread.start()
    push_job_process(job_id=job.pk)
    for thread in threads:
        thread.join(30)
    assert errors == []
    assert_exactly_one(halo_sandbox, invoice, payment, job)
    assert halo_sandbox.count_requests("/api/InvoicePayment", method="POST") == 1


def test_worker_killed_mid_push_is_resumed_by_the_sweeper(halo_sandbox, queued):
    """Killed after HaloPSA committed the POST: the job is stuck running; the sweeper resumes it."""
    invoice, payment, job = queued()
    halo_sandbox.store.add_payment(1, payment.amount, reference=payment.reference)  # what the dead worker posted
    PushJob.objects.filter(pk=job.pk).update(
        state=PushJob.State.RUNNING, attempts=1, updated_at=timezone.now() - timedelta(minutes=30)
    )
    dispatched = push_due_dispatch()
    assert dispatched == 1
    assert_exactly_one(halo_sandbox, invoice, payment, job)
    assert halo_sandbox.count_requests("/api/InvoicePayment", method="POST") == 0


def test_halopsa_down_for_an_hour_then_recovers(halo_sandbox, queued):
    invoice, payment, job = queued()
    halo_sandbox.add_fault("status", status=503, path="/api", count=10_000)
    push_job_process(job_id=job.pk)
    for _ in range(INCIDENT_AFTER_FAILURES + 1):
        job.refresh_from_db()
        assert job.state == PushJob.State.RETRYING
        time_passes()
        push_due_dispatch()
    job.refresh_from_db()
    assert job.attempts == INCIDENT_AFTER_FAILURES + 2
    assert "503" in job.last_error
    assert (
        Incident.objects.filter(connection=job.connection, kind=Incident.Kind.PUSH_FAILING, resolved_at=None).count()
        == 1
    )
    assert halo_invoice(halo_sandbox, 1)["amountdue"] == Decimal("8950.37")

    halo_sandbox.clear_faults()
    time_passes()
    push_due_dispatch()
    assert_exactly_one(halo_sandbox, invoice, payment, job)
    assert Incident.objects.get(connection=job.connection, kind=Incident.Kind.PUSH_FAILING).resolved_at is not None


def test_settle_delay_is_a_setting(settings):
    settings.HALOPSA_PUSH_SETTLE_SECONDS = 42
    assert push_settle_delay() == timedelta(seconds=42)


def test_backoff_grows_and_is_capped():
    assert timedelta(seconds=24) <= push_backoff(1) <= timedelta(seconds=36)
    assert timedelta(seconds=96) <= push_backoff(3) <= timedelta(seconds=144)
    assert push_backoff(30) <= timedelta(hours=1, minutes=12)


def test_paid_elsewhere_meanwhile_needs_review_instead_of_overpaying(halo_sandbox, queued):
    invoice, payment, job = queued("8000.00")
    halo_sandbox.store.add_payment(1, "1000.00", reference="paid at the desk")  # only 7950.37 left in HaloPSA
    push_job_process(job_id=job.pk)
    job.refresh_from_db()
    assert job.state == PushJob.State.NEEDS_REVIEW
    assert "would overpay" in job.last_error and "7950.37" in job.last_error
    assert halo_payments(halo_sandbox, 1, payment.reference) == []
    assert halo_sandbox.count_requests("/api/InvoicePayment", method="POST") == 0


def test_permanent_error_needs_review_with_halopsa_message(halo_sandbox, queued):
    invoice, payment, job = queued()
    halo_sandbox.add_fault("status", status=403, path="/api/Invoice/", method="GET")
    push_job_process(job_id=job.pk)
    job.refresh_from_db()
    assert job.state == PushJob.State.NEEDS_REVIEW
    assert "lacks permission" in job.last_error
    time_passes()
    push_due_dispatch()
    job.refresh_from_db()
    assert job.state == PushJob.State.NEEDS_REVIEW  # the sweeper leaves it for a person


def test_invoice_deleted_in_halopsa_needs_review(halo_sandbox, queued):
    invoice, payment, job = queued()
    halo_sandbox.store.delete_invoice(1)
    push_job_process(job_id=job.pk)
    job.refresh_from_db()
    assert job.state == PushJob.State.NEEDS_REVIEW and "no record" in job.last_error


def test_disabled_connection_pushes_nothing_until_enabled(halo_sandbox, queued):
    invoice, payment, job = queued()
    job.connection.enabled = False
    job.connection.save()
    halo_sandbox.clear_request_log()
    push_job_process(job_id=job.pk)
    time_passes()
    assert push_due_dispatch() == 0
    assert halo_sandbox.count_requests() == 0
    job.connection.enabled = True
    job.connection.save()
    assert push_due_dispatch() == 0  # just enqueued on commit: the sweeper gives that a moment
    PushJob.objects.filter(pk=job.pk).update(created_at=timezone.now() - timedelta(minutes=5))
    assert push_due_dispatch() == 1
    assert_exactly_one(halo_sandbox, invoice, payment, job)


def test_manual_retry_refuses_finished_jobs(halo_sandbox, queued, partner_user):
    invoice, payment, job = queued()
    push_job_process(job_id=job.pk)
    job.refresh_from_db()
    with pytest.raises(PushJobRefused, match="only failed or waiting"):
        push_job_retry(job=job, user=partner_user)


def test_sweep_schedule_is_created_once():
    from django_q.models import Schedule

    push_schedule_ensure()
    push_schedule_ensure()
    schedule = Schedule.objects.get(name="push-sweep")
    assert schedule.func == "integrations.tasks.push.push_sweep_task"
    assert schedule.schedule_type == Schedule.MINUTES and schedule.minutes == 1
    assert Schedule.objects.filter(name="push-sweep").count() == 1


def test_broker_down_at_enqueue_the_payment_stands_and_the_sweeper_sends_it(
    halo_sandbox, mirror, monkeypatch, django_capture_on_commit_callbacks
):
    import django_q.tasks

    real_async_task = django_q.tasks.async_task

    def broker_down(*args, **kwargs):
        raise ConnectionError("broker unreachable")

    invoice = mirror(1)
    monkeypatch.setattr(django_q.tasks, "async_task", broker_down)
    with django_capture_on_commit_callbacks(execute=True):
        payment = payment_record(invoice=invoice, amount="25.00")  # no exception for the person
    job = PushJob.objects.get(payment=payment)
    assert job.state == PushJob.State.PENDING
    invoice.refresh_from_db()
    assert invoice.balance == Decimal("8925.37")

    monkeypatch.setattr(django_q.tasks, "async_task", real_async_task)
    PushJob.objects.filter(pk=job.pk).update(created_at=timezone.now() - timedelta(minutes=1))
    assert push_due_dispatch() == 1
    assert_exactly_one(halo_sandbox, invoice, payment, job)
