"""Full sync against the sandbox over real HTTP: our copy equals HaloPSA's ground truth."""

from __future__ import annotations

from decimal import Decimal

import pytest
from django.db.models import Max

from integrations.models import Contact, Customer, Invoice, InvoiceLine, Payment, SyncCursor
from tests.sync.helpers import assert_matches_truth, capture_queries, db_snapshot, mirror_writes, truth_snapshot

pytestmark = pytest.mark.django_db


def test_full_sync_equals_ground_truth_tiny(unprobed_connection, halo_sandbox, run_sync):
    connection = unprobed_connection(halo_sandbox)
    run = run_sync(connection, "full")
    assert run.state == "succeeded", run.message
    assert_matches_truth(connection, halo_sandbox)
    # tiny: 3 customers, 7 invoices (+1 credit note, not an invoice here), unknown customer for #6.
    assert Customer.objects.filter(connection=connection, is_unknown=False).count() == 3
    assert Invoice.objects.filter(connection=connection).count() == 7
    unknown = Customer.objects.get(connection=connection, is_unknown=True)
    assert (unknown.name, unknown.halopsa_id) == ("unknown", None)
    assert list(Invoice.objects.filter(customer=unknown).values_list("halopsa_id", flat=True)) == [6]
    assert run.created > 0 and run.failed == 0
    assert run.api_requests == halo_sandbox.count_requests()


@pytest.mark.sandbox(dataset="demo")
def test_full_sync_equals_ground_truth_demo(connection, halo_sandbox, run_sync):
    run = run_sync(connection, "full")
    assert run.state == "succeeded", run.message
    assert_matches_truth(connection, halo_sandbox)
    assert run.progress_done >= run.progress_total > 0
    assert len(db_snapshot(connection)["invoices"]) == len(truth_snapshot(halo_sandbox)["invoices"]) > 100


def test_balances_partial_payments_and_credits(connection, halo_sandbox, run_sync):
    run_sync(connection, "full")
    partial = Invoice.objects.get(connection=connection, halopsa_id=2)
    assert partial.status == "partially_paid"
    assert partial.balance == partial.total - partial.amount_paid > 0
    assert sum(p.amount for p in partial.payments.all()) == partial.amount_paid
    credited = Invoice.objects.get(connection=connection, halopsa_id=4)
    credit = credited.payments.get()
    assert credit.kind == "credit" and credit.source == "halopsa"
    assert credited.balance == credited.total - credit.amount
    assert credited.status == "partially_paid"
    assert Invoice.objects.get(connection=connection, halopsa_id=7).status == "void"
    assert Invoice.objects.get(connection=connection, halopsa_id=3).balance == Decimal("0.00")
    # The credit note (id 5) is not an invoice here: its application is the credit payment above.
    assert not Invoice.objects.filter(connection=connection, halopsa_id=5).exists()


def test_rerun_is_idempotent_with_no_database_writes(connection, halo_sandbox, run_sync):
    first = run_sync(connection, "full")
    counts = {m: m.objects.count() for m in (Customer, Contact, Invoice, InvoiceLine, Payment)}
    stamps = dict(Invoice.objects.values_list("pk", "updated_at"))
    with capture_queries() as queries:
        again = run_sync(connection, "full")
    assert again.state == "succeeded"
    assert (again.created, again.updated, again.failed) == (0, 0, 0)
    # every record read again, none written (the unknown customer is not read)
    assert again.unchanged >= first.created - 1
    assert mirror_writes(queries) == []
    assert {m: m.objects.count() for m in counts} == counts
    assert dict(Invoice.objects.values_list("pk", "updated_at")) == stamps


def test_cursors_recorded_after_success(connection, run_sync):
    run = run_sync(connection, "full")
    cursors = {c.entity: c for c in SyncCursor.objects.filter(connection=connection)}
    assert set(cursors) == {"customers", "contacts", "invoices", "pdfs"}
    # The newest change HaloPSA reported (its own clock), less the time the run spent reading.
    newest = Invoice.objects.filter(connection=connection).aggregate(newest=Max("remote_updated_at"))["newest"]
    reading = run.finished_at - run.started_at
    assert newest - reading <= cursors["invoices"].changed_since <= newest
    assert cursors["invoices"].last_full_sync_at is not None and cursors["invoices"].last_success_at is not None


def test_page_processing_uses_a_bounded_number_of_queries(
    partner, make_connection, halo_sandbox_factory, run_sync, settings
):
    """Queries grow with pages, not records: 250 invoices cost about what 120 do, per page."""
    settings.HALOPSA_PDF_BATCH = 0
    small = halo_sandbox_factory(dataset={"customers": 5, "contacts": 10, "invoices": 100, "max_lines": 3})
    large = halo_sandbox_factory(dataset={"customers": 5, "contacts": 10, "invoices": 300, "max_lines": 3})
    with capture_queries() as q_small:
        run_sync(make_connection(partner, small, name="small"), "full")
    with capture_queries() as q_large:
        run_sync(make_connection(partner, large, name="large"), "full")
    # 2 more invoice pages; each page costs a fixed handful of statements (no per-record queries).
    per_page = (len(q_large) - len(q_small)) / 2
    assert per_page < 30, (len(q_small), len(q_large))
