"""The cursor overlap (docs/sync-rules.md, "Incremental cursor and overlap"): an incremental read
starts at the cursor minus HALOPSA_SYNC_CURSOR_OVERLAP_SECONDS, so a record HaloPSA stamped a
little before the cursor, but listed only after the last read (its own write delays, equal
timestamps), is read again."""

from __future__ import annotations

from datetime import timedelta

import pytest

from integrations.models import Invoice, SyncCursor
from tests.sync.helpers import list_queries

pytestmark = [
    pytest.mark.django_db,
    # Read with the list's date filter, which HaloPSA honours by default: a newest-first read
    # returns a whole page and may reach below its start anyway.
    pytest.mark.default_wire_shape(reason="the date filter (datesearch=last_modified) that an incremental read uses"),
]

LATE_BY = timedelta(minutes=5)  # how far before the cursor HaloPSA stamped the late change


def _late_change(srv, cursor, invoice_id: int, duedate: str) -> None:
    """HaloPSA changes an invoice now but stamps it LATE_BY before our cursor (a write the last
    read could not see yet)."""
    srv.store.update_invoice(invoice_id, duedate=duedate)
    with srv.store.lock:
        srv.store._touch_invoice(srv.store.get_invoice(invoice_id), now=int((cursor - LATE_BY).timestamp() * 1000))


def _invoice_cursor(connection):
    return SyncCursor.objects.get(connection=connection, entity="invoices").changed_since


def _due(connection, invoice_id: int) -> str:
    return Invoice.objects.get(connection=connection, halopsa_id=invoice_id).due_date.isoformat()


def test_a_change_stamped_inside_the_overlap_before_the_cursor_is_read_again(
    connection, halo_sandbox, run_sync, settings
):
    settings.HALOPSA_PDF_BATCH = 0
    assert run_sync(connection, "full").state == "succeeded"
    cursor = _invoice_cursor(connection)
    _late_change(halo_sandbox, cursor, 1, "2027-04-04")
    halo_sandbox.clear_request_log()

    run = run_sync(connection, "incremental")

    assert run.state == "succeeded", run.message
    assert _due(connection, 1) == "2027-04-04"
    # The read started 10 minutes (the default overlap) before the cursor.
    (query,) = list_queries(halo_sandbox, "/api/Invoice")
    assert query["start_date"] == (cursor - timedelta(seconds=600)).strftime("%Y-%m-%dT%H:%M:%S")


def test_the_overlap_is_the_setting(connection, halo_sandbox, run_sync, settings):
    """A shorter overlap reads less far back: a change stamped before it waits for the daily full
    read. (What makes the default read pick the change up is the overlap, nothing else.)"""
    settings.HALOPSA_PDF_BATCH = 0
    settings.HALOPSA_SYNC_CURSOR_OVERLAP_SECONDS = 60
    assert run_sync(connection, "full").state == "succeeded"
    cursor = _invoice_cursor(connection)
    _late_change(halo_sandbox, cursor, 1, "2027-04-04")
    halo_sandbox.clear_request_log()

    assert run_sync(connection, "incremental").state == "succeeded"

    (query,) = list_queries(halo_sandbox, "/api/Invoice")
    assert query["start_date"] == (cursor - timedelta(seconds=60)).strftime("%Y-%m-%dT%H:%M:%S")
    assert _due(connection, 1) != "2027-04-04"
    assert run_sync(connection, "full").state == "succeeded"
    assert _due(connection, 1) == "2027-04-04"
