"""Incremental syncs after changes made in HaloPSA (through the sandbox's store)."""

from __future__ import annotations

from datetime import date
from decimal import Decimal

import pytest
from django.utils import timezone

from integrations.halopsa.shape import HaloShape
from integrations.models import Contact, Customer, Invoice, Payment, SyncRun
from integrations.services.sync import sync_record
from tests.sync.helpers import assert_matches_truth, capture_queries, mirror_writes

pytestmark = pytest.mark.django_db


def test_no_change_incremental_costs_three_api_calls_and_no_writes(connection, halo_sandbox, run_sync):
    run_sync(connection, "full")  # the first sync probes the instance's shape (which filters work)
    halo_sandbox.clear_request_log()
    with capture_queries() as queries:
        run = run_sync(connection, "incremental")
    assert run.state == "succeeded"
    # One list call per entity (clients, users, invoices); the token is reused; no PDF is re-fetched.
    assert [e["path"] for e in halo_sandbox.request_log] == ["/api/Client", "/api/Users", "/api/Invoice"]
    assert run.api_requests == 3
    assert (run.created, run.updated) == (0, 0)
    assert mirror_writes(queries) == []
    # The incremental asks HaloPSA only for what changed since the cursor (minus the overlap):
    # with its date filter, or newest first where the instance ignores the filter.
    connection.refresh_from_db()
    shape = HaloShape.of(connection)
    client_query, users_query, invoice_query = (e["query"] for e in halo_sandbox.request_log)
    if shape.invoice_datesearch == "works":
        assert invoice_query["datesearch"] == "last_modified" and invoice_query["start_date"]
    else:
        assert (invoice_query["order"], invoice_query["orderdesc"]) == ("last_modified", "true")
    for query, fact, order in (
        (client_query, shape.client_updated_filter, "alastupdate"),
        (users_query, shape.user_updated_filter, "ulastupdate"),
    ):
        assert query["lastupdatefromdate"] if fact == "works" else query["order"] == order


def test_incremental_picks_up_edits_payments_credits_and_new_invoices(connection, halo_sandbox, run_sync):
    run_sync(connection, "full")
    store = halo_sandbox.store
    store.update_invoice(1, amount="9000.00", duedate="2026-12-31")
    store.add_payment(2, "10.00")
    store.apply_credit(8, "5.00")
    created = store.create_invoice(client_id=None, amount="50.00")
    run = run_sync(connection, "incremental")
    assert run.state == "succeeded", run.message
    assert_matches_truth(connection, halo_sandbox)
    edited = Invoice.objects.get(connection=connection, halopsa_id=1)
    assert (edited.total, edited.due_date) == (Decimal("9000.00"), date(2026, 12, 31))
    assert edited.lines.filter(description="Adjustment").exists()
    credited = Invoice.objects.get(connection=connection, halopsa_id=8)
    assert credited.payments.get(kind="credit").amount == Decimal("5.00")
    assert credited.balance == credited.total - Decimal("5.00")
    new = Invoice.objects.get(connection=connection, halopsa_id=created["id"])
    assert new.customer.is_unknown and new.total == Decimal("50.00")
    assert run.updated >= 3 and run.created >= 1


def test_contact_that_stops_qualifying_is_removed(connection, halo_sandbox, run_sync):
    run_sync(connection, "full")
    acme = Customer.objects.get(connection=connection, halopsa_id=1)
    assert acme.billing_contacts.filter(halopsa_user_id=1).exists()  # Dana Whitfield
    halo_sandbox.store.update_user(1, canaccessinvoices=False)
    halo_sandbox.store.update_user(2, canaccessinvoices=True)  # Evan Price now qualifies
    run_sync(connection, "incremental")
    assert not acme.billing_contacts.filter(halopsa_user_id=1).exists()
    assert acme.billing_contacts.filter(halopsa_user_id=2).exists()
    halo_sandbox.store.update_user(2, inactive=True)  # an inactive user is no billing contact
    halo_sandbox.store.update_client(1, accountsemailaddress="ap@acme.example")
    run_sync(connection, "incremental")
    assert sorted(acme.billing_contacts.values_list("email", flat=True)) == ["ap@acme.example"]
    assert_matches_truth(connection, halo_sandbox)


