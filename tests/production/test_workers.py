"""Two qcluster processes with several workers each, on PostgreSQL and the Redis broker (issue 11 item 3).

Many connections are synced at once with duplicate deliveries and competing runs per connection,
and platform payments are pushed with every push task delivered twice. Afterwards: no two syncs
of one connection ever overlapped, every connection holds HaloPSA's data, and HaloPSA has each
payment exactly once. The workers run the production settings (PRODUCTION=true, Redis broker and
cache), not the test settings.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from decimal import Decimal

import pytest

from tests.production.procs import MANAGE, PYTHON, clean_env, database_url_for, is_postgres, popen, private_tmp, stop

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.slow,
    pytest.mark.skipif(
        not (is_postgres() and os.environ.get("REDIS_URL")),
        reason="runs in make test's PostgreSQL+Redis pass (needs DATABASE_URL=postgres://... and REDIS_URL)",
    ),
]

CLUSTERS = 2
WORKERS_PER_CLUSTER = 3
CONNECTIONS = 6
RUNS_PER_CONNECTION = 3


def start_cluster(tmp_path, db_settings: dict, index: int) -> tuple[subprocess.Popen, object]:
    env = clean_env(
        tmp_path,
        DJANGO_SETTINGS_MODULE="syncportal.settings",
        PRODUCTION="true",
        # Same SECRET_KEY as the enqueuing process: django-q2 signs every task package with it.
        SECRET_KEY=os.environ["SECRET_KEY"],
        FIELD_ENCRYPTION_KEYS=os.environ["FIELD_ENCRYPTION_KEYS"],
        DATABASE_URL=database_url_for(db_settings),
        REDIS_URL=os.environ["REDIS_URL"],
        Q_WORKERS=str(WORKERS_PER_CLUSTER),
        # The sandbox listens on 127.0.0.1 over http.
        HALOPSA_ALLOW_PRIVATE_NETWORKS="true",
        MEDIA_ROOT=str(tmp_path / "media"),
        LOG_LEVEL="WARNING",
    )
    log = (tmp_path / f"cluster-{index}.log").open("w")
    proc = popen([PYTHON, MANAGE, "qcluster"], env, stdout=log, stderr=subprocess.STDOUT)
    return proc, log


def stop_cluster(proc: subprocess.Popen) -> None:
    stop(proc, signal.SIGINT)  # SIGINT: qcluster can deadlock on SIGTERM (django-q2#346)


def wait_until(predicate, timeout: float, what: str, logs) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(
                f"timed out waiting for {what}\n" + "\n".join(path.read_text()[-3000:] for path in logs)
            )
        time.sleep(0.2)


@pytest.fixture
def work_dir():
    yield from private_tmp("workers")


def test_two_clusters_never_overlap_syncs_of_a_connection_and_never_double_post(
    transactional_db, work_dir, partner, make_connection, halo_sandbox_factory, monkeypatch
):
    from django.db import connection as db
    from django_q.conf import Conf
    from django_q.tasks import async_task

    from integrations.models import Customer, Invoice, Payment, PushJob, SyncRun
    from integrations.services.payments import payment_record
    from integrations.services.sync import sync_execute

    srv = halo_sandbox_factory(dataset="tiny", rate_limit=0)
    connections = [make_connection(partner, srv, name=f"HaloPSA {i}") for i in range(CONNECTIONS)]
    # Mirror the first connection's invoices here, so payments can be recorded against them.
    first_run = SyncRun.objects.create(connection=connections[0], trigger=SyncRun.Trigger.CLI, scope=SyncRun.Scope.FULL)
    assert sync_execute(run=first_run).state == SyncRun.State.SUCCEEDED
    payable = list(
        Invoice.objects.filter(
            connection=connections[0], status=Invoice.Status.OPEN, balance__gte=Decimal("5.00")
        ).order_by("-invoice_date", "-id")[:3]
    )
    assert payable, "the tiny dataset has open invoices"

    # From here on tasks go through Redis to the clusters (the test settings run them inline).
    monkeypatch.setattr(Conf, "SYNC", False)
    tmp_path = work_dir
    clusters = []
    logs = [tmp_path / f"cluster-{i}.log" for i in range(CLUSTERS)]
    try:
        for i in range(CLUSTERS):
            clusters.append(start_cluster(tmp_path, db.settings_dict, i))
        runs = []
        for conn in connections:
            for _ in range(RUNS_PER_CONNECTION):
                # Created directly (sync_queue would refuse a second run): the lease must do the refusing.
                run = SyncRun.objects.create(
                    connection=conn, trigger=SyncRun.Trigger.SCHEDULE, scope=SyncRun.Scope.FULL
                )
                runs.append(run)
                for _ in range(2):  # every delivery duplicated
                    async_task("integrations.tasks.sync.sync_run_task", run.pk)
        payments = [
            payment_record(invoice=invoice, amount=Decimal("5.00"), method="card", reference=f"WORKERS-{i}")
            for i, invoice in enumerate(payable)
        ]
        jobs = list(PushJob.objects.filter(payment__in=payments))
        assert len(jobs) == len(payments)
        for job in jobs:  # payment_record enqueued each once on commit; deliver each a second time
            async_task("integrations.tasks.push.push_job_task", job.pk)

        finished = (SyncRun.State.SUCCEEDED, SyncRun.State.PARTIAL, SyncRun.State.FAILED)
        wait_until(
            lambda: not SyncRun.objects.filter(pk__in=[r.pk for r in runs]).exclude(state__in=finished).exists(),
            180,
            "all sync runs to finish",
            logs,
        )
        wait_until(
            lambda: not PushJob.objects.filter(pk__in=[j.pk for j in jobs]).exclude(state=PushJob.State.DONE).exists(),
            180,
            "all pushes to finish",
            logs,
        )
    finally:
        for proc, _ in clusters:
            stop_cluster(proc)
        for _, log in clusters:
            log.close()

    for proc, _ in clusters:
        assert proc.returncode == 0, "\n".join(path.read_text()[-3000:] for path in logs)

    states = list(SyncRun.objects.filter(pk__in=[r.pk for r in runs]).values_list("state", flat=True))
    print(
        f"\n{CLUSTERS} clusters x {WORKERS_PER_CLUSTER} workers: {len(runs)} runs on {CONNECTIONS} connections "
        f"(each delivered twice): {states.count(SyncRun.State.SUCCEEDED)} succeeded, "
        f"{states.count(SyncRun.State.FAILED)} refused by the lease; {len(payments)} payments pushed (twice each)"
    )
    truth = srv.store.ground_truth()
    for conn in connections:
        conn_runs = list(SyncRun.objects.filter(connection=conn, started_at__isnull=False).order_by("started_at"))
        # Never two syncs of one connection at once.
        for earlier, later in zip(conn_runs, conn_runs[1:]):
            assert later.started_at >= earlier.finished_at, (earlier.pk, later.pk)
        # At least one full sync of every connection went through, and left HaloPSA's data.
        assert any(run.state == SyncRun.State.SUCCEEDED for run in conn_runs)
        assert set(Customer.objects.filter(connection=conn, is_unknown=False).values_list("halopsa_id", flat=True)) == {
            customer["halopsa_id"] for customer in truth["customers"]
        }
        assert set(
            Invoice.objects.filter(connection=conn, is_credit_note=False).values_list("halopsa_id", flat=True)
        ) == {invoice["halopsa_id"] for invoice in truth["invoices"]}
        # Runs refused by the lease say why.
        for refused in SyncRun.objects.filter(connection=conn, started_at__isnull=True):
            assert refused.state == SyncRun.State.FAILED and "another sync" in refused.message.lower()

    # Each platform payment is in HaloPSA exactly once, although every push task ran twice.
    remote_invoices = {invoice["halopsa_id"]: invoice for invoice in truth["invoices"]}
    for payment in payments:
        remote = remote_invoices[payment.invoice.halopsa_id]["payments"]
        matching = [row for row in remote if row["reference"] == payment.reference]
        assert len(matching) == 1, (payment.reference, remote)
        payment.refresh_from_db()
        assert payment.halopsa_id == matching[0]["halopsa_id"]
    # And our side holds each once: a later pull of the first connection matched it, not copied it.
    # (The other connections mirror the same sandbox, so they see these payments as HaloPSA ones.)
    assert Payment.objects.filter(connection=connections[0], reference__startswith="WORKERS-").count() == len(payments)
