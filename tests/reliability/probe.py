"""Read (or poke) a reliability test's out-of-process database and print one JSON object.

    python -m tests.reliability.probe state CONNECTION_ID
    python -m tests.reliability.probe expire-push-leases CONNECTION_ID   # ten minutes have passed
    python -m tests.reliability.probe webhook-credentials|webhook-state|webhook-sweep CONNECTION_ID

Run with the same environment as the processes under test (tests/reliability/procs.py), so the
test process never opens their database itself (SQLite file or a PostgreSQL database of its own).
"""

from __future__ import annotations

import json
import os
import sys
from datetime import timedelta
from typing import Any


def _duplicates(model: Any, *fields: str, **filters: Any) -> int:
    from django.db.models import Count

    return model.objects.filter(**filters).values(*fields).annotate(n=Count("id")).filter(n__gt=1).count()


def state(connection_id: int) -> dict[str, Any]:
    from django.utils import timezone

    from integrations.models import (
        Contact,
        Customer,
        Invoice,
        InvoiceLine,
        Lease,
        Payment,
        PushJob,
        SyncError,
        SyncRun,
    )
    from integrations.services.sync import lease_name

    now = timezone.now()
    lease = Lease.objects.filter(name=lease_name(connection_id)).first()
    return {
        "runs": [
            {
                "id": r.pk,
                "state": r.state,
                "message": r.message,
                "failed": r.failed,
                "progress_done": r.progress_done,
                "progress_total": r.progress_total,
                "api_requests": r.api_requests,
                "api_retries": r.api_retries,
            }
            for r in SyncRun.objects.filter(connection_id=connection_id).order_by("id")
        ],
        "lease": None
        if lease is None
        else {
            "held": bool(lease.owner) and lease.expires_at is not None and lease.expires_at >= now,
            "seconds_left": (lease.expires_at - now).total_seconds() if lease.expires_at else None,
        },
        "sync_errors": [
            {
                "id": e.pk,
                "run_id": e.run_id,
                "entity": e.entity,
                "halopsa_id": e.halopsa_id,
                "message": e.message,
                "resolved": e.resolved_at is not None,
                "payload": e.payload,
            }
            for e in SyncError.objects.filter(connection_id=connection_id).order_by("id")
        ],
        "counts": {
            "customers": Customer.objects.filter(connection_id=connection_id).count(),
            "contacts": Contact.objects.filter(customer__connection_id=connection_id).count(),
            "invoices": Invoice.objects.filter(connection_id=connection_id).count(),
            "lines": InvoiceLine.objects.filter(invoice__connection_id=connection_id).count(),
            "payments": Payment.objects.filter(connection_id=connection_id).count(),
        },
        "duplicates": {
            "customers": _duplicates(Customer, "halopsa_id", connection_id=connection_id, halopsa_id__isnull=False),
            "invoices": _duplicates(Invoice, "halopsa_id", connection_id=connection_id, halopsa_id__isnull=False),
            "lines": _duplicates(
                InvoiceLine, "invoice_id", "halopsa_id", invoice__connection_id=connection_id, halopsa_id__isnull=False
            ),
            "payments": _duplicates(Payment, "halopsa_id", connection_id=connection_id, halopsa_id__isnull=False),
            "payment_references": _duplicates(
                Payment, "invoice_id", "reference", connection_id=connection_id, source="platform"
            ),
            "contacts": _duplicates(Contact, "customer_id", "email", customer__connection_id=connection_id),
        },
        "push_jobs": [
            {
                "id": j.pk,
                "kind": j.kind,
                "state": j.state,
                "attempts": j.attempts,
                "payment_id": j.payment_id,
                "last_error": j.last_error,
            }
            for j in PushJob.objects.filter(connection_id=connection_id).order_by("id")
        ],
        "platform_payments": [
            {
                "id": p.pk,
                "invoice_halopsa_id": p.invoice.halopsa_id,
                "amount": str(p.amount),
                "reference": p.reference,
                "halopsa_id": p.halopsa_id,
            }
            for p in Payment.objects.filter(connection_id=connection_id, source="platform")
            .select_related("invoice")
            .order_by("id")
        ],
    }


def expire_push_leases(connection_id: int) -> dict[str, Any]:
    """Move the clock of abandoned pushes forward: what push_due_dispatch sees ten minutes later."""
    from django.utils import timezone

    from integrations.models import Lease, PushJob
    from integrations.services.push import LEASE_TIMEOUT

    past = timezone.now() - LEASE_TIMEOUT - timedelta(seconds=1)
    jobs = PushJob.objects.filter(connection_id=connection_id, state=PushJob.State.RUNNING).update(updated_at=past)
    leases = Lease.objects.filter(name__startswith="push:invoice:", expires_at__isnull=False).update(expires_at=past)
    return {"running_jobs": jobs, "leases": leases}


def webhook_credentials(connection_id: int) -> dict[str, Any]:
    from integrations.models import Connection

    connection = Connection.objects.get(pk=connection_id)
    return {
        "key": str(connection.webhook_key),
        "username": connection.webhook_username,
        "password": connection.webhook_password,
        "realtime": connection.is_realtime,
    }


def webhook_state(connection_id: int) -> dict[str, Any]:
    from django.db.models import Count

    from integrations.models import SyncRun, WebhookEvent

    events = WebhookEvent.objects.filter(connection_id=connection_id)
    return {
        "states": dict(events.values_list("state").annotate(n=Count("id")).order_by()),
        "dedupe_keys": list(events.values_list("dedupe_key", flat=True)),
        "errors": list(events.filter(state="failed").values_list("error", flat=True)[:5]),
        "sync_records": SyncRun.objects.filter(connection_id=connection_id, trigger="webhook").count(),
    }


def webhook_sweep(connection_id: int) -> dict[str, Any]:
    """Five minutes later: the sweep re-queues events that waited for a long sync."""
    from django.utils import timezone

    from integrations.models import WebhookEvent
    from integrations.services.webhooks import SWEEP_AFTER, webhook_events_requeue_stale

    past = timezone.now() - SWEEP_AFTER - timedelta(seconds=1)
    waiting = WebhookEvent.objects.filter(connection_id=connection_id, state="received")
    waiting.filter(claimed_at__isnull=False).update(claimed_at=past)
    waiting.filter(claimed_at__isnull=True).update(received_at=past)
    return {"requeued": webhook_events_requeue_stale()}


def main(argv: list[str]) -> int:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.reliability.proc_settings")
    import django

    django.setup()
    command, connection_id = argv[0], int(argv[1])
    commands = {
        "state": state,
        "expire-push-leases": expire_push_leases,
        "webhook-credentials": webhook_credentials,
        "webhook-state": webhook_state,
        "webhook-sweep": webhook_sweep,
    }
    result = commands[command](connection_id)
    print(json.dumps(result, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
