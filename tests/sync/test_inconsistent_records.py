"""An invoice that contradicts itself is a per-record sync error, never a silent write (issue 17 item 11).

Refused: `lines` null or missing (every read asks for them, and lines are replaced as a whole),
no invoice number, a negative amount paid, a balance above a positive total, a currency that is
not a currency. What a real HaloPSA plausibly sends keeps mapping: null fields left out
(`nulls_omitted`), a currency symbol in `currency`, no third-party number, credit notes.
"""

from __future__ import annotations

from decimal import Decimal

import pytest

from integrations.halopsa import mapping
from integrations.halopsa.client import HaloClient
from integrations.halopsa.mapping import MappingError
from integrations.models import Invoice, InvoiceLine, SyncError
from tests.sync.helpers import assert_matches_truth
from tests.sync.test_mapping import invoice_payload


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"lines": None}, "invoice 42: lines are missing although they were asked for"),
        ({"invoicenumber": ""}, "invoice 42: has no invoice number"),
        ({"invoicenumber": None, "thirdpartyinvoicenumber": ""}, "invoice 42: has no invoice number"),
        ({"amountpaid": Decimal("-5.00")}, "invoice 42: amountpaid is negative (-5.00)"),
        ({"amountdue": Decimal("1234.51")}, "invoice 42: the balance (1234.51) is more than the total (1234.50)"),
        ({"currency_code_name": "Dollars"}, "invoice 42: currency_code_name is not a currency: 'Dollars'"),
        ({"currency_code_name": "XYZ"}, "invoice 42: currency_code_name is not a currency"),
        ({"currency_code_name": None, "currency": "ABC"}, "invoice 42: currency is not a currency: 'ABC'"),
    ],
)
def test_an_inconsistent_invoice_is_refused_with_the_reason(overrides, message):
    with pytest.raises(MappingError) as caught:
        mapping.map_invoice(invoice_payload(**overrides))
    assert caught.value.message.startswith(message) and caught.value.halopsa_id == 42


def test_missing_lines_are_refused_too():
    payload = invoice_payload()
    del payload["lines"]
    with pytest.raises(MappingError, match="lines are missing"):
        mapping.map_invoice(payload)


@pytest.mark.parametrize(
    "overrides, currency",
    [
        ({"currency_code_name": "eur"}, "EUR"),
        ({"currency_code_name": None, "currency": "GBP"}, "GBP"),
        # a symbol says nothing certain: the connection's default
        (
            {"currency_code_name": None, "currency": "$"},
            "CAD",
        ),
        ({"currency_code_name": "", "currency": None}, "CAD"),
        ({"currency_code_name": "HRK"}, "HRK"),  # retired in 2023, still on older invoices
    ],
)
def test_currencies_halopsa_plausibly_sends_map(overrides, currency):
    assert mapping.map_invoice(invoice_payload(**overrides), default_currency="CAD")["currency"] == currency


@pytest.mark.parametrize(
    "overrides",
    [
        {"thirdpartyinvoicenumber": ""},  # falls back to invoicenumber
        {"lines": []},  # an invoice without lines says so with an empty list
        {"amountpaid": Decimal("1234.50"), "amountdue": Decimal("0.00")},  # paid in full
        {"amountpaid": Decimal("1300.00"), "amountdue": Decimal("-65.50")},  # overpaid: the balance is below the total
        # a credit note: its own rules (and it is not stored)
        {
            "total": Decimal("-50.00"),
            "amountpaid": Decimal("-50.00"),
            "amountdue": Decimal("0.00"),
            "lines": [],
            "invoicetype": 1,
            "payments": [],
        },
    ],
)
def test_consistent_invoices_still_map(overrides):
    mapping.map_invoice(invoice_payload(**overrides), number_field="thirdpartyinvoicenumber")


def test_what_nulls_omitted_leaves_out_still_maps():
    payload = {
        k: v
        for k, v in invoice_payload(thirdpartyinvoicenumber="", client_id=None, pdf_attachment_id=None).items()
        if v is not None and v != ""
    }
    mapped = mapping.map_invoice(payload, number_field="thirdpartyinvoicenumber")
    assert mapped["number"] == "10042" and len(mapped["lines"]) == 2


# --- in a sync: the record fails alone, what is stored stays -----------------------------------------


@pytest.fixture
def connection(unprobed_connection, halo_sandbox, settings):
    settings.HALOPSA_PDF_BATCH = 0
    return unprobed_connection(halo_sandbox)


BROKEN = {
    1: {"lines": None},
    2: {"invoicenumber": "", "thirdpartyinvoicenumber": ""},
    3: {"amountpaid": Decimal("-1.00")},
    4: {"amountdue": Decimal("999999.00")},
    6: {"currency_code_name": "Monopoly money"},
}


@pytest.mark.django_db
def test_inconsistent_invoices_are_sync_errors_and_keep_what_was_stored(
    connection, halo_sandbox, run_sync, monkeypatch
):
    assert run_sync(connection, "full").state == "succeeded"
    lines_before = {
        i: InvoiceLine.objects.filter(invoice__connection=connection, invoice__halopsa_id=i).count() for i in BROKEN
    }
    assert lines_before[1] > 0
    original = HaloClient.invoice_pages

    def pages_with_inconsistent_invoices(self, **kwargs):
        for page in original(self, **kwargs):
            records = [{**r, **BROKEN.get(r["id"], {}), "last_modified": "2030-01-01T00:00:00"} for r in page.records]
            yield type(page)(records=records, record_count=page.record_count, page_no=page.page_no)

    monkeypatch.setattr(HaloClient, "invoice_pages", pages_with_inconsistent_invoices)
    run = run_sync(connection, "full")

    assert run.state == "partial" and run.failed == len(BROKEN)
    errors = {e.halopsa_id: e.message for e in SyncError.objects.filter(run=run)}
    assert set(errors) == set(BROKEN)
    assert (
        "lines are missing" in errors[1] and "no invoice number" in errors[2] and "amountpaid is negative" in errors[3]
    )
    assert "more than the total" in errors[4] and "not a currency" in errors[6]
    # Nothing of the refused records was written: the invoice keeps its lines, number and amounts.
    assert {
        i: InvoiceLine.objects.filter(invoice__connection=connection, invoice__halopsa_id=i).count() for i in BROKEN
    } == lines_before
    assert all(Invoice.objects.get(connection=connection, halopsa_id=i).number for i in BROKEN)
    monkeypatch.undo()
    assert run_sync(connection, "full").state == "succeeded"
    assert not SyncError.objects.filter(connection=connection, resolved_at__isnull=True).exists()
    assert_matches_truth(connection, halo_sandbox)
