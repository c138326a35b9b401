"""End-to-end: the partner's everyday flows in a real browser against the HaloPSA sandbox."""

from __future__ import annotations

import re
from decimal import Decimal

import pytest
from playwright.sync_api import expect

pytestmark = pytest.mark.e2e


@pytest.fixture
def synced(partner, make_connection, halo_sandbox):
    """A connection to the sandbox with one full sync done (through the service, as a worker would)."""
    from integrations.models import SyncRun
    from integrations.services.sync import sync_execute, sync_queue

    connection = make_connection(partner, halo_sandbox, halopsa_version="2.130.1")
    run, _ = sync_queue(connection=connection, scope=SyncRun.Scope.FULL, trigger=SyncRun.Trigger.CLI)
    sync_execute(run=SyncRun.objects.get(pk=run.pk))
    return connection


def test_sign_in_add_and_test_connection(page, sign_in, shot, partner_user, halo_sandbox):
    from halosandbox import SANDBOX_CLIENT_ID, SANDBOX_CLIENT_SECRET

    sign_in(partner_user)
    expect(page.get_by_text("No HaloPSA connection yet.")).to_be_visible()
    page.get_by_role("link", name="Add connection").first.click()
    page.get_by_label("Name").fill("Main HaloPSA")
    page.get_by_label("HaloPSA URL").fill(halo_sandbox.url)
    page.get_by_label("Client ID").fill(SANDBOX_CLIENT_ID)
    page.get_by_label("Client secret").fill(SANDBOX_CLIENT_SECRET)
    page.get_by_label("Invoices created since").fill("2024-01-01")
    shot(page, "01-connection-form")
    page.get_by_role("button", name="Add connection").click()
    expect(page.get_by_role("heading", level=1)).to_contain_text("Main HaloPSA")

    page.get_by_role("button", name="Test connection").click()
    expect(page.locator(".messages")).to_contain_text("Connected. HaloPSA version 2.130.1")
    expect(page.locator(".tiles")).to_contain_text("Real time")

    # The secret is write-only: the edit form never renders it.
    page.get_by_role("link", name="Edit").click()
    assert SANDBOX_CLIENT_SECRET not in page.content()
    assert page.get_by_label("Client secret").input_value() == ""


def test_failed_connection_test_says_what_failed(page, sign_in, partner, partner_user, make_connection, halo_sandbox):
    connection = make_connection(partner, halo_sandbox, client_secret="wrong-secret")
    sign_in(partner_user)
    page.goto(f"/connections/{connection.pk}/")
    page.get_by_role("button", name="Test connection").click()
    expect(page.locator(".messages .msg-error")).to_contain_text("Bad credentials")


def test_run_a_sync_and_see_the_progress_bar_finish(
    page, sign_in, shot, partner, partner_user, make_connection, halo_sandbox
):
    connection = make_connection(partner, halo_sandbox, halopsa_version="2.130.1")
    sign_in(partner_user)
    page.goto(f"/connections/{connection.pk}/")
    page.get_by_role("button", name="Full resync").click()
    bar = page.get_by_role("progressbar", name="Sync progress")
    expect(bar).to_have_attribute("aria-valuenow", "100")
    expect(page.locator(".run-progress [data-field=state_label]")).to_have_text(re.compile("Succeeded|Partial"))
    expect(page.locator("table.data").first).to_be_visible()
    shot(page, "02-connection-page")
    page.get_by_role("link", name="Invoices", exact=True).click()
    from integrations.models import Invoice

    synced_count = Invoice.objects.filter(connection=connection).count()
    assert synced_count > 0
    expect(page.locator("table.data tbody tr")).to_have_count(synced_count)
    shot(page, "03-invoices")


def test_progress_bar_updates_live_while_a_run_works(page, sign_in, partner, partner_user, make_connection):
    """The page polls the progress endpoint; the bar moves and the page refreshes when the run ends."""
    from django.utils import timezone

    from integrations.models import SyncRun

    connection = make_connection(partner)
    run = SyncRun.objects.create(
        connection=connection,
        trigger=SyncRun.Trigger.MANUAL,
        scope=SyncRun.Scope.FULL,
        state=SyncRun.State.RUNNING,
        started_at=timezone.now(),
        progress_done=10,
        progress_total=40,
    )
    sign_in(partner_user)
    page.goto(f"/connections/{connection.pk}/")
    bar = page.get_by_role("progressbar", name="Sync progress")
    expect(bar).to_have_attribute("aria-valuenow", "25")
    SyncRun.objects.filter(pk=run.pk).update(progress_done=30)
    expect(bar).to_have_attribute("aria-valuenow", "75")
    SyncRun.objects.filter(pk=run.pk).update(
        progress_done=40, state=SyncRun.State.SUCCEEDED, finished_at=timezone.now()
    )
    expect(page.locator(".run-progress [data-field=state_label]")).to_have_text("Succeeded")
    expect(bar).to_have_attribute("aria-valuenow", "100")


