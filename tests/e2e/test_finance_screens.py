"""Browser: the finance overview, list totals, date filters, CSV export, menu counts and profile,
at desktop width and on a 390 px phone (issue 17). Screenshots: test-artifacts/screenshots/finance-*."""

from __future__ import annotations

import csv
import io
from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone
from playwright.sync_api import expect

from tests.e2e.conftest import sign_in_page

pytestmark = pytest.mark.e2e

PHONE = {"viewport": {"width": 390, "height": 844}, "device_scale_factor": 2, "is_mobile": True, "has_touch": True}
SCREENS = [
    ("/", "home"),
    ("/invoices/", "invoices"),
    ("/payments/", "payments"),
    ("/customers/", "customers"),
    ("customer", "customer"),
    ("/profile/", "profile"),
    ("/unknown-customers/", "unknown-customers"),
    ("/archive-queue/", "archive-queue"),
]


@pytest.fixture
def books(partner, make_connection):
    """Two connections, invoices in two currencies across the ageing buckets, payments, queue work."""
    from integrations.models import Customer, Invoice, Payment

    today = timezone.now().date()
    main = make_connection(partner, name="Main HaloPSA")
    europe = make_connection(partner, name="Europe HaloPSA")
    unknown = Customer.objects.create(connection=main, name=Customer.UNKNOWN_NAME, is_unknown=True)
    dental = Customer.objects.create(connection=main, halopsa_id=1, name="Acme Dental Group")
    law = Customer.objects.create(connection=main, halopsa_id=2, name="Baker & Lane Law")
    paris = Customer.objects.create(connection=europe, halopsa_id=3, name="Café de Paris SARL")
    Customer.objects.create(connection=main, halopsa_id=4, name="Gone Ltd", deleted_in_halopsa_at=timezone.now())
    rows = [  # customer, number, currency, days past due, total, balance, status
        (dental, "INV-1001", "USD", -20, "1250.00", "1250.00", "open"),
        (dental, "INV-1002", "USD", 12, "480.50", "180.50", "partially_paid"),
        (law, "INV-1003", "USD", 45, "2200.00", "2200.00", "open"),
        (law, "INV-1004", "USD", 75, "99.99", "99.99", "open"),
        (dental, "INV-1005", "USD", 140, "310.00", "310.00", "open"),
        (law, "INV-1006", "USD", 5, "640.00", "0.00", "paid"),
        (paris, "FR-2001", "EUR", 3, "900.00", "900.00", "open"),
        (paris, "FR-2002", "EUR", -10, "150.00", "150.00", "open"),
        (unknown, "INV-1007", "USD", -5, "75.00", "75.00", "open"),
    ]
    invoices = {}
    for customer, number, currency, late, total, balance, status in rows:
        invoices[number] = Invoice.objects.create(
            connection=customer.connection,
            customer=customer,
            halopsa_id=int(number[-4:]),
            number=number,
            currency=currency,
            invoice_date=today - timedelta(days=late + 30),
            due_date=today - timedelta(days=late),
            total=Decimal(total),
            subtotal=Decimal(total),
            balance=Decimal(balance),
            amount_paid=Decimal(total) - Decimal(balance),
            status=status,
        )
    Invoice.objects.create(
        connection=main,
        customer=law,
        halopsa_id=1999,
        number="INV-0999",
        total=Decimal("10.00"),
        balance=Decimal("10.00"),
        deleted_in_halopsa_at=timezone.now(),
    )
    Payment.objects.create(
        invoice=invoices["INV-1002"],
        connection=main,
        source="platform",
        amount=Decimal("300.00"),
        paid_on=today - timedelta(days=3),
        method="card",
        reference="PAY-77",
    )
    Payment.objects.create(
        invoice=invoices["INV-1006"],
        connection=main,
        source="halopsa",
        halopsa_id=5,
        amount=Decimal("640.00"),
        paid_on=today - timedelta(days=8),
        method="bank transfer",
    )
    return {"customer": dental}


def _path(path: str, books) -> str:
    return f"/customers/{books['customer'].pk}/" if path == "customer" else path


