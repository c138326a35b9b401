"""The server as a process and under concurrency: management command, parallel clients, stop()."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from pathlib import Path

import requests

from halosandbox import SandboxServer
from tests.plugins.sandbox import halo_session_for

ROOT = Path(__file__).resolve().parents[2]


def test_management_command_runs_until_sigint():
    process = subprocess.Popen(
        [sys.executable, "manage.py", "halopsa_sandbox", "--port", "0", "--dataset", "tiny", "--version", "2.99.1"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ},
    )
    try:
        output = []
        url = None
        for line in process.stdout:
            output.append(line)
            match = re.search(r"running at (http://127\.0\.0\.1:\d+)", line)
            if match:
                url = match.group(1)
            if line.startswith("control API"):
                break
        assert url, "".join(output)
        text = "".join(output)
        assert "client_id: " in text and "client_secret: " in text
        session = requests.Session()
        session.trust_env = False
        assert session.get(f"{url}/api/authinfo", timeout=5).status_code == 200
        assert session.get(f"{url}/_sandbox/", timeout=5).json()["version"] == "2.99.1"
        process.send_signal(signal.SIGINT)
        rest, _ = process.communicate(timeout=15)
        assert process.returncode == 0, rest
        assert "stopped" in rest
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_parallel_readers_and_writers_keep_the_books_balanced(halo_sandbox_factory):
    server = halo_sandbox_factory(dataset="demo", seed=2, rate_limit=0)
    unpaid = [
        i
        for i in server.store.query_invoice_ids(paymentstatuses=frozenset({0}))
        if not server.store.get_invoice(i).voided
    ][:8]
    errors: list[str] = []

    def reader(_: int) -> None:
        session = halo_session_for(server)
        for page in range(1, 4):
            response = session.get(
                f"{server.url}/api/Invoice",
                params={"pageinate": "true", "page_size": 50, "page_no": page, "includelines": "true"},
            )
            if response.status_code != 200:
                errors.append(response.text)
        session.close()

    def writer(invoice_id: int) -> None:
        session = halo_session_for(server)
        for _ in range(5):
            response = session.post(
                f"{server.url}/api/InvoicePayment", json=[{"invoice_id": invoice_id, "amount": "1.00"}]
            )
            if response.status_code != 201:
                errors.append(response.text)
        session.close()

    with ThreadPoolExecutor(max_workers=12) as pool:
        list(pool.map(reader, range(8)))
        list(pool.map(writer, unpaid))
    assert errors == []
    for invoice in server.store.ground_truth()["invoices"]:
        paid = sum((Decimal(p["amount"]) for p in invoice["payments"]), Decimal("0"))
        assert Decimal(invoice["balance"]) == Decimal(invoice["total"]) - paid
    assert server.count_requests("/api/InvoicePayment", method="POST") == 5 * len(unpaid)


def test_start_stop_and_context_manager_free_the_port():
    with SandboxServer(dataset="tiny") as server:
        port = server.port
        assert requests.get(f"{server.url}/api/authinfo", timeout=5).status_code == 200
    again = SandboxServer(dataset="tiny", port=port)
    again.start()
    try:
        assert again.url.endswith(f":{port}")
    finally:
        again.stop()
        again.stop()  # idempotent
    assert threading.active_count() < 50


def test_simulator_package_stands_alone():
    """halosandbox is a tool beside the domain: importing all of it pulls in no Django and no
    integrations module, so benchmarks and scripts can run it without the portal."""
    code = (
        "import pkgutil, importlib, sys, halosandbox\n"
        "for m in pkgutil.iter_modules(halosandbox.__path__):\n"
        "    importlib.import_module('halosandbox.' + m.name)\n"
        "print(sorted(n for n in sys.modules if n.split('.')[0] in {'django', 'integrations', 'syncportal'}))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