def test_user_moving_to_another_client_moves_the_contact(connection, halo_sandbox, run_sync):
    run_sync(connection, "full")
    halo_sandbox.store.update_user(1, client_id=2)
    run_sync(connection, "incremental")
    contact = Contact.objects.get(customer__connection=connection, halopsa_user_id=1)
    assert contact.customer.halopsa_id == 2
    assert_matches_truth(connection, halo_sandbox)


def test_deletions_are_flagged_by_a_full_sync_only(connection, halo_sandbox, run_sync):
    run_sync(connection, "full")
    halo_sandbox.store.delete_invoice(1)
    halo_sandbox.store.delete_client(3)
    run_sync(connection, "incremental")
    assert Invoice.objects.get(connection=connection, halopsa_id=1).deleted_in_halopsa_at is None
    run = run_sync(connection, "full")
    assert run.state == "succeeded"
    invoice = Invoice.objects.get(connection=connection, halopsa_id=1)
    customer = Customer.objects.get(connection=connection, halopsa_id=3)
    assert invoice.deleted_in_halopsa and customer.deleted_in_halopsa
    assert invoice.archived_at is None and customer.archived_at is None  # a person archives, not the sync
    # Its invoices stay attached to it.
    assert Invoice.objects.filter(customer=customer).count() == 2
    assert not Customer.objects.get(connection=connection, is_unknown=True).deleted_in_halopsa


def test_sync_record_404_flags_the_invoice(connection, halo_sandbox, run_sync):
    run_sync(connection, "full")
    halo_sandbox.store.delete_invoice(2)
    run = sync_record(connection=connection, entity="invoices", halopsa_id=2, trigger=SyncRun.Trigger.WEBHOOK)
    assert run.state == "succeeded" and run.updated == 1
    assert Invoice.objects.get(connection=connection, halopsa_id=2).deleted_in_halopsa
    halo_sandbox.store.delete_client(1)
    sync_record(connection=connection, entity="customers", halopsa_id=1, trigger=SyncRun.Trigger.WEBHOOK)
    assert Customer.objects.get(connection=connection, halopsa_id=1).deleted_in_halopsa


def test_sync_record_updates_one_invoice(connection, halo_sandbox, run_sync):
    run_sync(connection, "full")
    halo_sandbox.store.add_payment(1, "100.00", reference="EXT-1")
    halo_sandbox.clear_request_log()
    run = sync_record(connection=connection, entity="invoices", halopsa_id=1, trigger=SyncRun.Trigger.WEBHOOK)
    invoice = Invoice.objects.get(connection=connection, halopsa_id=1)
    # The invoice and its new PDF (the payment changed it), nothing else: PDFs are real time too.
    assert run.state == "succeeded" and run.updated == 2
    assert [e["path"] for e in halo_sandbox.request_log] == [
        "/api/Invoice/1",
        f"/api/Attachment/{invoice.pdf_attachment_id}",
    ]
    assert invoice.pdf.attachment_id == invoice.pdf_attachment_id
    assert invoice.status == "partially_paid"
    assert invoice.payments.get(reference="EXT-1").amount == Decimal("100.00")


def test_reappearing_rows_are_unflagged_and_archived_and_portal_rows_untouched(connection, halo_sandbox, run_sync):
    run_sync(connection, "full")
    now = timezone.now()
    Invoice.objects.filter(connection=connection, halopsa_id=1).update(deleted_in_halopsa_at=now)
    Invoice.objects.filter(connection=connection, halopsa_id=2).update(archived_at=now)
    portal_customer = Customer.objects.create(connection=connection, name="Portal Only", origin="platform")
    portal_invoice = Invoice.objects.create(
        connection=connection,
        customer=portal_customer,
        origin="platform",
        number="P-1",
        total=Decimal("10.00"),
        balance=Decimal("10.00"),
    )
    halo_sandbox.store.update_invoice(2, duedate="2027-01-31")
    run_sync(connection, "full")
    assert Invoice.objects.get(connection=connection, halopsa_id=1).deleted_in_halopsa_at is None
    archived = Invoice.objects.get(connection=connection, halopsa_id=2)
    assert archived.archived_at == now and archived.due_date == date(2027, 1, 31)
    portal_invoice.refresh_from_db()
    portal_customer.refresh_from_db()
    assert portal_invoice.deleted_in_halopsa_at is None and portal_invoice.number == "P-1"
    assert portal_customer.deleted_in_halopsa_at is None and portal_customer.name == "Portal Only"


