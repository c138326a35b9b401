"""The pull sync against HaloPSA instances shaped differently (issue 16): sandbox profiles for a
clock in another frame, filters an instance ignores, the billing flag elsewhere, unpaid as -1,
null fields left out. What the instance supports is the connection's HaloShape: learned by the
probe on a first sync, or found out by the sync itself (`unprobed_connection`)."""

from __future__ import annotations

import json
import time
from datetime import timedelta
from decimal import Decimal
from io import StringIO

import pytest
from django.core.management import call_command
from django.utils import timezone

from halosandbox.shapes import PROFILE_VARIANTS
from integrations.halopsa import mapping
from integrations.halopsa.client import HaloClient
from integrations.halopsa.shape import HaloShape
from integrations.models import Contact, Customer, HaloUserFlag, Invoice, SyncCursor, SyncError
from tests.sync.helpers import assert_matches_truth, export_snapshot, list_queries, truth_as_exported, truth_snapshot

pytestmark = pytest.mark.django_db

# Five pages of invoices, three of clients and of users: enough to tell a full read from an incremental one.
PAGED = {"customers": 250, "contacts": 260, "invoices": 450, "max_lines": 2}


@pytest.fixture(autouse=True)
def _no_pdfs(settings):
    """PDFs (one request each) are not what these tests read; 450 of them would wait for the budget."""
    settings.HALOPSA_PDF_BATCH = 0


def _shape(connection) -> HaloShape:
    connection.refresh_from_db()
    return HaloShape.of(connection)


def _cursor(connection, entity: str):
    return SyncCursor.objects.get(connection=connection, entity=entity).changed_since


def _detail_calls(srv) -> list[str]:
    return [e["path"] for e in srv.request_log if e["method"] == "GET" and e["path"].lower().startswith("/api/users/")]


def _could_be_billing_users(srv) -> set[int]:
    """Users whose billing flag matters: active, with an address, of an existing client."""
    store = srv.store
    return {u.id for u in store.users.values() if not u.inactive and u.emailaddress and u.client_id in store.clients}


def _pages_patched(monkeypatch, method: str, change) -> None:
    """HaloClient.<method> whose pages go through `change(page_no, records)` before the sync sees them."""
    original = getattr(HaloClient, method)

    def patched(self, **kwargs):
        for page in original(self, **kwargs):
            change(page.page_no, page.records)
            yield page

    monkeypatch.setattr(HaloClient, method, patched)


# --- the truth, to the cent, under every profile ---------------------------------------------


@pytest.mark.parametrize("probed", [True, False], ids=["probed", "unprobed"])
@pytest.mark.parametrize("profile", [*PROFILE_VARIANTS, "all"])
def test_export_of_a_full_sync_equals_the_truth_under_every_profile(
    profile, probed, partner, make_connection, halo_sandbox_factory
):
    srv = halo_sandbox_factory(dataset="demo", profile=profile)
    fields = {} if probed else {"shape_checked_at": timezone.now()}
    connection = make_connection(partner, srv, **fields)
    out, err = StringIO(), StringIO()
    call_command("sync_connection", str(connection.pk), "--full", stdout=out, stderr=err)
    summary = json.loads(out.getvalue().strip().splitlines()[-1])
    assert (summary["state"], summary["failed"]) == ("succeeded", 0), err.getvalue()
    out = StringIO()
    call_command("export_connection", str(connection.pk), stdout=out, stderr=StringIO())
    exported, truth = export_snapshot(json.loads(out.getvalue())), truth_as_exported(srv)
    assert exported["customers"] == truth["customers"]
    assert sorted(exported["invoices"]) == sorted(truth["invoices"])
    for halopsa_id, expected in truth["invoices"].items():
        assert exported["invoices"][halopsa_id] == expected, f"invoice {halopsa_id}"


# --- cursors: HaloPSA's own times, never our clock --------------------------------------------