def test_finance_overview_filters_and_export_at_desktop(page, shot, partner_user, books):
    sign_in_page(page, partner_user)
    owed = page.locator("section.receivables")
    # the unknown invoice's too
    expect(owed.locator(".tile", has_text="Outstanding · USD")).to_contain_text("4,115.49 USD")
    expect(owed.locator(".tile", has_text="Overdue · USD")).to_contain_text("2,790.49 USD")
    expect(owed.locator(".tile", has_text="Outstanding · EUR")).to_contain_text("1,050.00 EUR")
    expect(owed.locator("table.ageing tr", has_text="31–60 days")).to_contain_text("2,200.00 USD")
    # 1 unknown-customer invoice; 1 invoice + 1 customer deleted
    expect(page.locator("nav .count")).to_have_text(["1", "2"])
    shot(page, "finance-home-desktop")

    # The overdue figure opens the overdue invoices, whose totals are the same.
    owed.locator(".tile", has_text="Overdue · USD").get_by_role("link").click()
    totals = page.get_by_role("table", name="Totals of everything selected (all pages)")
    expect(totals.locator("tr", has_text="USD")).to_contain_text("2,790.49 USD")
    expect(page.locator("table.data")).to_contain_text("Connection")  # two connections: each row names its own

    # Date filters, a bad date explained, then the CSV of exactly the filtered rows.
    page.goto("/invoices/")
    page.get_by_label("Due from").fill((timezone.now().date() - timedelta(days=90)).isoformat())
    page.get_by_label("Due to", exact=True).fill((timezone.now().date() - timedelta(days=31)).isoformat())
    page.get_by_role("button", name="Apply").click()
    expect(page.locator("table.data tbody tr")).to_have_count(2)  # INV-1003 (45 days) and INV-1004 (75 days)
    expect(totals.locator("tr", has_text="USD")).to_contain_text("2,299.99 USD")
    shot(page, "finance-invoices-desktop")
    with page.expect_download() as download:
        page.get_by_role("link", name="Export CSV").click()
    with open(download.value.path(), encoding="utf-8") as exported:
        rows = list(csv.reader(io.StringIO(exported.read())))
    assert [row[0] for row in rows[1:]] == ["INV-1003", "INV-1004"]
    assert rows[0][5:9] == ["Currency", "Total", "Amount paid", "Balance"] and rows[1][5:9] == [
        "USD",
        "2200.00",
        "0.00",
        "2200.00",
    ]

    page.goto("/invoices/?due_from=2026-02-30")
    expect(page.get_by_role("alert")).to_contain_text("Due from: Enter a date as YYYY-MM-DD.")

    page.goto("/payments/")
    expect(page.get_by_role("table", name="Totals of everything selected (all pages)")).to_contain_text("940.00 USD")
    shot(page, "finance-payments-desktop")
    for path, name in SCREENS:
        if name in ("home", "invoices", "payments"):
            continue
        page.goto(_path(path, books))
        expect(page.locator("main h1").first).to_be_visible()
        shot(page, f"finance-{name}-desktop")


def test_profile_sets_the_alert_address(page, shot, partner_user, books):
    sign_in_page(page, partner_user)
    page.get_by_role("link", name=partner_user.username).click()
    page.get_by_label("E-mail address for alerts").fill("not an address")
    page.get_by_role("button", name="Save").click()
    expect(page.locator(".form-card")).to_contain_text("Enter an e-mail address such as name@example.com.")
    page.get_by_label("E-mail address for alerts").fill("alice@acme.example")
    page.get_by_role("button", name="Save").click()
    expect(page.locator(".messages")).to_contain_text("Profile saved.")
    partner_user.refresh_from_db()
    assert partner_user.email == "alice@acme.example" and partner_user.receives_alerts


def test_phone_layout_menu_and_key_columns(browser, live_server, shot, partner_user, books):
    context = browser.new_context(base_url=live_server.url, **PHONE)
    page = context.new_page()
    page.set_default_timeout(20_000)
    try:
        sign_in_page(page, partner_user)
        menu = page.locator("#main-menu")
        toggle = page.get_by_role("button", name="Menu")
        expect(toggle).to_be_visible()
        expect(menu).to_be_hidden()
        expect(toggle).to_have_attribute("aria-expanded", "false")
        toggle.click()
        expect(menu).to_be_visible()
        expect(toggle).to_have_attribute("aria-expanded", "true")
        expect(page.get_by_role("link", name="Unknown customers")).to_contain_text("1")
        shot(page, "finance-menu-phone")
        page.get_by_role("link", name="Invoices", exact=True).click()
        expect(menu).to_be_hidden()
        # Key columns first; the secondary ones are not shown on a phone.
        header = page.locator("table.data thead th")
        expect(header.nth(0)).to_have_text("Number")
        expect(header.nth(2)).to_have_text("Balance")
        expect(page.locator("table.data th", has_text="Total")).to_be_hidden()
        expect(page.locator("table.data tbody tr", has_text="INV-1003")).to_contain_text("2,200.00 USD")
        for path, name in SCREENS:
            page.goto(_path(path, books))
            expect(page.locator("main h1").first).to_be_visible()
            # Nothing wider than the phone: the page never scrolls sideways.
            assert page.evaluate("document.documentElement.scrollWidth") <= 390, name
            shot(page, f"finance-{name}-phone")
    finally:
        context.close()
