"""The processes of the push chaos test (tests/reliability/test_chaos_push.py).

    python -m tests.reliability.push_tool record CONNECTION_ID PLAN_JSON_FILE
        record_payment (the management command) for each {"invoice", "amount", "reference"}
    python -m tests.reliability.push_tool work CONNECTION_ID ROUNDS SETTLE_SECONDS
        a push worker: the every-minute sweep (push_due_dispatch), its tasks run inline
        (Q_SYNC=true), repeated ROUNDS times with the clock moved past each backoff in between;
        a failed attempt is retried no sooner than SETTLE_SECONDS of real time (see _time_passes)
    python -m tests.reliability.push_tool retry-review CONNECTION_ID
        a person presses "Retry" on every push that needs review

Each prints one JSON line with what it did.
"""

from __future__ import annotations

import json
import os
import sys
import time
from datetime import timedelta
from io import StringIO


def record(connection_id: int, plan_file: str) -> dict:
    from django.core.management import call_command

    from integrations.models import Invoice

    with open(plan_file) as plan_json:
        plan = json.loads(plan_json.read())
    recorded = []
    for row in plan:
        invoice = Invoice.objects.get(connection_id=connection_id, halopsa_id=row["invoice"])
        out = StringIO()
        call_command(
            "record_payment",
            "--invoice",
            str(invoice.pk),
            "--amount",
            row["amount"],
            "--reference",
            row["reference"],
            "--method",
            "card",
            stdout=out,
        )
        recorded.append(int(out.getvalue().strip().splitlines()[-1]))
    return {"recorded": recorded}


def _time_passes(connection_id: int, settle: float) -> None:
    """Backoffs and the grace of fresh jobs are over (the clock is not mocked; due times move).

    Only for attempts at least `settle` seconds old in real time: the real backoff (30 s and
    more) outlasts the time HaloPSA takes to commit a POST whose answer timed out, and the
    exactly-once lookup relies on that; collapsing it below the sandbox's slow delay would test
    a HaloPSA that commits after our retry looked, which the design does not claim to handle.
    """
    from django.utils import timezone

    from integrations.models import PushJob
    from integrations.services.push import PENDING_GRACE

    now = timezone.now()
    jobs = PushJob.objects.filter(connection_id=connection_id)
    jobs.filter(state=PushJob.State.RETRYING, updated_at__lte=now - timedelta(seconds=settle)).update(
        next_attempt_at=now - timedelta(seconds=1)
    )
    jobs.filter(state=PushJob.State.PENDING).update(
        created_at=now - PENDING_GRACE - timedelta(seconds=1), next_attempt_at=now - timedelta(seconds=1)
    )


def work(connection_id: int, rounds: int, settle: float) -> dict:
    from integrations.models import PushJob
    from integrations.services.push import push_due_dispatch
    from integrations.services.reconcile import UNFINISHED

    dispatched = 0
    for done_rounds in range(1, rounds + 1):  # noqa: B007 - the rounds done are the result
        _time_passes(connection_id, settle)
        dispatched += push_due_dispatch()
        waiting = PushJob.objects.filter(connection_id=connection_id, state__in=UNFINISHED).exclude(
            state=PushJob.State.NEEDS_REVIEW
        )
        if not waiting.exists():
            break
        time.sleep(0.2)
    return {"rounds": done_rounds, "dispatched": dispatched}


def retry_review(connection_id: int) -> dict:
    from integrations.models import PushJob, User
    from integrations.services.push import push_job_retry

    person, _ = User.objects.get_or_create(username="chaos-operator", defaults={"is_staff": True})
    retried = 0
    for job in PushJob.objects.filter(connection_id=connection_id, state=PushJob.State.NEEDS_REVIEW):
        push_job_retry(job=job, user=person)
        retried += 1
    return {"retried": retried}


def main(argv: list[str]) -> int:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.reliability.proc_settings")
    import django

    django.setup()
    command, connection_id = argv[0], int(argv[1])
    if command == "record":
        result = record(connection_id, argv[2])
    elif command == "work":
        result = work(connection_id, int(argv[2]), float(argv[3]))
    elif command == "retry-review":
        result = retry_review(connection_id)
    else:
        raise SystemExit(f"unknown command {command}")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
