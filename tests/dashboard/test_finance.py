"""Finance overview (issue 17): what customers owe on the home page, totals and date filters on the
lists, CSV exports, currency on every amount, the connection column, the queue counts in the menu."""

from __future__ import annotations

import csv
import io
from datetime import date, timedelta
from decimal import Decimal

import pytest
from django.db import connection as db_connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from integrations import selectors
from integrations.models import Customer, Invoice, Payment
from integrations.views.exports import INVOICE_COLUMNS

TODAY = date(2026, 11, 30)


def _invoice(
    world,
    number: str,
    balance: str,
    *,
    currency: str = "USD",
    due: date | None = None,
    status: str = "open",
    customer=None,
    **fields,
) -> Invoice:
    return Invoice.objects.create(
        connection=world.connection,
        customer=customer or world.customer,
        number=number,
        currency=currency,
        invoice_date=(due or TODAY) - timedelta(days=30),
        due_date=due,
        total=Decimal(balance) + Decimal("5.00"),
        balance=Decimal(balance),
        status=status,
        **fields,
    )


def _csv_rows(response) -> list[list[str]]:
    assert response.status_code == 200 and response.streaming
    return list(csv.reader(io.StringIO(b"".join(response.streaming_content).decode())))


@pytest.fixture
def ledger(mine):
    """Open invoices in every ageing bucket and two currencies, plus what must never count."""
    # The world's own invoices: ACME-INV-100 (open 120.00, due 2026-10-31), the unknown one (open
    # 50.00, no due date) and a deleted one; they are taken out so the figures below are exact.
    Invoice.objects.filter(connection=mine.connection).update(archived_at=timezone.now())
    _invoice(mine, "CUR", "100.10", due=TODAY)  # current (due today)
    _invoice(mine, "NODUE", "0.20", due=None)  # current (no due date)
    _invoice(mine, "D1", "10.01", due=TODAY - timedelta(days=1))  # 1-30
    _invoice(mine, "D30", "20.02", due=TODAY - timedelta(days=30), status="partially_paid")  # 1-30
    _invoice(mine, "D31", "30.03", due=TODAY - timedelta(days=31))  # 31-60
    _invoice(mine, "D60", "40.04", due=TODAY - timedelta(days=60))  # 31-60
    _invoice(mine, "D61", "50.05", due=TODAY - timedelta(days=61))  # 61-90
    _invoice(mine, "D90", "60.06", due=TODAY - timedelta(days=90))  # 61-90
    _invoice(mine, "D91", "70.07", due=TODAY - timedelta(days=91))  # over 90
    _invoice(mine, "EUR1", "1000.00", currency="EUR", due=TODAY - timedelta(days=400))  # over 90, EUR
    # Never owed: void, paid, archived, deleted in HaloPSA.
    _invoice(mine, "VOID", "999.00", due=TODAY - timedelta(days=10), status="void")
    _invoice(mine, "PAID", "0.00", due=TODAY - timedelta(days=10), status="paid")
    _invoice(mine, "ARCH", "999.00", due=TODAY - timedelta(days=10), archived_at=timezone.now())
    _invoice(mine, "GONE", "999.00", due=TODAY - timedelta(days=10), deleted_in_halopsa_at=timezone.now())
    return mine


def test_receivables_per_currency_with_ageing_buckets(ledger):
    rows = selectors.receivables(Invoice.objects.filter(connection=ledger.connection), today=TODAY)

    assert [r.currency for r in rows] == ["EUR", "USD"]
    eur, usd = rows
    assert usd.outstanding == Decimal("380.58") and usd.invoices == 9
    assert usd.overdue == Decimal("280.28") and usd.overdue_invoices == 7
    assert [(b.key, b.amount, b.count) for b in usd.buckets] == [
        ("current", Decimal("100.30"), 2),
        ("1_30", Decimal("30.03"), 2),
        ("31_60", Decimal("70.07"), 2),
        ("61_90", Decimal("110.11"), 2),
        ("over_90", Decimal("70.07"), 1),
    ]
    assert sum(b.amount for b in usd.buckets) == usd.outstanding
    assert (eur.outstanding, eur.overdue, eur.buckets[-1].amount) == (Decimal("1000.00"),) * 3
    # Each bucket names the due dates it covers (the home page links to the invoice list with them).
    assert [(b.due_from, b.due_to) for b in usd.buckets] == [
        (TODAY, None),
        (TODAY - timedelta(days=30), TODAY - timedelta(days=1)),
        (TODAY - timedelta(days=60), TODAY - timedelta(days=31)),
        (TODAY - timedelta(days=90), TODAY - timedelta(days=61)),
        (None, TODAY - timedelta(days=91)),
    ]