@pytest.mark.parametrize("offset", [-420, -4320], ids=["7h-behind", "3d-behind"])
def test_incremental_picks_up_edits_when_halopsa_clock_is_behind_ours(
    offset, partner, make_connection, halo_sandbox_factory, run_sync
):
    srv = halo_sandbox_factory(profile="local_clock", clock_offset_minutes=offset)
    connection = make_connection(partner, srv)
    assert run_sync(connection, "full").state == "succeeded"
    store = srv.store
    for round_no, duedate in enumerate(("2027-01-15", "2027-01-16")):
        store.update_invoice(1, duedate=duedate)
        store.update_client(2, accountsemailaddress=f"ap{round_no}@second.example")
        store.update_user(2, canaccessinvoices=bool(round_no % 2 == 0))
        run = run_sync(connection, "incremental")
        assert run.state == "succeeded", run.message
        assert_matches_truth(connection, srv)
        assert Invoice.objects.get(connection=connection, halopsa_id=1).due_date.isoformat() == duedate
        # Every cursor is in HaloPSA's frame: no later than its clock (ours + offset), not ours.
        halo_now = timezone.now() + timedelta(minutes=offset)
        for entity in ("customers", "contacts", "invoices"):
            assert _cursor(connection, entity) <= halo_now, entity


def test_recent_reads_since_the_cursor_not_our_clock(partner, make_connection, halo_sandbox_factory, run_sync):
    srv = halo_sandbox_factory(profile="local_clock", clock_offset_minutes=-4320)
    connection = make_connection(partner, srv)
    run_sync(connection, "full")
    cursors = dict(SyncCursor.objects.filter(connection=connection).values_list("entity", "changed_since"))
    srv.store.update_invoice(3, duedate="2027-06-01")  # stamped three days behind our clock
    run = run_sync(connection, "recent")
    assert run.state == "succeeded"
    assert Invoice.objects.get(connection=connection, halopsa_id=3).due_date.isoformat() == "2027-06-01"
    # "Fetch new data" leaves the cursors to the scheduled runs.
    assert dict(SyncCursor.objects.filter(connection=connection).values_list("entity", "changed_since")) == cursors


def test_a_record_changed_while_the_run_reads_is_not_skipped(
    unprobed_connection, halo_sandbox_factory, run_sync, monkeypatch, settings
):
    """Invoice 1 (page 1) changes after its page was read, invoice 150 (page 2) a second later,
    before page 2 is read: the newest time seen is invoice 150's. Without the overlap, only the
    run's reading time taken off that keeps invoice 1's change inside the next read."""
    settings.HALOPSA_SYNC_CURSOR_OVERLAP_SECONDS = 0
    srv = halo_sandbox_factory(dataset={"customers": 5, "contacts": 10, "invoices": 150, "max_lines": 2})
    connection = unprobed_connection(srv)

    def change_during_the_read(page_no, records):
        if page_no == 1:
            srv.store.update_invoice(1, duedate="2027-03-03")
            time.sleep(1.2)  # query dates have whole seconds
            srv.store.update_invoice(150, duedate="2027-03-04")

    with monkeypatch.context() as patch:
        _pages_patched(patch, "invoice_pages", change_during_the_read)
        assert run_sync(connection, "full").state == "succeeded"
    assert Invoice.objects.get(connection=connection, halopsa_id=1).due_date.isoformat() != "2027-03-03"
    assert Invoice.objects.get(connection=connection, halopsa_id=150).due_date.isoformat() == "2027-03-04"
    assert run_sync(connection, "incremental").state == "succeeded"
    assert Invoice.objects.get(connection=connection, halopsa_id=1).due_date.isoformat() == "2027-03-03"
    assert_matches_truth(connection, srv)


def test_cursor_never_moves_back_and_keeps_still_when_nothing_was_seen(connection, halo_sandbox, run_sync):
    run_sync(connection, "full")
    before = _cursor(connection, "invoices")
    run_sync(connection, "incremental")
    after = _cursor(connection, "invoices")
    assert after >= before
    # A cursor ahead of every record: the read finds nothing, and the cursor stays where it is.
    ahead = after + timedelta(days=2)
    SyncCursor.objects.filter(connection=connection, entity="invoices").update(changed_since=ahead)
    halo_sandbox.clear_request_log()
    assert run_sync(connection, "incremental").state == "succeeded"
    assert _cursor(connection, "invoices") == ahead


