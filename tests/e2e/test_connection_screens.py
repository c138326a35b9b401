"""Browser: adding a connection (URL and credentials checked first, then the first sync), health on
the home table and the connection page, progress by step, the run history with webhook runs apart
(issue 17 items 6-8), at 1280 px and on a 390 px phone. Screenshots: test-artifacts/screenshots/connections-*."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone
from playwright.sync_api import expect

from tests.e2e.conftest import sign_in_page

pytestmark = pytest.mark.e2e

WIDTHS = {
    "desktop": {"viewport": {"width": 1280, "height": 900}},
    "phone": {
        "viewport": {"width": 390, "height": 844},
        "device_scale_factor": 2,
        "is_mobile": True,
        "has_touch": True,
    },
}


@pytest.fixture(params=list(WIDTHS))
def screen(request, browser, live_server):
    """(page, width name) for each width."""
    context = browser.new_context(base_url=live_server.url, **WIDTHS[request.param])
    page = context.new_page()
    page.set_default_timeout(20_000)
    yield page, request.param
    context.close()


def _fits(page, width: str) -> None:
    """Nothing wider than a phone: the page itself never scrolls sideways (tables may, inside)."""
    if width == "phone":
        # What sticks out (boxes, or text running past its box), tables' own scrolled cells aside.
        wide = page.evaluate("""() => [...document.querySelectorAll('body *')]
            .filter(e => !(e.closest('table.data') && e.closest('table.data') !== e))
            .filter(e => e.getBoundingClientRect().right > 391
                         || (e.scrollWidth > e.clientWidth + 1 && getComputedStyle(e).overflowX === 'visible'))
            .map(e => `${e.tagName}.${e.className} ${Math.round(e.getBoundingClientRect().right)}px`)""")
        assert page.evaluate("document.documentElement.scrollWidth") <= 390, wide[:8]


def test_add_a_connection_checked_before_saving_then_synced(screen, shot, partner_user, halo_sandbox):
    from halosandbox import SANDBOX_CLIENT_ID, SANDBOX_CLIENT_SECRET
    from integrations.models import Connection, SyncRun

    page, width = screen
    sign_in_page(page, partner_user)
    page.goto("/connections/new/")
    page.get_by_label("Name").fill("Main HaloPSA")
    page.get_by_label("HaloPSA URL").fill(halo_sandbox.url)
    page.get_by_label("Client ID").fill(SANDBOX_CLIENT_ID)
    page.get_by_label("Client secret").fill("not-the-secret")
    page.get_by_role("button", name="Add connection").click()
    # Refused by HaloPSA: nothing saved, what was typed is still there but the secret.
    expect(page.locator(".form-card")).to_contain_text("HaloPSA did not accept this connection — Bad credentials")
    expect(page.get_by_label("Name")).to_have_value("Main HaloPSA")
    expect(page.get_by_label("HaloPSA URL")).to_have_value(halo_sandbox.url)
    expect(page.get_by_label("Client secret")).to_have_value("")
    assert not Connection.objects.exists()
    _fits(page, width)
    shot(page, f"connections-form-error-{width}")

    page.get_by_label("Client secret").fill(SANDBOX_CLIENT_SECRET)
    page.get_by_role("button", name="Add connection").click()
    expect(page.locator(".messages")).to_contain_text(
        "HaloPSA 2.130.1 accepted the credentials, and the first full sync has started"
    )
    # The first sync ran (the test cluster runs tasks at once): connected.
    expect(page.locator("h1 [data-health]")).to_have_text("Connected")
    run = SyncRun.objects.get()
    assert (run.scope, run.trigger, run.state) == ("full", "manual", "succeeded")
    expect(page.locator(".run-progress [data-field=progress_text]")).to_contain_text("in 4 steps")
    _fits(page, width)
    shot(page, f"connections-page-{width}")

    page.get_by_role("link", name="Edit").click()
    expect(page.get_by_label("Client secret")).to_have_value("")
    _fits(page, width)
    shot(page, f"connections-edit-{width}")


@pytest.fixture
def three_states(partner, make_connection):
    """A connection in each health state, with history."""
    from integrations.models import Incident, SyncRun
    from integrations.services.incidents import incident_open

    now = timezone.now()

    def run(connection, state, minutes_ago, **fields):
        return SyncRun.objects.create(
            connection=connection,
            trigger=fields.pop("trigger", "schedule"),
            scope=fields.pop("scope", "incremental"),
            state=state,
            queued_at=now - timedelta(minutes=minutes_ago),
            started_at=now - timedelta(minutes=minutes_ago),
            finished_at=now - timedelta(minutes=minutes_ago - 1),
            **fields,
        )

    working = make_connection(
        partner,
        name="Head office HaloPSA",
        halopsa_version="2.130.1",
        last_test_ok=True,
        last_test_at=now - timedelta(days=1),
    )
    run(working, "succeeded", 90, scope="full", created=412, api_requests=31)
    run(working, "succeeded", 30, updated=3, api_requests=3)
    for minute in (25, 12, 4):
        run(
            working,
            "succeeded",
            minute,
            trigger="webhook",
            scope="invoice",
            entity="invoices",
            target_halopsa_id=2000 + minute,
            updated=1,
            api_requests=2,
        )
    failing = make_connection(
        partner,
        name="Europe HaloPSA",
        base_url="https://europe.halopsa.com",
        halopsa_version="2.99.0",
        last_test_ok=True,
        last_test_at=now - timedelta(days=2),
    )
    run(failing, "succeeded", 180, scope="full", created=80)
    run(
        failing,
        "failed",
        20,
        message="HaloPSA answered 503 (Service Unavailable) five times; the next sync tries again.",
    )
    rejected = make_connection(partner, name="Old lab HaloPSA", base_url="https://lab.halopsa.com", paused=True)
    run(rejected, "succeeded", 600, scope="full", created=12)
    run(rejected, "failed", 60, message="HaloPSA rejected the client ID or secret.")
    incident_open(rejected, Incident.Kind.CREDENTIALS_REJECTED, "HaloPSA rejected the client ID or secret.")
    return working, failing, rejected


def test_health_on_the_home_table_and_the_connection_page(screen, shot, partner_user, three_states):
    working, failing, rejected = three_states
    page, width = screen
    sign_in_page(page, partner_user)
    table = page.locator("table.connections")
    for connection, label in ((working, "Connected"), (failing, "Needs attention"), (rejected, "Reconnect")):
        expect(table.locator("tr", has_text=connection.name).locator("[data-health]")).to_have_text(label)
    expect(table.locator(".badge-ok", has_text="active")).to_have_count(0)
    if width == "desktop":
        expect(table.locator("tr", has_text=failing.name)).to_contain_text("The last sync failed: HaloPSA answered 503")
        expect(table.locator("tr", has_text=rejected.name)).to_contain_text("Paused")
    _fits(page, width)
    shot(page, f"connections-home-{width}")

    page.goto(f"/connections/{rejected.pk}/")
    summary = page.locator(".health-summary")
    expect(summary).to_contain_text("Reconnect")
    expect(summary).to_contain_text("The credentials stopped working")
    expect(summary.get_by_role("link", name="Edit the connection")).to_be_visible()
    _fits(page, width)
    shot(page, f"connections-page-reconnect-{width}")

    page.goto(f"/connections/{working.pk}/")
    history = page.locator("section", has=page.get_by_role("heading", name="Recent runs"))
    expect(history.locator("tbody tr")).to_have_count(2)
    webhooks = page.locator("#webhook-runs")
    expect(webhooks.locator("tbody tr")).to_have_count(3)
    expect(webhooks).to_contain_text("Invoice #2004")
    expect(page.get_by_role("button", name="Fetch new data since the last sync")).to_be_visible()
    _fits(page, width)
    shot(page, f"connections-page-history-{width}")


def test_progress_shows_the_step_at_work_and_moves_live(screen, shot, partner_user, partner, make_connection):
    from integrations.models import SyncRun

    page, width = screen
    connection = make_connection(partner, halopsa_version="2.130.1")
    phases = [
        {"phase": "customers", "done": 120, "total": 120, "state": "done"},
        {"phase": "contacts", "done": 86, "total": 86, "state": "done"},
        {"phase": "invoices", "done": 300, "total": 1200, "state": "running"},
        {"phase": "pdfs", "done": 0, "total": None, "state": "waiting"},
    ]
    run = SyncRun.objects.create(
        connection=connection,
        trigger="manual",
        scope="full",
        state="running",
        started_at=timezone.now(),
        progress_done=506,
        progress_total=1406,
        progress_phases=phases,
    )
    sign_in_page(page, partner_user)
    page.goto(f"/connections/{connection.pk}/")
    bar = page.get_by_role("progressbar", name="Sync progress")
    expect(bar).to_have_attribute("aria-valuenow", "25")
    text = page.locator(".run-progress [data-field=progress_text]")
    expect(text).to_have_text("Step 3 of 4: invoices, 300 of 1,200")
    expect(page.locator(".run-progress [data-field=phases_text]")).to_have_text(
        "Customers: 120 · Billing contacts: 86 · Invoices: 300 of 1,200 · Invoice PDFs: waiting"
    )
    _fits(page, width)
    shot(page, f"connections-progress-{width}")
    # The worker moves on to the PDFs: the page follows without a reload, the bar now the PDFs'.
    phases[2].update(done=1200, state="done")
    phases[3].update(done=50, total=200, needed=2340, state="running")
    SyncRun.objects.filter(pk=run.pk).update(progress_done=1456, progress_total=1606, progress_phases=phases)
    expect(text).to_have_text("Step 4 of 4: invoice pdfs, 50 of 2,340 needed")
    expect(bar).to_have_attribute("aria-valuenow", "25")
    SyncRun.objects.filter(pk=run.pk).update(
        state="succeeded",
        finished_at=timezone.now(),
        progress_done=1606,
        progress_phases=[*phases[:3], {**phases[3], "done": 200, "state": "done"}],
        message="Invoice PDFs: 200 of 2,340 needed were fetched (at most 200 are fetched per run); 2,140 still to fetch: "
        "the next batch runs with the hourly sync at 14:05 UTC. Any PDF is also fetched when someone opens it.",
    )
    expect(page.locator(".run-progress [data-field=state_label]")).to_have_text("Succeeded")
    expect(page.locator(".run-progress")).to_contain_text("2,140 still to fetch")
    _fits(page, width)
    shot(page, f"connections-progress-done-{width}")

    page.goto(f"/runs/{run.pk}/")
    expect(page.locator("h1")).to_have_text("Full resync")
    expect(page.locator(".run-progress [data-field=phases_text]")).to_have_text(
        "Customers: 120 · Billing contacts: 86 · Invoices: 1,200 · Invoice PDFs: 200 of 2,340 needed"
    )
    _fits(page, width)
    shot(page, f"connections-run-{width}")


def test_delete_confirmation(screen, shot, partner_user, partner, make_connection):
    page, width = screen
    connection = make_connection(partner)
    sign_in_page(page, partner_user)
    page.goto(f"/connections/{connection.pk}/delete/")
    expect(page.get_by_role("heading", level=1)).to_contain_text("Delete “Main HaloPSA”?")
    _fits(page, width)
    shot(page, f"connections-delete-{width}")
