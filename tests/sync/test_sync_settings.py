"""Per-connection settings: invoices created since, invoice number field, billing-contact rule."""

from __future__ import annotations

from datetime import date

import pytest

from integrations.models import Contact, Customer, Invoice
from integrations.services.connections import connection_update
from tests.sync.helpers import assert_matches_truth, truth_snapshot

pytestmark = pytest.mark.django_db


def test_invoices_created_since_excludes_older_invoices(partner, make_connection, halo_sandbox, run_sync):
    truth = truth_snapshot(halo_sandbox)["invoices"]
    dates = sorted(date.fromisoformat(i["invoice_date"]) for i in truth.values())
    cutoff = dates[len(dates) // 2]
    connection = make_connection(partner, halo_sandbox, invoices_created_since=cutoff)
    run = run_sync(connection, "full")
    assert run.state == "succeeded"
    expected = {hid for hid, i in truth.items() if date.fromisoformat(i["invoice_date"]) >= cutoff}
    assert set(Invoice.objects.filter(connection=connection).values_list("halopsa_id", flat=True)) == expected
    assert 0 < len(expected) < len(truth)
    # An old invoice changed in HaloPSA is still not imported, and nothing is flagged deleted.
    old = min(set(truth) - expected)
    halo_sandbox.store.update_invoice(old, duedate="2027-01-01")
    run_sync(connection, "incremental")
    run_sync(connection, "full")
    assert not Invoice.objects.filter(connection=connection, halopsa_id=old).exists()
    assert not Invoice.objects.filter(connection=connection, deleted_in_halopsa_at__isnull=False).exists()
    # Moving the date back imports them on the next sync, even an incremental one.
    connection_update(connection=connection, invoices_created_since=None)
    run_sync(connection, "incremental")
    assert Invoice.objects.filter(connection=connection).count() == len(truth)


def test_invoice_number_from_third_party_field(partner, make_connection, halo_sandbox, run_sync):
    connection = make_connection(partner, halo_sandbox, invoice_number_field="thirdpartyinvoicenumber")
    run_sync(connection, "full")
    assert_matches_truth(connection, halo_sandbox, number_field="thirdparty_number")
    assert Invoice.objects.get(connection=connection, halopsa_id=1).number == "QB-1001"
    connection_update(connection=connection, invoice_number_field="invoicenumber")
    run = run_sync(connection, "incremental")
    assert run.updated == 7
    assert Invoice.objects.get(connection=connection, halopsa_id=1).number == "10001"


def _emails(connection, halopsa_id):
    return sorted(
        Contact.objects.filter(customer__connection=connection, customer__halopsa_id=halopsa_id).values_list(
            "email", flat=True
        )
    )


def test_billing_contact_rule_per_connection(partner, make_connection, halo_sandbox, run_sync):
    connection = make_connection(partner, halo_sandbox, billing_contact_rule="accounts_only")
    run_sync(connection, "full")
    assert _emails(connection, 1) == ["accounts@acmedental.example"]
    assert _emails(connection, 2) == []  # Bluebird has no accounts contact
    connection_update(connection=connection, billing_contact_rule="invoice_users_only")
    run_sync(connection, "incremental")  # a rule change re-reads customers and users in full
    assert _emails(connection, 1) == ["dana.whitfield@acmedentalgroup.example"]
    assert len(_emails(connection, 2)) == 2
    connection_update(connection=connection, billing_contact_rule="accounts_and_invoice_users")
    run_sync(connection, "incremental")
    assert_matches_truth(connection, halo_sandbox)


def test_accounts_contact_and_user_with_the_same_email_appear_once(connection, halo_sandbox, run_sync):
    halo_sandbox.store.update_user(1, emailaddress="ACCOUNTS@acmedental.example")
    run_sync(connection, "full")
    acme = Customer.objects.get(connection=connection, halopsa_id=1)
    assert [(c.halopsa_key, c.email) for c in acme.billing_contacts.all()] == [
        ("accounts", "accounts@acmedental.example")
    ]
    assert_matches_truth(connection, halo_sandbox)
