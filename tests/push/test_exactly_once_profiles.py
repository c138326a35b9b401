"""Exactly-once payment pushes under every HaloPSA shape the sandbox can take (issue 16 items 1-2).

The push looks a payment up by listing the invoice's payments exactly (never `search`), from the
same invoice read its balance check needs; what worked is recorded in the connection's HaloShape;
a lookup the probe found impossible, or one that cannot be trusted, sends the job to a person and
posts nothing.
"""

from __future__ import annotations

from decimal import Decimal

import pytest

from halosandbox.shapes import ALL_PROFILE, DEFAULT_PROFILE_NAME, PROFILE_VARIANTS
from integrations.halopsa.shape import (
    FEATURE_PAYMENT_PUSH,
    PAYMENTS_NOWHERE,
    PAYMENTS_VIA_INVOICE,
    PAYMENTS_VIA_LIST,
    UNKNOWN,
    HaloShape,
)
from integrations.models import PushJob
from integrations.services.connections import connection_shape_update
from integrations.services.payments import payment_delete, payment_record
from integrations.services.push import push_job_process
from tests.push.conftest import assert_ledgers_agree, clock_known, halo_payments

pytestmark = pytest.mark.django_db

EVERY_PROFILE = [DEFAULT_PROFILE_NAME, *PROFILE_VARIANTS, ALL_PROFILE]


@pytest.fixture
def queued(mirror, django_capture_on_commit_callbacks):
    """A payment recorded on a sandbox invoice whose push has not run yet."""

    def make(halopsa_id: int = 1, amount: str = "25.00"):
        invoice = mirror(halopsa_id)
        with django_capture_on_commit_callbacks(execute=False):
            payment = payment_record(invoice=invoice, amount=amount)
        return invoice, payment, PushJob.objects.get(payment=payment)

    return make


def assert_exactly_one(srv, invoice, payment, job) -> None:
    job.refresh_from_db()
    assert job.state == PushJob.State.DONE, job.last_error
    rows = halo_payments(srv, invoice.halopsa_id, payment.reference)
    assert len(rows) == 1 and rows[0]["amount"] == payment.amount
    payment.refresh_from_db()
    assert payment.halopsa_id == rows[0]["id"]
    assert_ledgers_agree(srv, invoice)


@pytest.mark.parametrize("lookup", [UNKNOWN, PAYMENTS_VIA_LIST])
@pytest.mark.parametrize(
    "halo_sandbox", [{"profile": name} for name in EVERY_PROFILE], ids=EVERY_PROFILE, indirect=True
)
def test_a_lost_response_is_exactly_one_payment_under_every_profile(halo_sandbox, conn, queued, lookup):
    connection_shape_update(connection=conn, payments_lookup=lookup)
    invoice, payment, job = queued()
    halo_sandbox.add_fault("lost_response", path="/api/InvoicePayment", method="POST")
    push_job_process(job_id=job.pk)
    assert_exactly_one(halo_sandbox, invoice, payment, job)
    assert halo_sandbox.count_requests("/api/InvoicePayment", method="POST") == 1
    assert not any("search" in entry["query"] for entry in halo_sandbox.request_log)


@pytest.mark.parametrize(
    "halo_sandbox", [{"profile": name} for name in EVERY_PROFILE], ids=EVERY_PROFILE, indirect=True
)
def test_deleting_a_payment_whose_id_never_came_back_under_every_profile(
    halo_sandbox, conn, queued, django_capture_on_commit_callbacks
):
    invoice, payment, job = queued()
    halo_sandbox.store.add_payment(1, payment.amount, reference=payment.reference)  # posted; the answer was lost
    PushJob.objects.filter(pk=job.pk).update(state=PushJob.State.RUNNING)  # in flight when the person deletes
    with django_capture_on_commit_callbacks(execute=False):
        payment_delete(payment=payment)
    delete_job = PushJob.objects.get(payment=payment, kind=PushJob.Kind.PAYMENT_DELETE)
    push_job_process(job_id=delete_job.pk)
    delete_job.refresh_from_db()
    assert delete_job.state == PushJob.State.DONE, delete_job.last_error
    assert halo_payments(halo_sandbox, 1, payment.reference) == []