def test_records_without_a_change_time_are_read_in_full_and_the_run_says_so(
    connection, halo_sandbox, run_sync, monkeypatch
):
    def drop_last_modified(page_no, records):
        records[0].pop("last_modified", None)

    with monkeypatch.context() as patch:
        _pages_patched(patch, "invoice_pages", drop_last_modified)
        run = run_sync(connection, "full")
        assert run.state == "succeeded"
        assert "have no last_modified" in run.message
        assert _cursor(connection, "invoices") is None
        assert _cursor(connection, "customers") is not None
        halo_sandbox.clear_request_log()
        run = run_sync(connection, "incremental")
    assert "have no last_modified" in run.message
    (invoice_query,) = list_queries(halo_sandbox, "/api/Invoice")
    assert "start_date" not in invoice_query and "order" not in invoice_query  # a read in full
    # The records have their time again: the next full read sets the cursor.
    run_sync(connection, "full")
    assert _cursor(connection, "invoices") is not None


def test_a_change_time_far_ahead_does_not_push_the_cursor_beyond_a_day_from_now(connection, run_sync, monkeypatch):
    def far_future(page_no, records):
        records[0]["last_modified"] = "2090-01-01T00:00:00"

    with monkeypatch.context() as patch:
        _pages_patched(patch, "invoice_pages", far_future)
        run_sync(connection, "full")
    assert _cursor(connection, "invoices") <= timezone.now() + timedelta(hours=24)


# --- filters an instance ignores (docs/halopsa-facts.md §3.2, §9, §11.6) ------------------------


def test_without_datesearch_the_incremental_reads_newest_first_and_stops_at_the_cursor(
    unprobed_connection, halo_sandbox_factory, run_sync
):
    srv = halo_sandbox_factory(dataset=PAGED, profile="no_datesearch")
    connection = unprobed_connection(srv)
    run_sync(connection, "full")
    full_reads = len(list_queries(srv, "/api/Invoice"))
    assert full_reads == 5
    srv.store.update_invoice(3, duedate="2027-02-02")
    srv.store.update_invoice(400, duedate="2027-02-03")
    srv.clear_request_log()
    run = run_sync(connection, "incremental")
    assert run.state == "succeeded", run.message
    check, ordered = list_queries(srv, "/api/Invoice")
    # One call finds out that the instance ignores datesearch (a far-future start matched rows) ...
    assert check["datesearch"] == "last_modified" and check["page_size"] == "1"
    assert _shape(connection).invoice_datesearch == "ignored"
    # ... and one page, newest first, reaches the cursor.
    assert (ordered["order"], ordered["orderdesc"]) == ("last_modified", "true")
    assert_matches_truth(connection, srv)
    srv.store.update_invoice(5, duedate="2027-02-04")
    srv.clear_request_log()
    run_sync(connection, "incremental")
    assert len(list_queries(srv, "/api/Invoice")) == 1
    assert Invoice.objects.get(connection=connection, halopsa_id=5).due_date.isoformat() == "2027-02-04"


def test_an_order_the_instance_does_not_keep_means_a_full_read_and_the_run_says_so(
    unprobed_connection, halo_sandbox_factory, run_sync, monkeypatch
):
    srv = halo_sandbox_factory(dataset=PAGED, profile="no_datesearch")
    connection = unprobed_connection(srv, halo_shape={"invoice_datesearch": "ignored"})
    run_sync(connection, "full")
    srv.store.update_invoice(3, duedate="2027-02-02")
    original = HaloClient.invoice_pages

    def order_ignored(self, **kwargs):  # what an instance that ignores `order` answers: id order
        kwargs.pop("newest_first", None)
        return original(self, **kwargs)

    monkeypatch.setattr(HaloClient, "invoice_pages", order_ignored)
    srv.clear_request_log()
    run = run_sync(connection, "incremental")
    assert run.state == "succeeded"
    assert "order=last_modified" in run.message and "read in full" in run.message
    assert len(list_queries(srv, "/api/Invoice")) == 5  # everything, this time
    assert _shape(connection).invoice_order_by_modified == "ignored"
    assert_matches_truth(connection, srv)
    srv.clear_request_log()
    run = run_sync(connection, "incremental")
    assert "read in full" in run.message
    assert all("order" not in q for q in list_queries(srv, "/api/Invoice"))