def test_money_sums_are_exact_decimals_even_where_floats_are_not(mine):
    """SQLite stores decimals as floating point, and a plain SUM of 21 x 999,999,999,999.99 there
    is 20,999,999,999,999.80 (a cent too many); totals are summed in whole cents instead."""
    Invoice.objects.filter(connection=mine.connection).update(archived_at=timezone.now())
    amounts = [Decimal("999999999999.99")] * 21 + [Decimal("0.10"), Decimal("0.20")] * 5
    Invoice.objects.bulk_create(
        [
            Invoice(
                connection=mine.connection,
                customer=mine.customer,
                halopsa_id=90_000 + i,
                number=f"BIG-{i}",
                currency="USD",
                due_date=TODAY,
                total=amount,
                balance=amount,
            )
            for i, amount in enumerate(amounts)
        ]
    )

    [usd] = selectors.receivables(Invoice.objects.filter(connection=mine.connection), today=TODAY)
    [totals] = selectors.invoice_totals(Invoice.objects.filter(connection=mine.connection, archived_at__isnull=True))

    assert sum(amounts) == Decimal("21000000000001.29")
    assert usd.outstanding == sum(amounts) and isinstance(usd.outstanding, Decimal)
    assert (totals.total, totals.balance, totals.count) == (sum(amounts), sum(amounts), 31)


def test_home_shows_outstanding_overdue_and_ageing_per_currency(alice_client, mine, theirs):
    today = timezone.now().date()
    _invoice(mine, "LATE", "10.50", due=today - timedelta(days=45))
    _invoice(mine, "EURO", "7.25", currency="EUR", due=today + timedelta(days=5))
    _invoice(theirs, "FOREIGN", "5000.00", due=today - timedelta(days=45))

    response = alice_client.get(reverse("home"))

    body = response.content.decode()
    usd = {r.currency: r for r in response.context["receivables"]}["USD"]
    # The world's ACME-INV-100 (120.00, due 2026-10-31) and the unknown invoice (50.00, no due date) count too.
    assert usd.outstanding == Decimal("180.50")
    assert "180.50 USD" in body and "7.25 EUR" in body and "What customers owe" in body
    assert "5,000.00" not in body and "FOREIGN" not in body  # another partner's money
    assert f"due_from={(today - timedelta(days=60)).isoformat()}" in body  # the 31-60 bucket links to its invoices


def test_home_query_count_does_not_grow_with_invoices(alice_client, mine):
    with CaptureQueriesContext(db_connection) as few:
        alice_client.get(reverse("home"))
    Invoice.objects.bulk_create(
        [
            Invoice(
                connection=mine.connection,
                customer=mine.customer,
                halopsa_id=50_000 + i,
                number=f"H-{i}",
                currency=["USD", "EUR", "GBP"][i % 3],
                due_date=TODAY - timedelta(days=i % 120),
                total=Decimal("10.00"),
                balance=Decimal("10.00"),
            )
            for i in range(300)
        ]
    )
    with CaptureQueriesContext(db_connection) as many:
        response = alice_client.get(reverse("home"))
    assert len(response.context["receivables"]) == 3
    assert len(many) == len(few) <= 8