def test_the_push_reads_the_invoice_once_for_the_lookup_and_the_balance(halo_sandbox, conn, queued):
    clock_known(conn, halo_sandbox)
    invoice, payment, job = queued()
    halo_sandbox.clear_request_log()
    push_job_process(job_id=job.pk)
    assert_exactly_one(halo_sandbox, invoice, payment, job)
    calls = [(e["method"], e["path"]) for e in halo_sandbox.request_log if e["path"] != "/auth/token"]
    assert calls == [("GET", "/api/Invoice/1"), ("POST", "/api/InvoicePayment")]
    # What worked is recorded for the next push.
    assert HaloShape.of(type(conn).objects.get(pk=conn.pk)).payments_lookup == PAYMENTS_VIA_INVOICE


@pytest.mark.parametrize("halo_sandbox", [{"profile": "payments_key_payments"}], indirect=True)
def test_the_list_lookup_costs_one_call_more_and_records_its_key(halo_sandbox, conn, queued, monkeypatch):
    clock_known(conn, halo_sandbox)
    invoice, payment, job = queued()
    # An instance whose invoice read carries no `payments`: only GET /InvoicePayment can tell.
    store, real_invoice_json = halo_sandbox.store, halo_sandbox.store.invoice_json
    monkeypatch.setattr(
        store,
        "invoice_json",
        lambda *a, **k: {k2: v for k2, v in real_invoice_json(*a, **k).items() if k2 != "payments"},
    )
    halo_sandbox.clear_request_log()
    push_job_process(job_id=job.pk)
    monkeypatch.undo()
    assert_exactly_one(halo_sandbox, invoice, payment, job)
    calls = [(e["method"], e["path"]) for e in halo_sandbox.request_log if e["path"] != "/auth/token"]
    assert calls == [("GET", "/api/Invoice/1"), ("GET", "/api/InvoicePayment"), ("POST", "/api/InvoicePayment")]
    shape = HaloShape.of(type(conn).objects.get(pk=conn.pk))
    assert (shape.payments_lookup, shape.payments_list_key) == (PAYMENTS_VIA_LIST, "payments")


@pytest.mark.parametrize("halo_sandbox", [{"profile": "payment_invoice_filter_ignored"}], indirect=True)
def test_no_trustworthy_list_needs_review_and_posts_nothing(halo_sandbox, conn, queued, monkeypatch):
    invoice, payment, job = queued()
    store, real_invoice_json = halo_sandbox.store, halo_sandbox.store.invoice_json
    monkeypatch.setattr(
        store,
        "invoice_json",
        lambda *a, **k: {k2: v for k2, v in real_invoice_json(*a, **k).items() if k2 != "payments"},
    )
    push_job_process(job_id=job.pk)
    job.refresh_from_db()
    assert job.state == PushJob.State.NEEDS_REVIEW
    assert "no trustworthy list of invoice 1's payments" in job.last_error and "nothing was posted" in job.last_error
    assert halo_sandbox.count_requests("/api/InvoicePayment", method="POST") == 0
    assert halo_sandbox.count_requests("/api/InvoicePayment", method="GET") == 1  # dropped at its first foreign row


def test_a_lookup_the_probe_found_impossible_blocks_the_push_with_its_message(halo_sandbox, conn, queued):
    message = "HaloPSA lists no invoice's payments exactly: payments made here are not posted."
    connection_shape_update(
        connection=conn,
        payments_lookup=PAYMENTS_NOWHERE,
        problems=[{"feature": FEATURE_PAYMENT_PUSH, "message": message}],
    )
    invoice, payment, job = queued()
    halo_sandbox.clear_request_log()
    push_job_process(job_id=job.pk)
    job.refresh_from_db()
    assert (job.state, job.last_error) == (PushJob.State.NEEDS_REVIEW, message)
    assert [e["path"] for e in halo_sandbox.request_log if e["path"] != "/auth/token"] == []
    invoice.refresh_from_db()
    assert invoice.balance == Decimal("8925.37")  # recorded here all the same