def test_datesearch_said_to_work_but_ignored_is_noticed_from_the_rows(
    unprobed_connection, halo_sandbox_factory, run_sync
):
    srv = halo_sandbox_factory(profile="no_datesearch")
    connection = unprobed_connection(srv, halo_shape={"invoice_datesearch": "works"})
    run_sync(connection, "full")
    run = run_sync(connection, "incremental")
    assert "ignored datesearch=last_modified" in run.message
    assert _shape(connection).invoice_datesearch == "ignored"


def test_without_lastupdate_filters_clients_and_users_are_read_newest_first(
    unprobed_connection, halo_sandbox_factory, run_sync
):
    srv = halo_sandbox_factory(dataset=PAGED, profile="no_lastupdate_filter")
    connection = unprobed_connection(srv)
    run_sync(connection, "full")
    assert len(list_queries(srv, "/api/Client")) == 3 and len(list_queries(srv, "/api/Users")) == 3
    srv.store.update_client(7, accountsemailaddress="ap@seven.example")
    user_id = next(iter(sorted(_could_be_billing_users(srv))))
    srv.store.update_user(user_id, canaccessinvoices=not srv.store.users[user_id].canaccessinvoices)
    srv.clear_request_log()
    assert run_sync(connection, "incremental").state == "succeeded"
    for path, order in (("/api/Client", "alastupdate"), ("/api/Users", "ulastupdate")):
        check, ordered = list_queries(srv, path)
        assert check["lastupdatefromdate"] and check["page_size"] == "1"
        assert (ordered["order"], ordered["orderdesc"]) == (order, "true")
    shape = _shape(connection)
    assert (shape.client_updated_filter, shape.user_updated_filter) == ("ignored", "ignored")
    assert Contact.objects.filter(customer__connection=connection, email="ap@seven.example").exists()
    assert_matches_truth(connection, srv)


# --- the billing flag (halopsa-facts §4.2) -------------------------------------------------------


@pytest.mark.parametrize("probed", [True, False], ids=["probed", "unprobed"])
def test_billing_flag_on_user_details_only(probed, partner, make_connection, halo_sandbox_factory, run_sync):
    srv = halo_sandbox_factory(dataset="demo", profile="flag_on_detail")
    connection = make_connection(partner, srv, **({} if probed else {"shape_checked_at": timezone.now()}))
    run = run_sync(connection, "full")
    assert run.state == "succeeded", run.message
    assert_matches_truth(connection, srv)
    assert _shape(connection).billing_flag_source == "detail"
    candidates = _could_be_billing_users(srv)
    if not probed:  # exactly one detail per user who could be a billing contact, none for the rest
        assert sorted(_detail_calls(srv)) == sorted(f"/api/Users/{i}" for i in candidates)
    assert (
        set(HaloUserFlag.objects.filter(connection=connection).values_list("halopsa_user_id", flat=True)) >= candidates
    )
    # Nothing changed: no detail is read again, even by a full read.
    srv.clear_request_log()
    run_sync(connection, "full")
    assert _detail_calls(srv) == []
    # One user changes: only that one's detail is read.
    user_id = sorted(candidates)[0]
    srv.store.update_user(user_id, canaccessinvoices=not srv.store.users[user_id].canaccessinvoices)
    srv.clear_request_log()
    run_sync(connection, "incremental")
    assert _detail_calls(srv) == [f"/api/Users/{user_id}"]
    assert_matches_truth(connection, srv)


def test_user_details_per_run_are_capped_and_waiting_users_keep_their_contacts(
    unprobed_connection, halo_sandbox_factory, run_sync, settings
):
    settings.HALOPSA_SYNC_USER_DETAILS_PER_RUN = 2
    srv = halo_sandbox_factory(profile="flag_on_detail")
    connection = unprobed_connection(srv)
    candidates = _could_be_billing_users(srv)
    assert len(candidates) > 2
    run = run_sync(connection, "full")
    assert len(_detail_calls(srv)) == 2
    assert "wait for their billing flag" in run.message
    runs = 1
    while "wait for their billing flag" in run.message:
        srv.clear_request_log()
        run = run_sync(connection, "incremental")
        assert len(_detail_calls(srv)) <= 2
        runs += 1
        assert runs <= len(candidates)
    assert_matches_truth(connection, srv)
    # A billing contact whose user changed keeps its contact while its flag waits (no details this run).
    contact = Contact.objects.filter(customer__connection=connection, halopsa_user_id__isnull=False).first()
    srv.store.update_user(contact.halopsa_user_id, phonenumber="+1 555 0100")
    settings.HALOPSA_SYNC_USER_DETAILS_PER_RUN = 0
    run = run_sync(connection, "full")
    assert "1 HaloPSA user(s) wait" in run.message
    assert Contact.objects.filter(pk=contact.pk).exists()
    settings.HALOPSA_SYNC_USER_DETAILS_PER_RUN = 2
    srv.clear_request_log()
    run = run_sync(connection, "incremental")
    assert _detail_calls(srv) == [f"/api/Users/{contact.halopsa_user_id}"]
    assert "wait" not in run.message
    assert_matches_truth(connection, srv)