def test_ageing_bucket_links_select_the_same_invoices(alice_client, ledger):
    """Each bucket's link on the home page lists exactly the invoices, and the total, it counts."""
    today = timezone.now().date()
    # all USD ones with a due date into 31-60
    Invoice.objects.filter(connection=ledger.connection, due_date__isnull=False).exclude(currency="EUR").update(
        due_date=today - timedelta(days=45)
    )
    [_eur, usd] = selectors.receivables(Invoice.objects.filter(connection=ledger.connection))
    bucket = usd.buckets[2]
    response = alice_client.get(
        reverse("invoice_list"),
        {"outstanding": "on", "due_from": bucket.due_from.isoformat(), "due_to": bucket.due_to.isoformat()},
    )
    [totals] = response.context["totals"]
    assert (totals.currency, totals.count, totals.balance) == ("USD", bucket.count, bucket.amount)
    overdue = alice_client.get(reverse("invoice_list"), {"overdue": "on"}).context["totals"]
    assert {t.currency: t.balance for t in overdue} == {"EUR": Decimal("1000.00"), "USD": usd.overdue}


def test_invoice_list_totals_cover_every_filtered_row_not_only_the_page(alice_client, mine):
    Invoice.objects.bulk_create(
        [
            Invoice(
                connection=mine.connection,
                customer=mine.customer,
                halopsa_id=70_000 + i,
                number=f"T-{i:03d}",
                invoice_date=date(2026, 3, 1),
                currency="GBP",
                total=Decimal("1.10"),
                balance=Decimal("0.55"),
            )
            for i in range(120)
        ]
    )

    response = alice_client.get(reverse("invoice_list"), {"q": "T-"})

    assert len(response.context["page"].object_list) == 50
    [gbp] = response.context["totals"]
    assert (gbp.currency, gbp.count, gbp.total, gbp.balance) == ("GBP", 120, Decimal("132.00"), Decimal("66.00"))
    body = response.content.decode()
    assert "132.00 GBP" in body and "66.00 GBP" in body
    assert "0.55 GBP" in body  # currency on each row's balance too


def test_invoice_date_filters(alice_client, mine):
    _invoice(mine, "MARCH", "1.00", due=date(2026, 4, 15))  # dated 2026-03-16
    page = alice_client.get(
        reverse("invoice_list"), {"invoice_from": "2026-03-01", "invoice_to": "2026-03-31"}
    ).context["page"]
    assert [inv.number for inv in page] == ["MARCH"]
    page = alice_client.get(reverse("invoice_list"), {"due_from": "2026-10-01", "due_to": "2026-10-31"}).context["page"]
    assert [inv.number for inv in page] == ["ACME-INV-100"]
    page = alice_client.get(reverse("invoice_list"), {"due_from": "2026-04-15", "due_to": "2026-04-15"}).context["page"]
    assert [inv.number for inv in page] == ["MARCH"]


@pytest.mark.parametrize(
    "params,message",
    [
        ({"due_from": "2026-02-30"}, "Due from: Enter a date as YYYY-MM-DD."),
        ({"invoice_to": "yesterday"}, "Dated to: Enter a date as YYYY-MM-DD."),
        ({"due_from": "2026-05-01", "due_to": "2026-04-01"}, "Due to: “Due to” is before “Due from”."),
    ],
)
def test_bad_invoice_dates_are_explained_and_not_applied(params, message, alice_client, mine):
    response = alice_client.get(reverse("invoice_list"), {**params, "q": "ACME-INV-100"})

    assert response.status_code == 200
    assert response.context["problems"] == [message]
    assert "Not applied:" in response.content.decode()
    # The other filters still apply.
    assert [inv.number for inv in response.context["page"]] == ["ACME-INV-100"]
    export = alice_client.get(reverse("invoice_export"), params)
    assert export.status_code == 400
    assert message in export.content.decode()


