"""Browser: the money screens of issue 17 (items 2-5) at 1280 px and on a 390 px phone, against the
sandbox. Screenshots: test-artifacts/screenshots/money-*.png.

The invoice page (open, partly paid, paid, void), the payment form's errors keeping what was typed,
the confirmation pages (record, delete, status, archive), each payment's standing with HaloPSA
(pending, posted, failed with HaloPSA's message), the payment list, and the archive queue and
unknown-customers tables fitting a phone without sideways scrolling.
"""

from __future__ import annotations

from decimal import Decimal

import pytest
from django.utils import timezone
from playwright.sync_api import expect

from tests.e2e.conftest import sign_in_page

pytestmark = pytest.mark.e2e

PHONE = {"viewport": {"width": 390, "height": 844}, "device_scale_factor": 2, "is_mobile": True, "has_touch": True}


@pytest.fixture
def books(partner, make_connection, halo_sandbox):
    """A full sync of the sandbox (as a worker would run it), plus a customer and an invoice HaloPSA deleted."""
    from integrations.models import Customer, Invoice, SyncRun
    from integrations.services.sync import sync_execute, sync_queue

    connection = make_connection(partner, halo_sandbox, halopsa_version="2.130.1")
    run, _ = sync_queue(connection=connection, scope=SyncRun.Scope.FULL, trigger=SyncRun.Trigger.CLI)
    sync_execute(run=SyncRun.objects.get(pk=run.pk))
    invoices = {i.halopsa_id: i for i in Invoice.objects.filter(connection=connection)}
    gone = (
        Invoice.objects.filter(connection=connection, status="open", customer__is_unknown=False)
        .order_by("-halopsa_id")
        .first()
    )
    Invoice.objects.filter(pk=gone.pk).update(deleted_in_halopsa_at=timezone.now())
    Customer.objects.filter(connection=connection, halopsa_id=3).update(deleted_in_halopsa_at=timezone.now())
    return {"open": invoices[1], "partial": invoices[2], "paid": invoices[3], "void": invoices[7], "gone": gone}


def _selected_status(page) -> str:
    return page.locator("#id_status").evaluate("select => select.options[select.selectedIndex].text")


def _offered_statuses(page) -> list[str]:
    return page.locator("#id_status option").all_inner_texts()