@pytest.mark.parametrize("probed", [True, False], ids=["probed", "unprobed"])
def test_billing_flag_with_includebillinginfo(probed, partner, make_connection, halo_sandbox_factory, run_sync):
    srv = halo_sandbox_factory(dataset="demo", profile="flag_with_billinginfo")
    connection = make_connection(partner, srv, **({} if probed else {"shape_checked_at": timezone.now()}))
    srv.clear_request_log()
    run_sync(connection, "full")
    assert_matches_truth(connection, srv)
    assert _shape(connection).billing_flag_source == "list_billinginfo"
    srv.clear_request_log()
    srv.store.update_user(sorted(_could_be_billing_users(srv))[0], canaccessinvoices=True)
    run_sync(connection, "incremental")
    assert all(q["includebillinginfo"] == "true" for q in list_queries(srv, "/api/Users"))
    assert _detail_calls(srv) == []
    assert_matches_truth(connection, srv)


def test_a_flag_the_rows_lack_is_unknown_never_false(connection, halo_sandbox, run_sync):
    """An instance that drops the flag from list rows later: the contacts stay (their users'
    details say they still qualify), they are not removed as if the flag were false."""
    run_sync(connection, "full")
    contacts = set(Contact.objects.filter(customer__connection=connection).values_list("email", flat=True))
    halo_sandbox.set_profile("flag_on_detail")
    run = run_sync(connection, "full")
    assert run.state == "succeeded"
    assert set(Contact.objects.filter(customer__connection=connection).values_list("email", flat=True)) == contacts
    assert_matches_truth(connection, halo_sandbox)


def test_no_billing_flag_anywhere_syncs_accounts_contacts_only_and_says_why(
    unprobed_connection, halo_sandbox, run_sync
):
    connection = unprobed_connection(halo_sandbox)
    run_sync(connection, "full")
    user_contacts = set(
        Contact.objects.filter(customer__connection=connection, halopsa_user_id__isnull=False).values_list(
            "pk", flat=True
        )
    )
    assert user_contacts
    connection.halo_shape = {"billing_flag_source": "none"}
    connection.save(update_fields=["halo_shape"])
    halo_sandbox.store.update_client(1, accountsemailaddress="ap@first.example")
    halo_sandbox.clear_request_log()
    run = run_sync(connection, "full")
    assert run.state == "succeeded"
    assert "Billing contacts from HaloPSA users are not synced" in run.message
    assert list_queries(halo_sandbox, "/api/Users") == []
    assert Contact.objects.filter(
        customer__connection=connection, email="ap@first.example", halopsa_key="accounts"
    ).exists()
    # Nothing is known about users now: their contacts are neither added nor removed.
    assert (
        set(
            Contact.objects.filter(customer__connection=connection, halopsa_user_id__isnull=False).values_list(
                "pk", flat=True
            )
        )
        == user_contacts
    )


# --- unpaid invoices (halopsa-facts §3.6) ---------------------------------------------------------