def test_payment_list_date_filters_totals_and_bad_dates(alice_client, mine):
    Payment.objects.create(
        invoice=mine.invoice,
        connection=mine.connection,
        source="halopsa",
        halopsa_id=7,
        amount=Decimal("2.50"),
        paid_on=date(2026, 11, 2),
        reference="NOV",
    )
    Payment.objects.create(
        invoice=mine.invoice,
        connection=mine.connection,
        source="platform",
        amount=Decimal("99.00"),
        paid_on=date(2026, 11, 3),
        reference="VOIDED",
        voided_at=timezone.now(),
    )

    response = alice_client.get(reverse("payment_list"), {"paid_from": "2026-11-01", "paid_to": "2026-11-30"})

    assert [p.reference for p in response.context["page"]] == ["VOIDED", "NOV"]
    [usd] = response.context["totals"]
    assert (usd.currency, usd.count, usd.total) == ("USD", 1, Decimal("2.50"))  # the deleted payment is left out
    assert "2.50 USD" in response.content.decode()
    bad = alice_client.get(reverse("payment_list"), {"paid_from": "2026-13-01"})
    assert bad.status_code == 200 and bad.context["problems"] == ["Paid from: Enter a date as YYYY-MM-DD."]
    assert alice_client.get(reverse("payment_export"), {"paid_to": "nope"}).status_code == 400
    both = alice_client.get(reverse("payment_list"), {"source": "halopsa", "paid_to": "2026-11-02"}).context["page"]
    assert [p.reference for p in both] == ["NOV"]


def test_invoice_export_is_the_filtered_rows_as_exact_text(alice_client, mine):
    evil = Customer.objects.create(
        connection=mine.connection, halopsa_id=66, name='=HYPERLINK("http://evil.example","x")'
    )
    _invoice(mine, "+SUM(A1)", "12.30", currency="EUR", due=date(2026, 12, 1), customer=evil, halopsa_id=4242)

    rows = _csv_rows(alice_client.get(reverse("invoice_export"), {"invoice_from": "2026-11-01"}))

    header, *data = rows
    assert header == list(INVOICE_COLUMNS)
    assert len(data) == 1
    row = dict(zip(header, data[0]))
    assert row["Number"] == "'+SUM(A1)" and row["Customer"] == '\'=HYPERLINK("http://evil.example","x")'
    assert (row["Currency"], row["Total"], row["Balance"], row["Amount paid"]) == ("EUR", "17.30", "12.30", "0.00")
    assert (row["Invoice date"], row["Due date"], row["Status"], row["HaloPSA id"]) == (
        "2026-11-01",
        "2026-12-01",
        "Open",
        "4242",
    )
    everything = _csv_rows(alice_client.get(reverse("invoice_export")))
    assert {r[0] for r in everything[1:]} == {"ACME-INV-100", "ACME-INV-101", "ACME-INV-102", "'+SUM(A1)"}


def test_export_headers_name_a_csv_download(alice_client, mine):
    response = alice_client.get(reverse("payment_export"))
    assert response["Content-Type"] == "text/csv; charset=utf-8"
    assert response["Content-Disposition"].startswith('attachment; filename="payments-')
    header, row = _csv_rows(response)
    assert dict(zip(header, row)) == {
        "Paid on": "2026-10-05",
        "Invoice": "ACME-INV-100",
        "Customer": "ACME Customer",
        "Connection": "ACME HaloPSA",
        "Currency": "USD",
        "Amount": "10.00",
        "Kind": "Payment",
        "Source": "Platform",
        "Method": "",
        "Reference": "ACME-PAY",
        "Deleted at": "",
        "HaloPSA id": "",
    }


def test_csv_text_cells_never_start_a_formula():
    from integrations.views.exports import csv_text, csv_value

    assert [csv_text(v) for v in ("=1+1", "+1", "-1", "@SUM(A1)", "\tx", "\rx", "Acme", "", None, "a=b")] == [
        "'=1+1",
        "'+1",
        "'-1",
        "'@SUM(A1)",
        "'\tx",
        "'\rx",
        "Acme",
        "",
        "",
        "a=b",
    ]
    # Numbers are not text: a negative amount keeps its sign for the spreadsheet.
    assert csv_value(Decimal("-5.00")) == "-5.00" and csv_value(Decimal("0.10")) == "0.10"


def test_export_query_count_does_not_grow_with_rows(alice_client, mine):
    with CaptureQueriesContext(db_connection) as few:
        _csv_rows(alice_client.get(reverse("invoice_export")))
    Invoice.objects.bulk_create(
        [
            Invoice(
                connection=mine.connection,
                customer=mine.customer,
                halopsa_id=80_000 + i,
                number=f"X-{i}",
                total=Decimal("1.00"),
                balance=Decimal("1.00"),
            )
            for i in range(2500)
        ]
    )
    with CaptureQueriesContext(db_connection) as many:
        rows = _csv_rows(alice_client.get(reverse("invoice_export")))
    assert len(rows) == 1 + 3 + 2500
    assert len(many) == len(few)


