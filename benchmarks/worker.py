"""One benchmark step in its own process (so RSS and CPU are the step's own): run by run.py.

    python benchmarks/worker.py <step> [options]   (env: BENCH_DB, BENCH_MEDIA, ... see settings.py)

Steps: migrate | setup | fetch | sync | baseline | dashboard | webhook-setup | webhook-check.
Prints one JSON object on the last line of stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Iterator

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "benchmarks.settings")

import django  # noqa: E402

django.setup()

from django.db import connection as db, transaction  # noqa: E402

from integrations.halopsa.client import HaloClient, Page  # noqa: E402
from integrations.models import Connection, Invoice, Partner, SyncRun  # noqa: E402

ENDPOINTS = ("clients", "users", "invoices")


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def the_connection() -> Connection:
    connection = Connection.objects.order_by("pk").first()
    assert connection is not None, "no connection: run the setup step first"
    return connection


# --------------------------------------------------------------------------------------------


def step_migrate(args: argparse.Namespace) -> dict[str, Any]:
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    call_command("createcachetable", verbosity=0)
    return {"ok": True}


def step_setup(args: argparse.Namespace) -> dict[str, Any]:
    from halosandbox import SANDBOX_CLIENT_ID, SANDBOX_CLIENT_SECRET

    partner, _ = Partner.objects.get_or_create(name="Bench MSP")
    conn = Connection.objects.create(
        partner=partner,
        name="Bench HaloPSA",
        base_url=args.url,
        client_id=SANDBOX_CLIENT_ID,
        client_secret=SANDBOX_CLIENT_SECRET,
    )
    return {"connection": conn.pk, "partner": partner.pk}


def step_fetch(args: argparse.Namespace) -> dict[str, Any]:
    """Read every list the full sync reads (same parameters) into pickle streams."""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    client = HaloClient.for_connection(the_connection())
    started = time.perf_counter()
    pages = {
        "clients": client.client_pages(),
        "users": client.user_pages(),
        "invoices": client.invoice_pages(include_lines=True),
    }
    counts = {}
    for name, iterator in pages.items():
        n = 0
        with open(out / f"{name}.pkl", "wb") as fh:
            for page in iterator:
                pickle.dump((page.records, page.record_count, page.page_no), fh, protocol=pickle.HIGHEST_PROTOCOL)
                n += len(page.records)
        counts[name] = n
    return {"seconds": time.perf_counter() - started, "records": counts, "peak_rss_mb": peak_rss_mb()}


def step_listcounts(args: argparse.Namespace) -> dict[str, Any]:
    """record_count of each list the full sync reads (first page only)."""
    client = HaloClient.for_connection(the_connection())
    out = {}
    for name, pages in (
        ("Client", client.client_pages()),
        ("Users", client.user_pages()),
        ("Invoice", client.invoice_pages(include_lines=False)),
    ):
        first = next(iter(pages), None)
        out[name] = first.record_count if first is not None else 0
    return out


def _replay(directory: Path, name: str, read_time: list[float]) -> Iterator[Page]:
    """The pages fetch stored. Reading them stands in for the HTTP client, whose time the local
    work excludes: its wall and CPU seconds are added to read_time[0] and read_time[1]."""
    with open(directory / f"{name}.pkl", "rb") as fh:
        while True:
            t0, cpu0 = time.perf_counter(), time.process_time()
            try:
                records, record_count, page_no = pickle.load(fh)
            except EOFError:
                return
            finally:
                read_time[0] += time.perf_counter() - t0
                read_time[1] += time.process_time() - cpu0
            yield Page(records=records, record_count=record_count, page_no=page_no)


def step_sync(args: argparse.Namespace) -> dict[str, Any]:
    """One sync run in the foreground. --replay DIR serves the lists from fetch's files (no HTTP),
    so the run's time less reading those files is its local work; otherwise time inside the
    client is measured apart."""
    from integrations.services import sync as sync_service
    from integrations.services.sync import pdfs as sync_pdfs

    client_seconds = [0.0, 0.0]  # wall, and CPU when replaying
    client_calls = [0]
    if args.replay:
        directory = Path(args.replay)
        HaloClient.client_pages = lambda self, **kw: _replay(directory, "clients", client_seconds)  # type: ignore[method-assign]
        HaloClient.user_pages = lambda self, **kw: _replay(directory, "users", client_seconds)  # type: ignore[method-assign]
        HaloClient.invoice_pages = lambda self, **kw: _replay(directory, "invoices", client_seconds)  # type: ignore[method-assign]

        def no_http(self, *a, **kw):
            raise AssertionError("replay mode made an HTTP call")

        HaloClient._request = no_http  # type: ignore[method-assign]
    else:
        original = HaloClient._request

        def timed(self, *a, **kw):
            t0 = time.perf_counter()
            try:
                return original(self, *a, **kw)
            finally:
                client_seconds[0] += time.perf_counter() - t0
                client_calls[0] += 1

        HaloClient._request = timed  # type: ignore[method-assign]
    if args.pdfs == "unpaid":
        # Exactly the missing/stale PDFs of unpaid invoices: the phase fetches unpaid first, so the
        # limit is their count (production fetches HALOPSA_PDF_BATCH per run instead).
        from django.db.models import F, Q

        sync_pdfs.pdf_batch_size = lambda: (
            Invoice.objects.filter(
                connection=the_connection(),
                origin="halopsa",
                halopsa_id__isnull=False,
                status__in=[Invoice.Status.OPEN, Invoice.Status.PARTIALLY_PAID],
                pdf_attachment_id__isnull=False,
                deleted_in_halopsa_at__isnull=True,
                archived_at__isnull=True,
            )
            .filter(Q(pdf__isnull=True) | ~Q(pdf__attachment_id=F("pdf_attachment_id")))
            .count()
        )
    elif args.pdfs is not None:
        limit = int(args.pdfs)
        sync_pdfs.pdf_batch_size = lambda: limit
    # Milestones: when invoice data is complete and when the last unpaid invoice got its PDF.
    marks: dict[str, float] = {}
    original_pdfs_read = sync_pdfs.PdfsSync.read
    original_store = sync_pdfs.pdf_store
    t_start = [0.0]

    def pdfs_read(self, *, limit=None):  # the PDF phase starts once invoice data is complete
        marks["invoices_done_s"] = time.perf_counter() - t_start[0]
        return original_pdfs_read(self, limit=limit)

    def store(*, invoice, content, attachment_id):
        t0 = time.perf_counter()
        result = original_store(invoice=invoice, content=content, attachment_id=attachment_id)
        marks["pdf_store_seconds"] = marks.get("pdf_store_seconds", 0.0) + time.perf_counter() - t0
        if invoice.status in (Invoice.Status.OPEN, Invoice.Status.PARTIALLY_PAID):
            marks["last_unpaid_pdf_s"] = time.perf_counter() - t_start[0]
        marks["pdfs_stored"] = marks.get("pdfs_stored", 0) + 1
        return result

    sync_pdfs.PdfsSync.read = pdfs_read  # type: ignore[method-assign]
    sync_pdfs.pdf_store = store
    breakdown = _instrument() if args.breakdown else None
    conn = the_connection()
    run = SyncRun.objects.create(connection=conn, scope=args.scope, trigger=SyncRun.Trigger.CLI)
    t_start[0] = started = time.perf_counter()
    cpu0 = time.process_time()
    run = sync_service.sync_execute(run=run)
    seconds = time.perf_counter() - started
    cpu = time.process_time() - cpu0
    return {
        "state": run.state,
        "message": run.message,
        "seconds": seconds,
        "cpu_seconds": cpu,
        "client_seconds": client_seconds[0],
        "client_calls": client_calls[0],
        "local_seconds": seconds - client_seconds[0],
        "local_cpu_seconds": cpu - client_seconds[1],
        "counts": {"created": run.created, "updated": run.updated, "unchanged": run.unchanged, "failed": run.failed},
        "api_requests": run.api_requests,
        "api_retries": run.api_retries,
        "api_bytes": run.api_bytes,
        "peak_rss_mb": peak_rss_mb(),
        "marks": marks,
        "rows": table_counts(),
        "breakdown": breakdown,
    }


def _instrument() -> dict[str, float]:
    """Time spent in a few hot spots (exclusive of each other), for finding what to optimise."""
    from django.db.backends.base.base import BaseDatabaseWrapper
    from django.db.models.query import QuerySet

    from integrations.halopsa import mapping

    totals: dict[str, float] = {}

    def wrap(owner: Any, name: str, label: str) -> None:
        original = getattr(owner, name)

        def timed(*a, **kw):
            t0 = time.perf_counter()
            try:
                return original(*a, **kw)
            finally:
                key = f"{label}:{a[0].model.__name__}" if a and isinstance(a[0], QuerySet) else label
                totals[key] = totals.get(key, 0.0) + time.perf_counter() - t0

        setattr(owner, name, timed)

    wrap(QuerySet, "bulk_create", "bulk_create")
    wrap(QuerySet, "bulk_update", "bulk_update")
    wrap(BaseDatabaseWrapper, "commit", "commit")
    wrap(mapping, "map_invoice", "map_invoice")
    from integrations.services.sync.invoices import InvoicesSync

    original_store = InvoicesSync.store
    page_times: list[float] = []  # per invoice write batch (HALOPSA_SYNC_WRITE_BATCH records)

    window = os.environ.get("BENCH_PROFILE_PAGES", "")  # "70:75": cProfile those invoice write batches
    first, last = (int(x) for x in window.split(":")) if window else (0, -1)
    import cProfile

    profiler = cProfile.Profile()

    def store_invoices(self, mapped, records):
        t0 = time.perf_counter()
        on = first <= len(page_times) < last
        if on:
            profiler.enable()
        try:
            return original_store(self, mapped, records)
        finally:
            if on:
                profiler.disable()
                if len(page_times) + 1 == last:
                    profiler.dump_stats(os.environ.get("BENCH_PROFILE_OUT", "/tmp/pages.prof"))
            page_times.append(time.perf_counter() - t0)
            if len(page_times) % 10 == 0:
                totals[f"invoice_batches_{len(page_times) - 9:04d}_{len(page_times):04d}"] = sum(page_times[-10:])

    InvoicesSync.store = store_invoices  # type: ignore[method-assign]

    def slow_sql(execute, sql, params, many, context):  # queries over 5 ms, by statement shape
        t0 = time.perf_counter()
        try:
            return execute(sql, params, many, context)
        finally:
            took = time.perf_counter() - t0
            if took > 0.005:
                key = "slow_sql:" + sql[:160]
                totals[key] = totals.get(key, 0.0) + took

    db.execute_wrappers.append(slow_sql)
    return totals


TABLES = (
    "integrations_customer",
    "integrations_contact",
    "integrations_invoice",
    "integrations_invoiceline",
    "integrations_payment",
)


def table_counts() -> dict[str, int]:
    with db.cursor() as cur:
        out = {}
        for table in TABLES:
            cur.execute(f"SELECT COUNT(*) FROM {table}")
            out[table] = cur.fetchone()[0]
        return out


def empty_tables_and_files() -> None:
    """Empty the baseline's tables (untimed) and give their space back, so every insert method
    starts from the state the sync starts from: empty tables in files that must grow. A plain
    DELETE would let the next method reuse the pages the first one allocated, which on SQLite
    took a third of the time off the second method on the invoice table for that reason alone."""
    with db.cursor() as cur:
        if db.vendor == "postgresql":
            cur.execute(f"TRUNCATE {', '.join(TABLES)} CASCADE")  # new, empty relation files
            return
        for table in reversed(TABLES):  # children first
            cur.execute(f"DELETE FROM {table}")
        cur.execute("VACUUM")  # the database file shrinks back to its live pages
        cur.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # and the write-ahead log back to empty


def step_baseline(args: argparse.Namespace) -> dict[str, Any]:
    """The fastest plain bulk insert of the same rows into the same tables: rows are read from the
    synced database (args.source, untimed), then inserted into this (empty, migrated) database one
    transaction per table, once with executemany and once with multi-row VALUES statements (what
    bulk_create sends, without the ORM), each method from empty tables and files; the faster of
    the two per table counts. Timed: the inserts only."""
    import sqlite3

    src: Any  # a psycopg or sqlite3 connection
    if "://" in args.source:
        import psycopg
        from psycopg.types.json import Jsonb

        src = psycopg.connect(args.source)

        def adapt(rows: list[tuple]) -> list[tuple]:  # jsonb comes back as dicts: send them as jsonb
            return [tuple(Jsonb(v) if isinstance(v, (dict, list)) else v for v in row) for row in rows]
    else:
        src = sqlite3.connect(args.source)

        def adapt(rows: list[tuple]) -> list[tuple]:
            return rows

    with transaction.atomic():  # the partner and connection the rows point at (same pks)
        cur_src = src.cursor()
        copied = {}
        for table in ("integrations_partner", "integrations_connection"):
            cur_src.execute(f"SELECT * FROM {table}")
            columns = [d[0] for d in cur_src.description]
            rows = adapt(cur_src.fetchall())
            with db.cursor() as cur:
                cur.executemany(
                    f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join(['%s'] * len(columns))})", rows
                )
    limit = 65000 if db.vendor == "postgresql" else 32000  # bind parameters per statement

    def insert(table: str, method: str) -> tuple[float, float, int]:
        cur_src.execute(f"SELECT * FROM {table}")
        columns = [d[0] for d in cur_src.description]
        rows = adapt(cur_src.fetchall())  # untimed: reading and adapting the source rows
        one = f"({', '.join(['%s'] * len(columns))})"
        head = f"INSERT INTO {table} ({', '.join(columns)}) VALUES "
        batch = max(1, min(1000, limit // len(columns)))
        started, cpu0 = time.perf_counter(), time.process_time()
        with transaction.atomic(), db.cursor() as cur:
            if method == "copy":  # PostgreSQL's bulk load (not an INSERT statement): reported apart
                with cur.cursor.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy:
                    for row in rows:
                        copy.write_row(row)
            elif method == "executemany":
                for start in range(0, len(rows), 5000):
                    cur.executemany(head + one, rows[start : start + 5000])
            else:  # multi-row VALUES, as bulk_create sends them, without the ORM
                full_sql = head + ", ".join([one] * batch)
                for start in range(0, len(rows), batch):
                    part = rows[start : start + batch]
                    sql = full_sql if len(part) == batch else head + ", ".join([one] * len(part))
                    cur.execute(sql, [value for row in part for value in row])
        return time.perf_counter() - started, time.process_time() - cpu0, len(rows)

    by_method: dict[str, dict[str, tuple[float, float]]] = {}
    for method in ("executemany", "multirow", *(["copy"] if db.vendor == "postgresql" else [])):
        if by_method:
            empty_tables_and_files()
        by_method[method] = {}
        for table in TABLES:
            seconds, cpu_seconds, copied[table] = insert(table, method)
            by_method[method][table] = (seconds, cpu_seconds)
    # The fastest INSERT method per table (COPY is reported apart: it is not an INSERT).
    inserts = [m for m in by_method if m != "copy"]
    timings = {table: min(by_method[m][table][0] for m in inserts) for table in TABLES}
    cpu = sum(min(by_method[m][table][1] for m in inserts) for table in TABLES)
    if db.vendor == "postgresql":  # the copied rows keep their ids: move the sequences past them
        with db.cursor() as cur:
            for table in TABLES:
                cur.execute(
                    f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), COALESCE(MAX(id), 1)) FROM {table}"
                )
    return {
        "seconds": sum(timings.values()),
        "cpu_seconds": cpu,
        "by_table": timings,
        "rows": copied,
        "by_method": {m: sum(t for t, _ in v.values()) for m, v in by_method.items()},
        "by_method_and_table": {m: {table: t for table, (t, _) in v.items()} for m, v in by_method.items()},
        "peak_rss_mb": peak_rss_mb(),
    }


def step_webhook_setup(args: argparse.Namespace) -> dict[str, Any]:
    """Test the connection (stores HaloPSA's version) and register the webhook in the sandbox."""
    from integrations.services.connections import connection_test
    from integrations.services.webhooks import webhook_subscription_create

    conn = the_connection()
    result = connection_test(connection=conn)
    conn.refresh_from_db()
    from django.contrib.auth import get_user_model

    User = get_user_model()
    user = User.objects.filter(username="bench").first() or User.objects.create_user(
        username="bench", password="bench-password-123", partner=conn.partner
    )
    subscription = webhook_subscription_create(connection=conn, user=user)
    if subscription["to_tick"]:  # eventnos unknown (the default): tick them as a person would
        import requests

        with requests.Session() as session:
            session.trust_env = False
            session.post(
                f"{conn.base_url}/_sandbox/webhooks/{subscription['subscription_id']}/events",
                json={"events": subscription["to_tick"]},
                timeout=30,
            ).raise_for_status()
    return {"test_ok": result.ok, "version": result.version, "realtime": conn.is_realtime, "subscription": subscription}


def step_dashboard(args: argparse.Namespace) -> dict[str, Any]:
    """Server time and queries of the dashboard pages, Django test client in-process."""
    from django.contrib.auth import get_user_model
    from django.test import Client
    from django.test.utils import CaptureQueriesContext
    from django.urls import reverse

    conn = the_connection()
    User = get_user_model()
    user = User.objects.filter(username="bench").first() or User.objects.create_user(
        username="bench", password="bench-password-123", partner=conn.partner
    )
    # The busiest invoice: most lines among those with payments.
    from django.db.models import Count

    invoice = (
        Invoice.objects.filter(connection=conn)
        .annotate(n=Count("lines"))
        .filter(payments__isnull=False)
        .order_by("-n", "pk")
        .first()
        or Invoice.objects.filter(connection=conn).order_by("-invoice_date", "-id").first()
    )
    assert invoice is not None, "no invoice: run the sync step first"
    pages = {
        "invoice_list": reverse("invoice_list"),
        "invoice_detail": reverse("invoice_detail", args=[invoice.pk]),
        "connection": reverse("connection_detail", args=[conn.pk]),
        "unknown_customers": reverse("unknown_customers"),
    }
    client = Client()
    client.force_login(user)
    out: dict[str, Any] = {"invoices": Invoice.objects.filter(connection=conn).count()}
    for name, url in pages.items():
        client.get(url)  # warm-up (template compilation, first-view work)
        times, queries, statuses = [], [], set()
        for _ in range(args.repeat):
            with CaptureQueriesContext(db) as ctx:
                t0 = time.perf_counter()
                response = client.get(url)
                times.append((time.perf_counter() - t0) * 1000)
            queries.append(len(ctx.captured_queries))
            statuses.add(response.status_code)
        out[name] = {
            "url": url,
            "median_ms": statistics.median(times),
            "p90_ms": sorted(times)[int(len(times) * 0.9) - 1],
            "queries": max(queries),
            "status": sorted(statuses),
        }
    return out


# --------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("step")
    parser.add_argument("--url")
    parser.add_argument("--out")
    parser.add_argument("--scope", default="full")
    parser.add_argument("--replay")
    parser.add_argument("--pdfs", default=None, help='PDF limit for the run: a number, or "unpaid"')
    parser.add_argument("--source")
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--breakdown", action="store_true", help="time a few hot spots of the sync")
    parser.add_argument("--profile", help="write a cProfile of the step to this file")
    args = parser.parse_args()
    steps = {
        "migrate": step_migrate,
        "setup": step_setup,
        "fetch": step_fetch,
        "sync": step_sync,
        "baseline": step_baseline,
        "listcounts": step_listcounts,
        "webhook-setup": step_webhook_setup,
        "dashboard": step_dashboard,
    }
    if args.profile:
        import cProfile

        profiler = cProfile.Profile()
        result = profiler.runcall(steps[args.step], args)
        profiler.dump_stats(args.profile)
    else:
        result = steps[args.step](args)
    sys.stdout.write("\n" + json.dumps(result, default=str) + "\n")


if __name__ == "__main__":
    main()
