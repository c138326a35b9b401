"""The pull sync: HaloPSA -> our copy of customers, billing contacts, invoices, payments and PDFs.

Shape of a run (`sync_execute`):
1. take the connection's lease (two syncs of one connection never run together);
2. phases in order: customers, billing contacts, invoices, PDFs (last, with its own cap, so PDF
   downloads never starve invoice data of API budget). Which phases run and how much they read
   depends on the scope (full, incremental, recent, unpaid, one entity, one record);
3. each phase goes page by page (HaloPSA pages hold 100 rows) and writes in batches (a page of
   customers or contacts, `write_batch_size()` invoices): one query loads the batch's existing
   rows, new rows are inserted with one executemany (COPY on PostgreSQL) per table, changed rows
   bulk-updated, an unchanged row (same fingerprint) costs no write; a batch commits on its own,
   so an interrupted run keeps what it wrote and a rerun (upserts keyed on (connection,
   halopsa_id)) creates no duplicates;
4. a record that cannot be mapped becomes a SyncError with its payload; the rest commit ("partial");
5. cursors advance only when the run completes, to the newest change time seen in HaloPSA's own
   records (never our clock); a full read that paged everything flags rows HaloPSA no longer has
   (never deletes or archives them).

What one HaloPSA instance supports (date filters, where the billing flag is) comes from its
HaloShape (integrations/halopsa/shape.py); what is unknown is found out at run time and stored
back, and until then the run takes the path that is correct whatever the answer.

The rules (billing contacts, unknown customer, deletions, conflicts, PDFs, overlap) are written

The package, by concern:
- run.py: the public entry points (queue, execute, one record, retry) and the runner that
  executes one run phase by phase, under the connection's lease;
- plan.py: what a run reads (scope, cursors minus the overlap) and the cursors it leaves;
- context.py: the running sync's shared state (counts, progress, lease, client, notes), which the
  per-entity readers/writers take: customers.py, contacts.py, invoices.py, pdfs.py;
- feeds.py: reading what changed since a cursor; deletions.py: confirming what HaloPSA no
  longer has; config.py: entity names, messages and the settings that bound a run.
Bulk inserts are in services/bulk_db.py; the rules shared with the push (status conflicts,
payments on their way) in services/reconcile.py.
"""

from __future__ import annotations

from integrations.services.bulk_db import insert_rows as _insert_rows
from integrations.services.sync.config import (
    ENTITIES,
    ENTITY_CONTACTS,
    ENTITY_CUSTOMERS,
    ENTITY_INVOICES,
    ENTITY_PDFS,
    INTERRUPTED_MESSAGE,
    LEASE_CONFLICT_MESSAGE,
    SyncAborted,
    cursor_overlap,
    lease_name,
    lease_ttl,
    run_seconds,
)
from integrations.services.sync.customers import customer_unknown
from integrations.services.sync.invoices import insert_invoices as _insert_invoices
from integrations.services.sync.pdfs import (
    PdfUnavailable,
    invoice_pdf_ensure,
    pdf_batch_size,
    pdf_phase_seconds,
    pdf_store,
)
from integrations.services.sync.run import (
    _rare_cycle_collection,
    _Runner,
    sync_error_retry,
    sync_execute,
    sync_queue,
    sync_record,
    sync_scope_for_schedule,
)

# What other code and the tests import from here (private names: tests reach into them).
__all__ = [
    "ENTITIES",
    "ENTITY_CONTACTS",
    "ENTITY_CUSTOMERS",
    "ENTITY_INVOICES",
    "ENTITY_PDFS",
    "INTERRUPTED_MESSAGE",
    "LEASE_CONFLICT_MESSAGE",
    "PdfUnavailable",
    "SyncAborted",
    "_Runner",
    "_insert_invoices",
    "_insert_rows",
    "_rare_cycle_collection",
    "customer_unknown",
    "cursor_overlap",
    "invoice_pdf_ensure",
    "lease_name",
    "lease_ttl",
    "pdf_batch_size",
    "pdf_phase_seconds",
    "pdf_store",
    "run_seconds",
    "sync_error_retry",
    "sync_execute",
    "sync_queue",
    "sync_record",
    "sync_scope_for_schedule",
]