def test_export_streams_under_asgi_chunk_by_chunk(mine, partner_user):
    """Under ASGI (the production web process) the rows are sent as they are read, not collected."""
    from asgiref.sync import async_to_sync
    from django.test import RequestFactory

    from integrations.views.exports import ROWS_PER_CHUNK, invoice_export

    Invoice.objects.bulk_create(
        [
            Invoice(connection=mine.connection, customer=mine.customer, halopsa_id=85_000 + i, number=f"A-{i}")
            for i in range(ROWS_PER_CHUNK * 2)
        ]
    )
    request = RequestFactory().get(reverse("invoice_export"))
    request.user = partner_user
    response = invoice_export(request)

    async def collect():
        return [chunk async for chunk in response]

    chunks = async_to_sync(collect)()
    assert len(chunks) == 3  # header + 999 rows, then the rest, then the last few
    assert b"".join(chunks).decode().count("\n") == 1 + 3 + ROWS_PER_CHUNK * 2


def test_connection_column_only_when_there_are_several(
    alice_client, mine, make_connection, partner, staff_user, client
):
    assert '<th class="opt">Connection</th>' not in alice_client.get(reverse("invoice_list")).content.decode()
    second = make_connection(partner, name="Second HaloPSA")
    other_customer = Customer.objects.create(connection=second, halopsa_id=1, name="Second Co")
    Invoice.objects.create(
        connection=second, customer=other_customer, number="S-1", total=Decimal("1.00"), balance=Decimal("1.00")
    )
    for name in ("invoice_list", "payment_list", "customer_list"):
        assert '<th class="opt">Connection</th>' in alice_client.get(reverse(name)).content.decode(), name
    assert "Second HaloPSA" in alice_client.get(reverse("invoice_list")).content.decode()
    client.force_login(staff_user)
    assert '<th class="opt">Connection</th>' in client.get(reverse("payment_list")).content.decode()


def test_menu_counts_match_the_queue_pages_in_one_query(alice_client, mine, theirs, partner_user):
    _invoice(mine, "UNK-2", "1.00", customer=mine.unknown)
    _invoice(mine, "UNK-ARCH", "1.00", customer=mine.unknown, archived_at=timezone.now())
    Customer.objects.create(
        connection=mine.connection, halopsa_id=77, name="Gone 2", deleted_in_halopsa_at=timezone.now()
    )

    with CaptureQueriesContext(db_connection) as queries:
        summary = selectors.nav_summary(user=partner_user)

    assert len(queries) == 1
    unknown_page = alice_client.get(reverse("unknown_customers")).context["page"]
    customers, invoices = selectors.archive_queue(user=partner_user)
    assert summary.unknown_invoices == unknown_page.paginator.count == 2
    assert summary.archive == customers.count() + invoices.count() == 3
    assert summary.connections == 1
    body = alice_client.get(reverse("invoice_list")).content.decode()
    assert 'Unknown customers <span class="count"' in body and ">2</span>" in body
    assert 'Archive queue <span class="count"' in body and ">3</span>" in body


def test_menu_counts_need_one_query_whatever_the_number_of_connections(mine, partner, make_connection, partner_user):
    for i in range(6):
        extra = make_connection(partner, name=f"Extra {i}")
        unknown = Customer.objects.create(connection=extra, name=Customer.UNKNOWN_NAME, is_unknown=True)
        Invoice.objects.create(connection=extra, customer=unknown, number=f"U-{i}")
    with CaptureQueriesContext(db_connection) as queries:
        summary = selectors.nav_summary(user=partner_user)
    assert len(queries) == 1 and summary.unknown_invoices == 7 and summary.connections == 7


def test_customer_page_shows_what_the_customer_owes_with_currency(alice_client, mine):
    body = alice_client.get(reverse("customer_detail", kwargs={"pk": mine.customer.pk})).content.decode()
    # ACME-INV-100 is open (120.00); ACME-INV-102 was deleted in HaloPSA and does not count.
    assert "Outstanding · USD" in body and "120.00 USD" in body
