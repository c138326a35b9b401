"""The operator commands' exact output: add_connection, sync_connection, export_connection, ensure_schedules."""

from __future__ import annotations

import json
import re
from decimal import Decimal
from io import StringIO

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django_q.models import Schedule

from halosandbox import SANDBOX_CLIENT_ID, SANDBOX_CLIENT_SECRET
from integrations.models import Connection, Customer, Invoice, Partner, Payment
from integrations.services.leases import lease_acquire
from integrations.services.sync import lease_name
from tests.sync.helpers import truth_snapshot

pytestmark = pytest.mark.django_db


@pytest.fixture
def connection(unprobed_connection, halo_sandbox):
    """Faults and request counts here are the sync's own: the first sync skips the shape probe
    (which would meet the faults first and add its requests)."""
    return unprobed_connection(halo_sandbox)


def _call(*args) -> tuple[str, str]:
    out, err = StringIO(), StringIO()
    call_command(*args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def _last_line(text: str) -> str:
    return text.strip().splitlines()[-1]


def test_add_connection_creates_partner_connection_and_schedule(halo_sandbox):
    out, _ = _call(
        "add_connection",
        "--partner",
        "New MSP",
        "--name",
        "Main",
        "--url",
        halo_sandbox.url,
        "--client-id",
        SANDBOX_CLIENT_ID,
        "--client-secret",
        SANDBOX_CLIENT_SECRET,
        "--tenant",
        "",
    )
    connection = Connection.objects.get(pk=int(_last_line(out)))
    assert connection.partner.name == "New MSP" and connection.name == "Main"
    assert connection.client_secret == SANDBOX_CLIENT_SECRET
    assert connection.halopsa_version == "2.130.1"
    assert Schedule.objects.filter(name=f"sync-connection-{connection.pk}").exists()
    # The partner is reused for a second connection.
    out, _ = _call(
        "add_connection",
        "--partner",
        "New MSP",
        "--name",
        "Second",
        "--url",
        halo_sandbox.url,
        "--client-id",
        "x",
        "--client-secret",
        "y",
    )
    assert Partner.objects.filter(name="New MSP").count() == 1
    assert Connection.objects.get(pk=int(_last_line(out))).partner_id == connection.partner_id


def test_add_connection_refuses_bad_input_clearly(db):
    def add(url: str) -> tuple[str, str]:
        args = ["--partner", "P", "--name", "N", "--url", url, "--client-id", "a", "--client-secret", "b"]
        return _call("add_connection", *args)

    with pytest.raises(CommandError, match="Enter a valid URL"):
        add("not a url")
    add("https://example.halopsa.com")
    with pytest.raises(CommandError, match="already has a connection named"):
        add("https://example.halopsa.com")


def test_add_connection_refuses_a_second_connection_to_the_same_halopsa(db):
    _call(
        "add_connection",
        "--partner",
        "P",
        "--name",
        "N",
        "--url",
        "https://acme.halopsa.com",
        "--client-id",
        "a",
        "--client-secret",
        "b",
    )
    with pytest.raises(CommandError, match="already have a connection to this HaloPSA with this client ID: “N”"):
        _call(
            "add_connection",
            "--partner",
            "P",
            "--name",
            "Twin",
            "--url",
            "https://ACME.halopsa.com/",
            "--client-id",
            "a",
            "--client-secret",
            "b",
        )
    assert Connection.objects.count() == 1


def test_add_connection_refuses_urls_the_portal_does_not_call(db, settings):
    settings.HALOPSA_ALLOW_PRIVATE_NETWORKS = False
    with pytest.raises(CommandError, match="must start with https://"):
        _call(
            "add_connection",
            "--partner",
            "P",
            "--name",
            "N",
            "--url",
            "http://acme.halopsa.com",
            "--client-id",
            "a",
            "--client-secret",
            "b",
        )
    with pytest.raises(CommandError, match="must not contain a user name or password"):
        _call(
            "add_connection",
            "--partner",
            "P",
            "--name",
            "N",
            "--url",
            "https://u:p@acme.halopsa.com",
            "--client-id",
            "a",
            "--client-secret",
            "b",
        )
    assert not Connection.objects.exists()


def test_add_connection_never_fails_because_halopsa_is_unreachable(db):
    out, _ = _call(
        "add_connection",
        "--partner",
        "P",
        "--name",
        "Offline",
        "--url",
        "https://127.0.0.1:9",
        "--client-id",
        "a",
        "--client-secret",
        "b",
    )
    connection = Connection.objects.get(pk=int(_last_line(out)))
    assert connection.halopsa_version == ""
    assert "not detected" in out


def test_sync_connection_prints_json_summary(connection, halo_sandbox):
    out, err = _call("sync_connection", str(connection.pk), "--full")
    summary = json.loads(_last_line(out))
    assert list(summary) == ["run_id", "state", "api_requests", "created", "updated", "unchanged", "failed"]
    assert summary["state"] == "succeeded" and summary["created"] > 0 and summary["failed"] == 0
    assert summary["api_requests"] == halo_sandbox.count_requests()
    # Progress goes to stderr, step by step: no line's total grows while its step runs.
    steps = re.findall(r"Step (\d) of (\d): ([a-z ]+), ([\d,]+)(?: of ([\d,]+))?", err)
    assert steps and {int(n) for _, n, _, _, _ in steps} == {int(steps[0][1])}
    totals: dict[str, set[str]] = {}
    for _, _, phase, _, total in steps:
        totals.setdefault(phase, set()).add(total)
    assert all(len(seen) == 1 for seen in totals.values()), totals
    assert "invoices" in totals
    out, _ = _call("sync_connection", str(connection.pk))
    again = json.loads(_last_line(out))
    assert again["run_id"] != summary["run_id"]
    # Three lists, plus once per list the check whether its date filter is honoured (nothing probed).
    assert (again["created"], again["updated"]) == (0, 0) and again["api_requests"] == 3 + 3
    out, _ = _call("sync_connection", str(connection.pk))
    assert json.loads(_last_line(out))["api_requests"] == 3
    out, _ = _call("sync_connection", str(connection.pk), "--entity", "customers")
    assert json.loads(_last_line(out))["state"] == "succeeded"


def test_sync_connection_exits_nonzero_when_the_run_fails(connection, settings):
    settings.HALOPSA_SYNC_LEASE_WAIT = 0
    lease_acquire(lease_name(connection.pk), 60)
    out = StringIO()
    with pytest.raises(SystemExit) as exit_info:
        call_command("sync_connection", str(connection.pk), stdout=out, stderr=StringIO())
    assert exit_info.value.code == 1
    assert json.loads(_last_line(out.getvalue()))["state"] == "failed"


def test_sync_connection_partial(connection, halo_sandbox):
    halo_sandbox.add_fault("malformed_record", path="/api/Invoice", method="GET", count=1)
    out, _ = _call("sync_connection", str(connection.pk), "--full")
    summary = json.loads(_last_line(out))
    assert summary["state"] == "partial" and summary["failed"] == 1


def test_sync_connection_unknown_id(db):
    with pytest.raises(CommandError, match="does not exist"):
        _call("sync_connection", "999999")


def test_export_connection_shape_and_values(connection, halo_sandbox):
    _call("sync_connection", str(connection.pk), "--full")
    invoice = Invoice.objects.get(connection=connection, halopsa_id=1)
    Payment.objects.create(
        invoice=invoice,
        connection=connection,
        source="platform",
        amount=Decimal("12.50"),
        paid_on="2026-11-01",
        reference="SP-EXPORT",
    )
    out, _ = _call("export_connection", str(connection.pk))
    data = json.loads(out)
    assert list(data) == ["customers", "invoices"]
    customer_keys = ["id", "halopsa_id", "name", "archived", "deleted_in_halopsa", "billing_contacts"]
    assert all(list(c) == customer_keys for c in data["customers"])
    unknown = [c for c in data["customers"] if c["halopsa_id"] is None]
    assert unknown == [
        {
            "id": Customer.objects.get(connection=connection, is_unknown=True).pk,
            "halopsa_id": None,
            "name": "unknown",
            "archived": False,
            "deleted_in_halopsa": False,
            "billing_contacts": [],
        }
    ]
    acme = next(c for c in data["customers"] if c["halopsa_id"] == 1)
    assert acme["billing_contacts"] == [
        {"name": "Alice Moreno", "email": "accounts@acmedental.example"},
        {"name": "Dana Whitfield", "email": "dana.whitfield@acmedentalgroup.example"},
    ]
    invoice_keys = [
        "id",
        "halopsa_id",
        "number",
        "customer_name",
        "customer_halopsa_id",
        "invoice_date",
        "due_date",
        "currency",
        "total",
        "tax",
        "amount_paid",
        "balance",
        "status",
        "archived",
        "deleted_in_halopsa",
        "pdf_sha256",
        "lines",
        "payments",
    ]
    assert all(list(i) == invoice_keys for i in data["invoices"])
    truth = truth_snapshot(halo_sandbox)["invoices"]
    for row in data["invoices"]:
        expected = truth[row["halopsa_id"]]
        assert row["total"] == str(expected["total"]) and row["balance"] == str(expected["balance"])
        assert row["invoice_date"] == expected["invoice_date"] and len(row["invoice_date"]) == 10
        assert all(
            list(line) == ["halopsa_id", "description", "quantity", "unit_price", "net_amount", "tax_amount"]
            for line in row["lines"]
        )
        assert row["pdf_sha256"] and len(row["pdf_sha256"]) == 64
    first = next(i for i in data["invoices"] if i["halopsa_id"] == 1)
    assert first["id"] == invoice.pk
    assert first["lines"][0]["quantity"].count(".") == 1 and first["total"].split(".")[1].__len__() == 2
    platform = next(p for p in first["payments"] if p["reference"] == "SP-EXPORT")
    assert platform == {
        "id": platform["id"],
        "halopsa_id": None,
        "amount": "12.50",
        "date": "2026-11-01",
        "source": "platform",
        "reference": "SP-EXPORT",
    }
    no_customer = next(i for i in data["invoices"] if i["halopsa_id"] == 6)
    assert (no_customer["customer_name"], no_customer["customer_halopsa_id"]) == ("unknown", None)
    partial = next(i for i in data["invoices"] if i["halopsa_id"] == 2)
    assert {p["source"] for p in partial["payments"]} == {"halopsa"} and all(
        p["halopsa_id"] for p in partial["payments"]
    )


def test_export_query_count_does_not_grow_with_rows(partner, make_connection, halo_sandbox_factory, settings):
    from tests.sync.helpers import capture_queries

    settings.HALOPSA_PDF_BATCH = 0
    counts = []
    for size in (20, 120):
        srv = halo_sandbox_factory(dataset={"customers": 5, "contacts": 10, "invoices": size, "max_lines": 3})
        connection = make_connection(partner, srv, name=f"c{size}")
        _call("sync_connection", str(connection.pk), "--full")
        with capture_queries() as queries:
            json.loads(_call("export_connection", str(connection.pk))[0])
        counts.append(len(queries))
    assert counts[0] == counts[1] <= 12


def test_ensure_schedules_is_idempotent(partner, make_connection):
    enabled = make_connection(partner, name="on")
    disabled = make_connection(partner, name="off", enabled=False)
    Schedule.objects.create(
        name="sync-connection-999999", func="integrations.tasks.sync.sync_scheduled_task", args="(999999,)"
    )
    out, _ = _call("ensure_schedules")
    _call("ensure_schedules")
    names = set(Schedule.objects.filter(name__startswith="sync-connection-").values_list("name", flat=True))
    assert names == {f"sync-connection-{enabled.pk}"}
    assert f"sync-connection-{disabled.pk}" not in names
    assert "1 ensured" in out


def test_ensure_schedules_collapses_duplicate_rows(partner, make_connection):
    """django-q2's Schedule.name is not unique, so racing workers (or an older version) can leave two
    rows of one name: ensure_schedules keeps the oldest of each and deletes the rest instead of
    failing with MultipleObjectsReturned."""
    connection = make_connection(partner, name="on")
    sync_name = f"sync-connection-{connection.pk}"
    oldest = {}
    for name, func in (
        (sync_name, "integrations.tasks.sync.sync_scheduled_task"),
        ("push-sweep", "integrations.tasks.push.push_sweep_task"),
        ("webhook-sweep", "integrations.tasks.webhooks.webhook_sweep_task"),
    ):
        Schedule.objects.filter(name=name).delete()
        oldest[name] = Schedule.objects.create(name=name, func=func).pk
        Schedule.objects.create(name=name, func=func)

    _call("ensure_schedules")

    for name, pk in oldest.items():
        assert list(Schedule.objects.filter(name=name).values_list("pk", flat=True)) == [pk]
    assert Schedule.objects.get(name=sync_name).schedule_type == Schedule.HOURLY  # updated, as before
    assert Schedule.objects.get(name="push-sweep").minutes == 1