def test_fetch_unpaid_includes_minus_one_and_never_calls_an_unpaid_invoice_paid(
    partner, make_connection, halo_sandbox_factory, run_sync
):
    srv = halo_sandbox_factory(profile="unpaid_minus_one")
    connection = make_connection(partner, srv)
    run_sync(connection, "full")
    assert_matches_truth(connection, srv)
    open_ids = [i for i, inv in truth_snapshot(srv)["invoices"].items() if inv["status"] == "open"]
    assert open_ids
    for halopsa_id in open_ids:
        invoice = Invoice.objects.get(connection=connection, halopsa_id=halopsa_id)
        assert invoice.status == "open" and invoice.balance == invoice.total > 0
    srv.store.update_invoice(open_ids[0], duedate="2027-05-05")
    srv.clear_request_log()
    run = run_sync(connection, "unpaid")
    assert run.state == "succeeded"
    (query,) = list_queries(srv, "/api/Invoice")
    assert {"-1", "0"} <= set(query["paymentstatuses"].split(","))
    assert Invoice.objects.get(connection=connection, halopsa_id=open_ids[0]).due_date.isoformat() == "2027-05-05"


# --- null fields left out (halopsa-facts §2) -------------------------------------------------------


def test_missing_required_fields_are_per_record_errors_and_the_rest_is_stored(
    partner, make_connection, halo_sandbox_factory, run_sync, monkeypatch
):
    srv = halo_sandbox_factory(profile="nulls_omitted")
    connection = make_connection(partner, srv)

    def invoice_without_total(page_no, records):
        next(r for r in records if r["id"] == 2).pop("total")

    def client_without_name(page_no, records):
        next(r for r in records if r["id"] == 3).pop("name")

    def user_without_id(page_no, records):
        records[-1].pop("id")

    with monkeypatch.context() as patch:
        _pages_patched(patch, "invoice_pages", invoice_without_total)
        _pages_patched(patch, "client_pages", client_without_name)
        _pages_patched(patch, "user_pages", user_without_id)
        run = run_sync(connection, "full")
    assert run.state == "partial" and run.failed == 3
    errors = {(e.entity, e.halopsa_id): e.message for e in SyncError.objects.filter(connection=connection)}
    assert errors[("invoices", 2)] == "invoice 2: total is not a number: None"
    assert errors[("customers", 3)] == "client 3 has no name"
    assert errors[("contacts", None)] == "user id is missing"
    # Everything else is in, with the fields HaloPSA left out read as null.
    truth = truth_snapshot(srv)
    assert set(Invoice.objects.filter(connection=connection).values_list("halopsa_id", flat=True)) == set(
        truth["invoices"]
    ) - {2}
    assert set(
        Customer.objects.filter(connection=connection, is_unknown=False).values_list("halopsa_id", flat=True)
    ) >= {1, 2}
    again = run_sync(connection, "full")
    assert again.state == "succeeded"
    assert_matches_truth(connection, srv)


# --- the first sync probes -----------------------------------------------------------------------


def test_first_sync_probes_the_shape_and_a_failing_probe_never_fails_it(
    connection, halo_sandbox, run_sync, monkeypatch
):
    from integrations.services import connections

    calls = []

    def failing_probe(*, connection, **kwargs):
        calls.append(connection.pk)
        raise RuntimeError("probe exploded")

    monkeypatch.setattr(connections, "connection_probe", failing_probe, raising=False)
    run = run_sync(connection, "full")
    assert run.state == "succeeded" and calls == [connection.pk]
    assert_matches_truth(connection, halo_sandbox)
    connection.shape_checked_at = timezone.now()
    connection.save(update_fields=["shape_checked_at"])
    run_sync(connection, "full")
    assert calls == [connection.pk]  # probed connections are not probed again by the sync


# --- mapping: missing is null, unknown is not false ----------------------------------------------


def test_the_billing_flag_missing_is_unknown_and_only_matters_for_users_who_could_qualify():
    user = {"id": 5, "client_id": 1, "emailaddress": "a@b.example", "name": "A B", "inactive": False}
    assert mapping.billing_flag(user) is None
    with pytest.raises(mapping.BillingFlagUnknown):
        mapping.billing_user_contact(user, mapping.RULE_ACCOUNTS_AND_INVOICE_USERS)
    assert (
        mapping.billing_user_contact({**user, "canaccessinvoices": False}, mapping.RULE_ACCOUNTS_AND_INVOICE_USERS)
        is None
    )
    assert (
        mapping.billing_user_contact(user, mapping.RULE_ACCOUNTS_AND_INVOICE_USERS, can_access_invoices=True)["email"]
        == "a@b.example"
    )
    # Whoever cannot qualify anyway needs no flag.
    assert mapping.billing_user_contact({**user, "inactive": True}, mapping.RULE_ACCOUNTS_AND_INVOICE_USERS) is None
    assert mapping.billing_user_contact({**user, "emailaddress": ""}, mapping.RULE_ACCOUNTS_AND_INVOICE_USERS) is None
    assert mapping.billing_user_contact(user, mapping.RULE_ACCOUNTS_ONLY) is None
    # Another flag the probe found.
    assert (
        mapping.billing_user_contact(
            {**user, "sendaccountsemails": True},
            mapping.RULE_ACCOUNTS_AND_INVOICE_USERS,
            flag_field="sendaccountsemails",
        )
        is not None
    )