def test_money_screens_at_desktop(page, shot, partner_user, books, halo_sandbox):
    from integrations.models import Invoice

    sign_in_page(page, partner_user)
    invoice = books["open"]
    page.goto(f"/invoices/{invoice.pk}/")
    assert _selected_status(page) == "Open (now)"
    assert _offered_statuses(page) == ["Open (now)", "Paid (mark the balance as paid)", "Void (owes nothing)"]
    shot(page, "money-invoice-open-desktop")

    # A payment typed wrong comes back with what was typed and the errors next to the fields.
    form = page.locator(".payment-form")
    page.get_by_label("Amount").fill("12.345")
    page.get_by_label("Paid on").fill("0001-01-01")
    page.get_by_label("Method").fill("card")
    page.get_by_role("button", name="Record payment").click()
    expect(form).to_contain_text("Use at most two decimal places (cents).")
    expect(form).to_contain_text("A payment cannot be dated before 2000-01-01")
    expect(page.get_by_label("Amount")).to_have_value("12.345")
    expect(page.get_by_label("Paid on")).to_have_value("0001-01-01")
    expect(page.get_by_label("Method")).to_have_value("card")
    shot(page, "money-payment-errors-desktop")

    # Fixed, then confirmed on the next page: amount, invoice and customer shown first.
    page.get_by_label("Amount").fill("100.00")
    page.get_by_label("Paid on").fill(timezone.now().date().isoformat())
    page.get_by_role("button", name="Record payment").click()
    expect(page.locator("main h1")).to_have_text("Record a payment of 100.00 USD?")
    expect(page.get_by_test_id("confirm-invoice")).to_have_text(invoice.number)
    expect(page.get_by_test_id("confirm-customer")).to_have_text(invoice.customer.name)
    expect(page.get_by_test_id("confirm-balance")).to_have_text("8,950.37 USD → 8,850.37 USD")
    shot(page, "money-confirm-payment-desktop")
    page.get_by_role("button", name="Record 100.00 USD").click()
    expect(page.locator(".messages")).to_contain_text("Payment of 100.00 USD recorded")
    payments = page.locator("table.payments")  # tests push at once (Q_CLUSTER sync): already in HaloPSA
    expect(payments.locator("tr", has_text="100.00")).to_contain_text("Posted to HaloPSA (#")

    # A payment HaloPSA refuses shows as failed, with HaloPSA's message.
    halo_sandbox.add_fault("status", status=403, path="/api/InvoicePayment", method="POST", count=1)
    page.get_by_label("Amount").fill("25.00")
    page.get_by_role("button", name="Record payment").click()
    page.get_by_role("button", name="Record 25.00 USD").click()
    failed = payments.locator("tr", has_text="25.00")
    expect(failed).to_contain_text("Failed: needs review")
    expect(failed.locator(".push-error")).not_to_be_empty()
    shot(page, "money-invoice-push-states-desktop")

    # Deleting the failed one: confirmed first.
    failed.get_by_role("button", name="Delete").click()
    expect(page.locator("main h1")).to_have_text("Delete the payment of 25.00 USD?")
    expect(page.get_by_test_id("confirm-customer")).to_have_text(invoice.customer.name)
    shot(page, "money-confirm-delete-desktop")
    page.get_by_role("button", name="Delete 25.00 USD").click()
    expect(page.locator(".messages")).to_contain_text("Payment of 25.00 USD deleted")

    # Mark paid: the confirmation says what it settles and what HaloPSA is told.
    page.locator("#id_status").select_option("paid")
    page.get_by_role("button", name="Change status").click()
    expect(page.get_by_test_id("confirm-status")).to_have_text("Partially paid → Paid")
    expect(page.get_by_test_id("confirm-balance")).to_have_text("8,850.37 USD → 0.00 USD")
    expect(page.locator(".confirm-consequence")).to_contain_text("markaspaid")
    shot(page, "money-confirm-status-desktop")
    page.get_by_role("button", name="Set to paid").click()
    expect(page.locator(".messages")).to_contain_text("marked as paid: 8,850.37 USD settled")
    expect(page.get_by_test_id("invoice-status")).to_have_text("Paid")
    expect(page.get_by_test_id("invoice-balance")).to_have_text("0.00")
    expect(page.get_by_test_id("no-payment-form")).to_contain_text("nothing left to pay")
    assert _offered_statuses(page) == ["Paid (now)", "Void (owes nothing)"]  # the mark as paid reached HaloPSA
    expect(page.locator(".money-actions")).to_contain_text("to re-open it, delete the payments that pay it")
    shot(page, "money-invoice-paid-desktop")
    assert Invoice.objects.get(pk=invoice.pk).balance == Decimal("0.00")

    # A partly paid invoice: the menu says so, and offers only what makes sense.
    page.goto(f"/invoices/{books['partial'].pk}/")
    assert _selected_status(page) == "Partially paid (now)"
    assert _offered_statuses(page) == ["Partially paid (now)", "Paid (mark the balance as paid)", "Void (owes nothing)"]
    shot(page, "money-invoice-partial-desktop")

    # A void invoice owes nothing (HaloPSA's own amount due still shown) and takes no payment.
    page.goto(f"/invoices/{books['void'].pk}/")
    expect(page.get_by_test_id("invoice-balance")).to_have_text("0.00")
    expect(page.locator("dl.kv")).to_contain_text("HaloPSA's amount due: 9,778.65")
    expect(page.get_by_test_id("no-payment-form")).to_contain_text("is void")
    assert _offered_statuses(page) == ["Void (now)", "Open (un-void)"]
    shot(page, "money-invoice-void-desktop")
    page.goto("/invoices/?sort=-balance")
    expect(page.locator("table.data tbody tr").first).not_to_contain_text(books["void"].number)

    page.goto("/payments/")
    expect(page.locator("table.data tbody tr", has_text="100.00")).to_contain_text("Posted to HaloPSA")
    expect(page.locator("table.data tbody")).to_contain_text("From HaloPSA")  # payments applied in HaloPSA
    shot(page, "money-payments-desktop")

    # Archiving from the queue: confirmed, with what the invoice owes.
    page.goto("/archive-queue/")
    shot(page, "money-archive-queue-desktop")
    gone = books["gone"]
    page.locator("tr", has_text=gone.number).get_by_role("button", name="Archive").click()
    expect(page.locator("main h1")).to_have_text(f"Archive invoice {gone.number}?")
    expect(page.locator("main table")).to_contain_text(f"{gone.balance:,.2f} {gone.currency}")
    shot(page, "money-confirm-archive-desktop")
    page.get_by_role("button", name="Archive 1 record").click()
    expect(page.locator(".messages")).to_contain_text("1 record archived.")

    page.goto("/unknown-customers/")
    expect(page.locator("main h1")).to_be_visible()
    shot(page, "money-unknown-customers-desktop")


