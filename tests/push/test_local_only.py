"""Nothing but payments and status goes to HaloPSA: portal customers/invoices and local edits stay local."""

from __future__ import annotations

from datetime import date
from decimal import Decimal

import pytest

from integrations.models import Customer, Invoice, Origin, PushJob, SyncRun
from integrations.services.push import push_due_dispatch
from tests.push.conftest import halo_invoice

pytestmark = pytest.mark.django_db

WRITE_METHODS = ("POST", "PUT", "PATCH", "DELETE")


def writes(srv) -> list[tuple[str, str]]:
    return [
        (e["method"], e["path"]) for e in srv.request_log if e["method"] in WRITE_METHODS and e["path"] != "/auth/token"
    ]


def test_portal_customer_and_invoice_send_nothing(halo_sandbox, conn, django_capture_on_commit_callbacks):
    halo_sandbox.clear_request_log()
    clients_before = len(halo_sandbox.store.ground_truth()["customers"])
    with django_capture_on_commit_callbacks(execute=True):
        customer = Customer.objects.create(connection=conn, origin=Origin.PLATFORM, name="Portal-only Ltd")
        Invoice.objects.create(
            connection=conn,
            customer=customer,
            origin=Origin.PLATFORM,
            number="P-100",
            currency="USD",
            total=Decimal("99.00"),
            subtotal=Decimal("99.00"),
            balance=Decimal("99.00"),
        )
    push_due_dispatch()
    assert PushJob.objects.count() == 0
    assert halo_sandbox.count_requests() == 0
    assert len(halo_sandbox.store.ground_truth()["customers"]) == clients_before


def test_local_edits_of_an_unpaid_invoice_amount_or_due_date_send_nothing(
    halo_sandbox, mirror, django_capture_on_commit_callbacks
):
    invoice = mirror(1)
    halo_sandbox.clear_request_log()
    with django_capture_on_commit_callbacks(execute=True):
        invoice.total = invoice.balance = Decimal("100.00")
        invoice.due_date = date(2030, 1, 31)
        invoice.save()
    push_due_dispatch()
    assert PushJob.objects.count() == 0
    assert halo_sandbox.count_requests() == 0
    remote = halo_invoice(halo_sandbox, 1)
    assert remote["total"] == Decimal("8950.37") and not remote["duedate"].startswith("2030-01-31")


def test_a_pull_after_local_edits_writes_nothing_to_halopsa_and_halopsa_amounts_win(halo_sandbox, conn, mirror):
    from integrations.services.sync import sync_record

    invoice = mirror(1)
    customer = Customer.objects.create(connection=conn, origin=Origin.PLATFORM, name="Portal-only Ltd")
    portal = Invoice.objects.create(
        connection=conn,
        customer=customer,
        origin=Origin.PLATFORM,
        number="P-1",
        total=Decimal("5.00"),
        balance=Decimal("5.00"),
    )
    Invoice.objects.filter(pk=invoice.pk).update(
        total=Decimal("1.00"), balance=Decimal("1.00"), due_date=date(2030, 1, 31)
    )
    halo_sandbox.clear_request_log()
    run = sync_record(connection=conn, entity="invoices", halopsa_id=1, trigger=SyncRun.Trigger.MANUAL)
    assert run.state == SyncRun.State.SUCCEEDED, run.message
    assert writes(halo_sandbox) == []
    invoice.refresh_from_db()
    assert invoice.total == Decimal("8950.37") and invoice.balance == Decimal("8950.37")
    portal.refresh_from_db()
    assert portal.total == Decimal("5.00") and portal.origin == Origin.PLATFORM
