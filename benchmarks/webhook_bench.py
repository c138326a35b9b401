"""Target 5: HaloPSA change -> webhook -> visible in the portal, with the real processes.

A sandbox, gunicorn (the web process) and `manage.py qcluster` with the default ORM broker run
as separate processes on one SQLite database. For each of N invoices the sandbox's control API
changes the due date; the time until the portal's database shows the new date is measured from
just before that control call (so it includes the sandbox queueing and sending the webhook).
The endpoint's own answer time is the sandbox's delivery duration (connect + POST + answer).
"""

from __future__ import annotations

import signal
import statistics
import subprocess
import time
import urllib.request
from datetime import date, timedelta
from typing import Any

WEBHOOK_DATASET = {"customers": 20, "contacts": 100, "billing_contacts": 30, "invoices": 300, "max_lines": 8}
SAMPLES = 30


def part_webhook(b: Any, results: dict[str, Any]) -> None:
    from benchmarks.run import PY, ROOT, free_port, log, sqlite_rows

    log("webhook path: sandbox + gunicorn + qcluster (ORM broker)")
    sb = b.sandbox(WEBHOOK_DATASET)
    db = b.fresh_db("webhook")
    port = free_port()
    site = f"http://127.0.0.1:{port}"
    env = b.env(
        db,
        SITE_URL=site,
        BENCH_CACHE="db",
        WEB_CONCURRENCY="2",
        GUNICORN_BIND=f"127.0.0.1:{port}",
        GUNICORN_LOG_LEVEL="warning",
    )
    procs: list[subprocess.Popen] = []
    try:
        b.worker("setup", db, "--url", sb.url)
        b.worker("sync", db, "--scope", "full", "--pdfs", "0")
        b.worker("webhook-setup", db, env={"SITE_URL": site})
        web = subprocess.Popen(
            [
                "nice",
                "-n",
                str(b.nice),
                PY,
                "-m",
                "gunicorn",
                "syncportal.asgi",
                "--config",
                "gunicorn.conf.py",
                "--access-logfile",
                "/dev/null",
            ],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        procs.append(web)
        worker = subprocess.Popen(
            ["nice", "-n", str(b.nice), PY, "manage.py", "qcluster"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        procs.append(worker)
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                urllib.request.urlopen(f"{site}/healthz", timeout=2).read()
                break
            except OSError:
                time.sleep(0.3)
        time.sleep(3)  # qcluster start-up
        ids = [
            r[0]
            for r in sqlite_rows(
                db, "SELECT halopsa_id FROM integrations_invoice WHERE status='open' ORDER BY halopsa_id"
            )
        ]
        latencies: list[float] = []
        timeouts = 0
        for n, invoice_id in enumerate(ids[:SAMPLES]):
            due = date(2027, 1, 1) + timedelta(days=n)
            started = time.perf_counter()
            sb.control("PATCH", f"invoices/{invoice_id}", {"duedate": f"{due.isoformat()}T00:00:00"})
            seen = False
            while time.perf_counter() - started < 15:
                rows = sqlite_rows(db, f"SELECT due_date FROM integrations_invoice WHERE halopsa_id={int(invoice_id)}")
                if rows and str(rows[0][0]) == due.isoformat():
                    seen = True
                    break
                time.sleep(0.005)
            if seen:
                latencies.append((time.perf_counter() - started) * 1000)
            else:
                timeouts += 1
            time.sleep(0.3)
        deliveries = sb.control("GET", "webhooks/deliveries")
        answer = [d["duration_ms"] for d in deliveries if d.get("status") and 200 <= d["status"] < 300]
        statuses: dict[str, int] = {}
        for d in deliveries:
            statuses[str(d.get("status"))] = statuses.get(str(d.get("status")), 0) + 1
        results["webhook"] = {
            "n": len(latencies),
            "timeouts": timeouts,
            "visible_median_ms": statistics.median(latencies) if latencies else float("inf"),
            "visible_p90_ms": sorted(latencies)[int(len(latencies) * 0.9) - 1] if latencies else None,
            "visible_max_ms": max(latencies) if latencies else None,
            "endpoint_median_ms": statistics.median(answer) if answer else float("inf"),
            "deliveries": len(deliveries),
            "delivery_statuses": statuses,
        }
        log(
            f"webhook: visible median {results['webhook']['visible_median_ms']:.0f} ms, endpoint median "
            f"{results['webhook']['endpoint_median_ms']:.1f} ms, deliveries {statuses}, timeouts {timeouts}"
        )
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)  # qcluster can deadlock on SIGTERM (django-q2#346)
        for proc in procs:
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
        sb.proc.send_signal(signal.SIGTERM)
        sb.proc.wait(20)