def _fits(page, name: str, tables: str | None = None) -> None:
    """Nothing wider than the phone: neither the page nor the named tables scroll sideways."""
    assert page.evaluate("document.documentElement.scrollWidth") <= 390, name
    if tables:
        wide = page.evaluate(
            """(selector) => [...document.querySelectorAll(selector)]
            .filter(t => t.offsetParent !== null && t.scrollWidth > t.clientWidth + 1)
            .map(t => t.scrollWidth + ' > ' + t.clientWidth)""",
            tables,
        )
        assert wide == [], f"{name}: {wide}"


def test_money_screens_on_a_phone(browser, live_server, shot, partner_user, books):
    context = browser.new_context(base_url=live_server.url, **PHONE)
    page = context.new_page()
    page.set_default_timeout(20_000)
    try:
        sign_in_page(page, partner_user)
        for key in ("open", "partial", "void"):
            page.goto(f"/invoices/{books[key].pk}/")
            _fits(page, key, "table.payments")
            shot(page, f"money-invoice-{key}-phone")
        page.goto(f"/invoices/{books['open'].pk}/")
        page.get_by_label("Amount").fill("abc")
        page.get_by_label("Paid on").fill("2999-01-01")
        page.get_by_role("button", name="Record payment").click()
        expect(page.locator(".payment-form")).to_contain_text("Enter an amount such as 12.34.")
        expect(page.get_by_label("Amount")).to_have_value("abc")
        _fits(page, "payment errors")
        shot(page, "money-payment-errors-phone")
        page.get_by_label("Amount").fill("10.00")
        page.get_by_label("Paid on").fill("")
        page.get_by_role("button", name="Record payment").click()
        expect(page.get_by_test_id("confirm-amount")).to_have_text("10.00 USD")
        _fits(page, "confirm payment")
        shot(page, "money-confirm-payment-phone")
        page.get_by_role("link", name="Cancel").click()
        page.locator("#id_status").select_option("void")
        page.get_by_role("button", name="Change status").click()
        expect(page.get_by_test_id("confirm-status")).to_have_text("Open → Void")
        _fits(page, "confirm status")
        shot(page, "money-confirm-status-phone")
        page.get_by_role("link", name="Cancel").click()
        expect(page.get_by_test_id("invoice-status")).to_have_text("Open")  # cancelled: nothing changed
        page.goto("/payments/")
        _fits(page, "payments")
        shot(page, "money-payments-phone")
        page.goto("/archive-queue/")
        _fits(page, "archive queue", "table.queue")
        shot(page, "money-archive-queue-phone")
        page.locator("tr", has_text=books["gone"].number).get_by_role("button", name="Archive").click()
        _fits(page, "confirm archive", "main table")
        shot(page, "money-confirm-archive-phone")
        page.goto("/unknown-customers/")
        expect(page.locator("table.queue tbody tr")).to_have_count(1)
        _fits(page, "unknown customers", "table.queue")
        shot(page, "money-unknown-customers-phone")
    finally:
        context.close()