@pytest.mark.parametrize(
    "fields, balance, status",
    [
        ({"paymentstatus": -1, "amountdue": 0, "amountpaid": 0}, "120.00", "open"),
        ({"paymentstatus": 0, "amountdue": 0, "amountpaid": 0}, "120.00", "open"),
        ({"amountdue": 0, "amountpaid": 0}, "120.00", "open"),  # no paymentstatus either
        ({"paymentstatus": 2, "amountdue": 0, "amountpaid": 0}, "0.00", "paid"),  # HaloPSA says paid
        ({"paymentstatus": -1, "amountdue": 0, "amountpaid": 120}, "0.00", "paid"),
        ({"paymentstatus": -1, "amountdue": 20, "amountpaid": 100}, "20.00", "partially_paid"),
        ({"paymentstatus": -1, "amountpaid": 0}, "120.00", "open"),  # amountdue left out
    ],
)
def test_unpaid_minus_one_and_a_zero_amountdue_with_nothing_paid(fields, balance, status):
    mapped = mapping.map_invoice({"id": 9, "invoicenumber": "9", "total": 120, "lines": [], **fields})
    assert (mapped["balance"], mapped["status"]) == (Decimal(balance), status)


def test_only_required_fields_are_required():
    # Required: id, total, a number and the lines asked for (issue 17 item 11: tests/sync/test_inconsistent_records.py).
    bare_invoice = mapping.map_invoice({"id": 9, "invoicenumber": "9", "total": "10.00", "lines": []})
    assert (bare_invoice["invoice_date"], bare_invoice["halopsa_client_id"]) == (None, None)
    assert bare_invoice["lines"] == [] and bare_invoice["payments"] == [] and bare_invoice["remote_updated_at"] is None
    with pytest.raises(mapping.MappingError, match="total"):
        mapping.map_invoice({"id": 9, "invoicenumber": "9", "lines": []})
    with pytest.raises(mapping.MappingError, match="invoice id is missing"):
        mapping.map_invoice({"total": 1})
    assert mapping.map_client({"id": 4, "name": "Bare"})["inactive"] is False
    with pytest.raises(mapping.MappingError, match="has no name"):
        mapping.map_client({"id": 4})
    assert mapping.billing_user_contact({"id": 5}, mapping.RULE_ACCOUNTS_AND_INVOICE_USERS) is None
    with pytest.raises(mapping.MappingError, match="user id is missing"):
        mapping.billing_user_contact({"emailaddress": "x@y.example"}, mapping.RULE_ACCOUNTS_AND_INVOICE_USERS)
    # A line with nothing but an id, a payment without an amount (nothing applied: not mirrored).
    mapped = mapping.map_invoice(
        {"id": 9, "invoicenumber": "9", "total": 1, "lines": [{"id": 1}], "payments": [{"id": 3, "date": "2026-10-01"}]}
    )
    assert mapped["lines"][0]["net_amount"] == Decimal("0.00") and mapped["payments"] == []


def test_updated_at_reads_each_records_change_time():
    assert (
        mapping.updated_at({"last_modified": "2026-10-01T10:00:00.123"}, "invoice").isoformat()
        == "2026-10-01T10:00:00.123000+00:00"
    )
    assert mapping.updated_at({"alastupdate": "2026-10-01T10:00:00"}, "client").hour == 10
    assert mapping.updated_at({"ulastupdate": "1900-01-01T00:00:00"}, "user") is None  # HaloPSA's "no date"
    assert mapping.updated_at({}, "invoice") is None
    assert mapping.updated_at({"last_modified": "soon"}, "invoice") is None