def test_assigned_unknown_invoice_keeps_its_customer_until_halopsa_gives_one(
    connection, halo_sandbox, run_sync, partner_user
):
    run_sync(connection, "full")
    invoice = Invoice.objects.get(connection=connection, halopsa_id=6)
    acme = Customer.objects.get(connection=connection, halopsa_id=1)
    Invoice.objects.filter(pk=invoice.pk).update(
        customer=acme, customer_assigned_at=timezone.now(), customer_assigned_by=partner_user
    )
    halo_sandbox.store.update_invoice(6, duedate="2027-02-01")  # changed in HaloPSA, still no customer
    run_sync(connection, "incremental")
    invoice.refresh_from_db()
    assert invoice.customer_id == acme.pk and invoice.due_date == date(2027, 2, 1)
    halo_sandbox.store.update_invoice(6, client_id=2)  # HaloPSA now gives it a real customer
    run_sync(connection, "incremental")
    invoice.refresh_from_db()
    assert invoice.customer.halopsa_id == 2 and invoice.customer_assigned_at is None


def test_pending_platform_payment_keeps_reducing_the_balance_until_halopsa_has_it(connection, halo_sandbox, run_sync):
    from integrations.services.payments import payment_record

    run_sync(connection, "full")
    invoice = Invoice.objects.get(connection=connection, halopsa_id=1)
    payment = payment_record(invoice=invoice, amount="100.00", reference="SP-TEST-1")
    invoice.refresh_from_db()
    reduced = invoice.balance
    halo_sandbox.store.update_invoice(1, duedate="2027-03-01")  # HaloPSA changes; the push has not landed
    run_sync(connection, "incremental")
    invoice.refresh_from_db()
    assert invoice.balance == reduced and invoice.status == "partially_paid"
    assert invoice.due_date == date(2027, 3, 1)
    # The push lands (its response lost, so no HaloPSA id recorded here): found by reference.
    halo_sandbox.store.add_payment(1, "100.00", reference="SP-TEST-1")
    run_sync(connection, "incremental")
    invoice.refresh_from_db()
    payment.refresh_from_db()
    assert Payment.objects.filter(invoice=invoice).count() == 1
    assert payment.halopsa_id is not None and payment.source == "platform"
    assert invoice.balance == reduced
    assert_matches_truth(connection, halo_sandbox)


def test_scheduled_poll_on_realtime_connection_counts_what_webhooks_missed(
    partner, make_connection, halo_sandbox, run_sync
):
    connection = make_connection(partner, halo_sandbox, halopsa_version="2.130.1")
    assert connection.is_realtime
    run_sync(connection, "full")
    halo_sandbox.store.update_invoice(1, duedate="2027-04-01")
    halo_sandbox.store.create_invoice(client_id=1, amount="20.00")
    run = run_sync(connection, "incremental", trigger="schedule")
    # The edited and the new invoice were missed by webhooks; their PDF downloads are not records.
    assert run.fixed_by_poll == 2
    assert run.created + run.updated == 4
    halo_sandbox.store.update_invoice(1, duedate="2027-04-02")
    manual = run_sync(connection, "incremental", trigger="manual")
    assert manual.updated >= 1 and manual.fixed_by_poll == 0


def test_unpaid_and_recent_scopes(connection, halo_sandbox, run_sync):
    run_sync(connection, "full")
    halo_sandbox.clear_request_log()
    halo_sandbox.store.update_invoice(1, duedate="2027-05-01")
    run = run_sync(connection, "unpaid")
    assert run.state == "succeeded"
    # HaloPSA's own "unpaid" view: 0 and -1 (the database default), and 1 (partially paid).
    assert set(halo_sandbox.request_log[0]["query"]["paymentstatuses"].split(",")) >= {"-1", "0", "1"}
    assert Invoice.objects.get(connection=connection, halopsa_id=1).due_date == date(2027, 5, 1)
    halo_sandbox.store.update_invoice(3, duedate="2027-06-01")  # a paid invoice
    run = run_sync(connection, "recent")
    assert run.state == "succeeded"
    assert Invoice.objects.get(connection=connection, halopsa_id=3).due_date == date(2027, 6, 1)