def test_resolve_an_unknown_customer(page, sign_in, shot, partner_user, synced):
    from integrations.models import Invoice

    unknown = Invoice.objects.get(connection=synced, customer__is_unknown=True)
    sign_in(partner_user)
    page.get_by_role("link", name="Unknown customers").click()
    row = page.locator("tr", has_text=unknown.number)
    expect(row).to_be_visible()
    page.get_by_label("Find a customer").fill("acme")
    page.get_by_role("button", name="Search").click()
    page.get_by_label("Assign to").select_option(label="Acme Dental Group")
    shot(page, "04-unknown-customers")
    page.locator("tr", has_text=unknown.number).get_by_role("button", name="Assign this one").click()
    expect(page.locator(".messages")).to_contain_text("1 invoice assigned to Acme Dental Group")
    expect(page.get_by_text("Nothing to resolve")).to_be_visible()
    unknown.refresh_from_db()
    assert unknown.customer.name == "Acme Dental Group" and unknown.customer_assigned_by_id == partner_user.pk


def test_archive_an_invoice_deleted_in_halopsa(page, sign_in, shot, partner_user, synced, halo_sandbox):
    from integrations.models import Invoice, SyncRun
    from integrations.services.sync import sync_execute, sync_queue

    target = (
        Invoice.objects.filter(connection=synced, customer__is_unknown=False, is_credit_note=False)
        .order_by("halopsa_id")
        .first()
    )
    halo_sandbox.store.delete_invoice(target.halopsa_id)
    run, _ = sync_queue(connection=synced, scope=SyncRun.Scope.FULL, trigger=SyncRun.Trigger.CLI)
    sync_execute(run=SyncRun.objects.get(pk=run.pk))
    target.refresh_from_db()
    assert target.deleted_in_halopsa_at is not None

    sign_in(partner_user)
    page.get_by_role("link", name="Archive queue").click()
    row = page.locator("tr", has_text=target.number)
    expect(row).to_contain_text(target.number)
    shot(page, "05-archive-queue")
    row.get_by_role("button", name="Archive").click()
    expect(page.locator("main h1")).to_contain_text(f"Archive invoice {target.number}?")  # the confirmation step
    page.get_by_role("button", name="Archive 1 record").click()
    expect(page.locator(".messages")).to_contain_text("1 record archived")
    expect(page.locator("tr", has_text=target.number)).to_have_count(0)
    page.get_by_role("link", name="Invoices", exact=True).click()
    expect(page.locator("tr", has_text=target.number)).to_have_count(0)
    page.get_by_label("Archived only").check()
    page.get_by_role("button", name="Apply").click()
    expect(page.locator("tr", has_text=target.number)).to_have_count(1)


def test_record_a_payment_and_see_the_balance_change(page, sign_in, shot, partner_user, synced, halo_sandbox):
    from integrations.models import Invoice

    invoice = (
        Invoice.objects.filter(connection=synced, status="open", is_credit_note=False, balance__gt=Decimal("10"))
        .order_by("halopsa_id")
        .first()
    )
    before = invoice.balance
    sign_in(partner_user)
    page.goto(f"/invoices/{invoice.pk}/")
    balance = page.get_by_test_id("invoice-balance")
    expect(balance).to_have_text(f"{before:,.2f}")
    page.get_by_label("Amount").fill("10.00")
    page.get_by_label("Method").fill("card")
    page.get_by_role("button", name="Record payment").click()
    expect(page.get_by_test_id("confirm-amount")).to_contain_text("10.00")  # the confirmation step
    page.locator(".confirm-actions").get_by_role("button").click()
    expect(page.locator(".messages")).to_contain_text("Payment of 10.00")
    expect(balance).to_have_text(f"{before - Decimal('10.00'):,.2f}")
    expect(page.get_by_test_id("invoice-status")).to_have_text("Partially paid")
    shot(page, "06-invoice-detail")
    # An overpayment is refused next to the amount (what was typed kept), and nothing changes.
    page.get_by_label("Amount").fill("999999.00")
    page.get_by_role("button", name="Record payment").click()
    expect(page.locator(".messages .msg-error")).to_contain_text("Payment not recorded")
    expect(page.locator(".payment-form")).to_contain_text("overpayments are refused")
    expect(page.get_by_label("Amount")).to_have_value("999999.00")
    expect(balance).to_have_text(f"{before - Decimal('10.00'):,.2f}")


def test_main_pages_screenshots(page, sign_in, shot, partner_user, synced):
    sign_in(partner_user)
    page.goto(f"/connections/{synced.pk}/")
    page.get_by_role("button", name="Fetch new data").click()
    expect(page.locator(".messages")).to_contain_text("Fetch new data")
    page.get_by_role("button", name="Fetch unpaid invoices").click()
    expect(page.locator(".messages")).to_contain_text("Fetch unpaid invoices")
    for path, name in [
        ("/", "07-home"),
        ("/customers/", "08-customers"),
        ("/payments/", "09-payments"),
        ("/activity/", "10-activity"),
    ]:
        page.goto(path)
        expect(page.locator("main h1")).to_be_visible()
        shot(page, name)
    expect(page.locator("main table")).to_contain_text("Queued a fetch unpaid invoices")
    expect(page.locator("main table")).to_contain_text(partner_user.username)
