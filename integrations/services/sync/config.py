"""What every part of a sync run shares: the entity names, the run's messages, and the
settings that bound a run (lease, cursors, run time, deletion checks, user details)."""

from __future__ import annotations

from datetime import timedelta

from django.conf import settings

from integrations.conf import halo_settings

ENTITY_CUSTOMERS = "customers"
ENTITY_CONTACTS = "contacts"
ENTITY_INVOICES = "invoices"
ENTITY_PDFS = "pdfs"
ENTITIES = (ENTITY_CUSTOMERS, ENTITY_INVOICES, ENTITY_PDFS)

# The scheduled sync reads everything (and so detects deletions) when the last full read is older.
FULL_SYNC_INTERVAL = timedelta(hours=24)
CONSECUTIVE_FAILURES_FOR_INCIDENT = 3
LEASE_CONFLICT_MESSAGE = "another sync of this connection is running"
INTERRUPTED_MESSAGE = "The sync was interrupted (the worker stopped); a new sync will pick up where it left off."
# Batch size of flag/unflag UPDATEs (keeps IN lists well under database parameter limits).
CHUNK = 500


class SyncAborted(Exception):
    """The run cannot go on (e.g. it lost its lease); `message` goes on the run."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def lease_name(connection_id: int) -> str:
    return f"sync:connection:{connection_id}"


def lease_ttl() -> int:
    """A killed worker's lease lapses after this long (HALOPSA_SYNC_LEASE_TTL); a run renews it
    every lease_renew_interval()."""
    return halo_settings().sync_lease_ttl


def lease_renew_interval() -> float:
    """Seconds between lease renewals during a run (HALOPSA_SYNC_LEASE_RENEW_SECONDS, default a
    twentieth of the TTL: 30 s)."""
    return halo_settings().lease_renew_interval


def cursor_overlap() -> timedelta:
    """Incremental reads start this long before the cursor (HALOPSA_SYNC_CURSOR_OVERLAP_SECONDS,
    default 10 min): equal timestamps and HaloPSA's own write delays are never skipped, and
    re-reading a record costs no write (fingerprints)."""
    return timedelta(seconds=halo_settings().sync_cursor_overlap_seconds)


def cursor_max_ahead() -> timedelta:
    """A cursor never goes further than this ahead of our clock (HALOPSA_SYNC_CURSOR_MAX_AHEAD_HOURS,
    default 24): one record stamped in the far future must not stop incremental reads. Capping
    only lowers a cursor, which makes a read longer, never miss anything."""
    return timedelta(hours=halo_settings().sync_cursor_max_ahead_hours)


def user_details_per_run() -> int:
    """GET /Users/{id} calls one run may make for billing flags (HALOPSA_SYNC_USER_DETAILS_PER_RUN,
    default 250, under a window of the usual 300-requests budget); users beyond it wait for the
    next run and keep their billing contacts meanwhile."""
    return halo_settings().sync_user_details_per_run


def run_seconds() -> float:
    """How long one run may take (HALOPSA_SYNC_RUN_SECONDS, default 25 min), and never more than
    90 % of the worker's task timeout: a run stops cleanly, with what it read saved, before the
    worker would be killed; the next run reads the rest."""
    configured = halo_settings().sync_run_seconds
    task_timeout = float(settings.Q_CLUSTER.get("timeout") or configured)
    return min(configured, task_timeout * 0.9)


def deletion_checks() -> int:
    """Records a deletion sweep confirms one by one (GET by id, one request each;
    HALOPSA_SYNC_DELETION_CHECKS, default 20). More candidates are checked with one id-only list."""
    return halo_settings().sync_deletion_checks
