"""End to end: the sandbox HaloPSA sends real webhooks to the portal running in a live server.

The portal processes each event inline (Q_CLUSTER sync=True in the test settings), in the live
server's request thread, by re-fetching the record from the sandbox's API. So once the sandbox has
delivered everything (`wait_for_webhooks`), the database shows the result.
"""

from __future__ import annotations

import json
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from decimal import Decimal

import pytest
from django.core.management import call_command

from halosandbox.shapes import WEBHOOK_EVENTNOS
from integrations.models import (
    AuditEvent,
    Contact,
    Customer,
    Invoice,
    Payment,
    SyncRun,
    WebhookEvent,
)
from integrations.selectors import webhook_health
from integrations.services.sync import sync_execute
from integrations.services.webhooks import (
    SUBSCRIBED_EVENTS,
    WebhookError,
    webhook_event_process,
    webhook_event_replay,
    webhook_events_requeue_stale,
    webhook_setup_instructions,
    webhook_subscription_create,
)
from tests.webhooks.conftest import basic_auth, delivery, hmac_signature, http_session, tick_by_hand, webhook_path

pytestmark = pytest.mark.django_db(transaction=True)


def full_sync(connection) -> SyncRun:
    run = sync_execute(
        run=SyncRun.objects.create(connection=connection, scope=SyncRun.Scope.FULL, trigger=SyncRun.Trigger.MANUAL)
    )
    assert run.state == SyncRun.State.SUCCEEDED, run.message
    return run


def delivered_ok(sandbox) -> bool:
    """Everything the sandbox sent got a 2xx on its first attempt."""
    return bool(sandbox.webhook_deliveries) and all(
        d["status"] is not None and 200 <= d["status"] < 300 and d["attempt"] == 1 for d in sandbox.webhook_deliveries
    )


def open_invoice(connection) -> Invoice:
    return (
        Invoice.objects.filter(
            connection=connection,
            status=Invoice.Status.OPEN,
            is_credit_note=False,
            balance__gt=Decimal("50"),
            deleted_in_halopsa_at__isnull=True,
        )
        .exclude(customer__is_unknown=True)
        .order_by("halopsa_id")
        .first()
    )


@pytest.fixture
def conn(webhook_live_server, halo_sandbox, make_connection, partner, partner_user):
    """A real-time connection, fully synced, with its webhook registered in the sandbox the default
    way: through the API without known eventnos, then the events ticked by hand as the page says."""
    connection = make_connection(partner, halo_sandbox, halopsa_version=halo_sandbox.version)
    full_sync(connection)
    check = webhook_subscription_create(connection=connection, user=partner_user)
    assert check["attached"] == [] and check["to_tick"] == list(SUBSCRIBED_EVENTS)
    tick_by_hand(halo_sandbox, check["subscription_id"], *check["to_tick"])
    connection.refresh_from_db()
    return connection


def post(connection, server, payload=None, *, raw=None, auth=None, signature=None):
    body = raw if raw is not None else json.dumps(payload).encode()
    headers = {"Content-Type": "application/json"}
    auth = basic_auth(connection.webhook_username, connection.webhook_password) if auth is None else auth
    if auth:
        headers["Authorization"] = auth
    if signature is not None:
        headers["Token"] = signature
    with http_session() as session:
        return session.post(server.url + webhook_path(connection), data=body, headers=headers, timeout=30)


class TestHaloPsaChangesReachThePortal:
    def test_invoice_edited(self, conn, halo_sandbox):
        invoice = open_invoice(conn)
        old_attachment = invoice.pdf_attachment_id
        new_total = invoice.total + Decimal("100.00")
        halo_sandbox.store.update_invoice(invoice.halopsa_id, amount=new_total)
        assert halo_sandbox.wait_for_webhooks(20)
        assert delivered_ok(halo_sandbox)
        invoice.refresh_from_db()
        assert invoice.total == new_total
        assert invoice.balance == new_total - invoice.amount_paid
        assert len(invoice.lines.all()) == len(
            halo_sandbox.store.invoice_json(halo_sandbox.store.get_invoice(invoice.halopsa_id))["lines"]
        )
        # The PDF is real time too: HaloPSA's new PDF is already here.
        assert invoice.pdf_attachment_id != old_attachment
        assert invoice.pdf.attachment_id == invoice.pdf_attachment_id
        event = WebhookEvent.objects.get(connection=conn, event="invoice updated", object_id=invoice.halopsa_id)
        assert event.state == WebhookEvent.State.PROCESSED and event.error == ""
        assert SyncRun.objects.filter(
            connection=conn,
            trigger=SyncRun.Trigger.WEBHOOK,
            target_halopsa_id=invoice.halopsa_id,
            state=SyncRun.State.SUCCEEDED,
        ).exists()

    def test_payment_applied_in_halopsa(self, conn, halo_sandbox):
        invoice = open_invoice(conn)
        balance, paid = invoice.balance, invoice.amount_paid
        payment = halo_sandbox.store.add_payment(invoice.halopsa_id, Decimal("12.34"))
        assert halo_sandbox.wait_for_webhooks(20)
        assert delivered_ok(halo_sandbox)
        invoice.refresh_from_db()
        assert invoice.balance == balance - Decimal("12.34")
        assert invoice.amount_paid == paid + Decimal("12.34")
        assert invoice.status == Invoice.Status.PARTIALLY_PAID
        row = Payment.objects.get(connection=conn, halopsa_id=payment["id"])
        assert (row.invoice, row.amount, row.source) == (invoice, Decimal("12.34"), "halopsa")
        states = dict(WebhookEvent.objects.filter(connection=conn).values_list("event", "state"))
        assert states == {"payment created": "processed", "invoice updated": "processed"}

    def test_customer_added(self, conn, halo_sandbox):
        client = halo_sandbox.store.create_client(
            name="Brand New Dental",
            accountsemailaddress="ap@brandnew.example",
            accountsfirstname="Ada",
            accountslastname="Payer",
        )
        assert halo_sandbox.wait_for_webhooks(20)
        assert delivered_ok(halo_sandbox)
        customer = Customer.objects.get(connection=conn, halopsa_id=client["id"])
        assert customer.name == "Brand New Dental"
        assert Contact.objects.filter(customer=customer, email="ap@brandnew.example").exists()

    def test_billing_user_added(self, conn, halo_sandbox):
        customer = Customer.objects.filter(connection=conn, is_unknown=False).order_by("halopsa_id").first()
        user = halo_sandbox.store.create_user(
            client_id=customer.halopsa_id,
            firstname="Bill",
            surname="Ing",
            emailaddress="billing@new.example",
            canaccessinvoices=True,
        )
        assert halo_sandbox.wait_for_webhooks(20)
        contact = Contact.objects.get(customer=customer, halopsa_user_id=user["id"])
        assert contact.email == "billing@new.example"

    def test_invoice_deleted(self, conn, halo_sandbox):
        invoice = open_invoice(conn)
        halo_sandbox.store.delete_invoice(invoice.halopsa_id)
        assert halo_sandbox.wait_for_webhooks(20)
        assert delivered_ok(halo_sandbox)
        invoice.refresh_from_db()
        assert invoice.deleted_in_halopsa_at is not None
        assert invoice.archived_at is None  # only a person archives
        assert WebhookEvent.objects.get(connection=conn, event="invoice deleted").state == WebhookEvent.State.PROCESSED

    def test_customer_deleted(self, conn, halo_sandbox):
        customer = Customer.objects.filter(connection=conn, is_unknown=False).order_by("halopsa_id").first()
        halo_sandbox.store.delete_client(customer.halopsa_id)
        assert halo_sandbox.wait_for_webhooks(20)
        assert delivered_ok(halo_sandbox)
        customer.refresh_from_db()
        assert customer.deleted_in_halopsa_at is not None and customer.archived_at is None

    def test_billing_user_deleted(self, conn, halo_sandbox):
        contact = Contact.objects.filter(customer__connection=conn, halopsa_user_id__isnull=False).first()
        halo_sandbox.store.delete_user(contact.halopsa_user_id)
        assert halo_sandbox.wait_for_webhooks(20)
        assert delivered_ok(halo_sandbox)
        assert not Contact.objects.filter(pk=contact.pk).exists()

    def test_payment_deleted_in_halopsa(self, conn, halo_sandbox):
        invoice = open_invoice(conn)
        payment = halo_sandbox.store.add_payment(invoice.halopsa_id, Decimal("5.00"))
        assert halo_sandbox.wait_for_webhooks(20)
        balance_after_payment = Invoice.objects.get(pk=invoice.pk).balance
        halo_sandbox.store.delete_payment(payment["id"])
        assert halo_sandbox.wait_for_webhooks(20)
        invoice.refresh_from_db()
        assert invoice.balance == balance_after_payment + Decimal("5.00")
        assert WebhookEvent.objects.get(connection=conn, event="payment deleted").state == WebhookEvent.State.PROCESSED


class TestDeliveryRobustness:
    def test_duplicate_delivery_is_processed_once(self, conn, webhook_live_server):
        invoice = open_invoice(conn)
        payload = delivery("invoice updated", invoice.halopsa_id)
        first = post(conn, webhook_live_server, payload)
        second = post(conn, webhook_live_server, payload)
        assert (first.status_code, second.status_code) == (202, 200)
        assert second.json() == {"status": "duplicate"}
        assert WebhookEvent.objects.filter(connection=conn).count() == 1
        assert SyncRun.objects.filter(connection=conn, trigger=SyncRun.Trigger.WEBHOOK).count() == 1

    def test_out_of_order_and_tampered_deliveries_leave_the_current_state(
        self, conn, halo_sandbox, webhook_live_server
    ):
        invoice = open_invoice(conn)
        original = invoice.total
        halo_sandbox.store.update_invoice(invoice.halopsa_id, amount=original + Decimal("1.00"))
        halo_sandbox.store.update_invoice(invoice.halopsa_id, amount=original + Decimal("2.00"))
        assert halo_sandbox.wait_for_webhooks(20)
        current = original + Decimal("2.00")
        invoice.refresh_from_db()
        assert invoice.total == current
        # An older delivery arriving late (its body still shows the old amount, and a forged
        # balance) changes nothing: the portal re-reads the invoice from HaloPSA.
        stale = delivery("invoice updated", invoice.halopsa_id, total=str(original), amountdue="0.01", paymentstatus=2)
        assert post(conn, webhook_live_server, stale).status_code == 202
        invoice.refresh_from_db()
        assert invoice.total == current
        assert invoice.balance == current - invoice.amount_paid
        assert invoice.status == Invoice.Status.OPEN
        assert WebhookEvent.objects.get(dedupe_key=f"id:{stale['id']}").state == WebhookEvent.State.PROCESSED

    def test_event_processed_twice_syncs_once(self, conn):
        invoice = open_invoice(conn)
        event = WebhookEvent.objects.create(
            connection=conn,
            dedupe_key="manual",
            event="invoice updated",
            entity="invoice",
            object_id=invoice.halopsa_id,
        )
        assert webhook_event_process(event_id=event.pk).state == WebhookEvent.State.PROCESSED
        assert webhook_event_process(event_id=event.pk).state == WebhookEvent.State.PROCESSED
        assert SyncRun.objects.filter(connection=conn, trigger=SyncRun.Trigger.WEBHOOK).count() == 1
        assert WebhookEvent.objects.get(pk=event.pk).attempts == 1

    def test_events_for_one_record_share_one_fetch(self, conn):
        invoice = open_invoice(conn)
        events = [
            WebhookEvent.objects.create(
                connection=conn,
                dedupe_key=f"k{n}",
                event="invoice updated",
                entity="invoice",
                object_id=invoice.halopsa_id,
            )
            for n in range(3)
        ]
        webhook_event_process(event_id=events[-1].pk)
        assert set(WebhookEvent.objects.values_list("state", flat=True)) == {WebhookEvent.State.PROCESSED}
        assert SyncRun.objects.filter(connection=conn, trigger=SyncRun.Trigger.WEBHOOK).count() == 1
        for event in events[:-1]:
            webhook_event_process(event_id=event.pk)  # their own tasks find nothing left to do
        assert SyncRun.objects.filter(connection=conn, trigger=SyncRun.Trigger.WEBHOOK).count() == 1

    def test_event_of_a_worker_that_died_is_taken_over_by_the_sweep(self, conn):
        from django.utils import timezone

        invoice = open_invoice(conn)
        long_ago = timezone.now() - timedelta(hours=2)  # older than the task timeout
        event = WebhookEvent.objects.create(
            connection=conn,
            dedupe_key="dead",
            event="invoice updated",
            entity="invoice",
            object_id=invoice.halopsa_id,
            state=WebhookEvent.State.PROCESSING,
            claimed_at=long_ago,
            attempts=1,
        )
        fresh = WebhookEvent.objects.create(
            connection=conn,
            dedupe_key="busy",
            event="invoice updated",
            entity="invoice",
            object_id=invoice.halopsa_id,
            state=WebhookEvent.State.PROCESSING,
            claimed_at=timezone.now(),
            attempts=1,
        )
        assert webhook_events_requeue_stale() == 1
        assert WebhookEvent.objects.get(pk=event.pk).state == WebhookEvent.State.PROCESSED
        assert WebhookEvent.objects.get(pk=fresh.pk).state == WebhookEvent.State.PROCESSING  # still someone's

    def test_payment_event_without_invoice_id_uses_our_copy_of_the_payment(self, conn, halo_sandbox):
        payment = Payment.objects.filter(connection=conn, source="halopsa").select_related("invoice").first()
        event = WebhookEvent.objects.create(
            connection=conn,
            dedupe_key="p",
            event="payment updated",
            entity="payment",
            object_id=payment.halopsa_id,
            payload={"payment": {}},
        )
        halo_sandbox.clear_request_log()
        assert webhook_event_process(event_id=event.pk).state == WebhookEvent.State.PROCESSED
        assert halo_sandbox.count_requests(f"/api/Invoice/{payment.invoice.halopsa_id}") == 1

    def test_payment_event_for_an_unknown_invoice_is_ignored_with_a_reason(self, conn):
        event = WebhookEvent.objects.create(
            connection=conn,
            dedupe_key="p",
            event="payment created",
            entity="payment",
            object_id=999_999,
            payload={"payment": {}},
        )
        event = webhook_event_process(event_id=event.pk)
        assert event.state == WebhookEvent.State.IGNORED and "invoice is unknown" in event.error

    def test_busy_connection_puts_the_event_back_for_the_sweep(self, conn, settings):
        from integrations.services.leases import lease_acquire, lease_release
        from integrations.services.sync import lease_name
        from integrations.services.webhooks import processing as service  # where the event waits for the lease

        invoice = open_invoice(conn)
        event = WebhookEvent.objects.create(
            connection=conn, dedupe_key="busy", event="invoice updated", entity="invoice", object_id=invoice.halopsa_id
        )
        owner = lease_acquire(lease_name(conn.pk), 60)  # an hourly sync is running
        original_delays = service.LEASE_WAIT_DELAYS
        service.LEASE_WAIT_DELAYS = (0.01,)
        try:
            event = webhook_event_process(event_id=event.pk)
        finally:
            service.LEASE_WAIT_DELAYS = original_delays
            lease_release(lease_name(conn.pk), owner)
        assert event.state == WebhookEvent.State.RECEIVED and "Waiting" in event.error
        assert not SyncRun.objects.filter(connection=conn, trigger=SyncRun.Trigger.WEBHOOK).exists()
        from django_q.models import Schedule

        assert Schedule.objects.filter(name=service.SWEEP_SCHEDULE_NAME, func=service.SWEEP_TASK).exists()
        # The sweep re-queues it (inline here) once it has waited long enough.
        from datetime import timedelta

        assert service.webhook_events_requeue_stale(older_than=timedelta(0)) == 1
        assert WebhookEvent.objects.get(pk=event.pk).state == WebhookEvent.State.PROCESSED


class TestAuthenticationOnTheWire:
    def test_failures_are_401_and_store_nothing(self, conn, webhook_live_server, make_connection, other_partner):
        other = make_connection(other_partner, halopsa_version="2.130.1")
        payload = delivery("invoice updated", 1)
        for auth in (
            "",
            basic_auth(conn.webhook_username, "wrong"),
            basic_auth(other.webhook_username, other.webhook_password),
        ):
            response = post(conn, webhook_live_server, payload, auth=auth)
            assert response.status_code == 401
            assert response.json() == {"error": "authentication failed"}
            assert response.headers["WWW-Authenticate"] == 'Basic realm="syncportal"'
        assert WebhookEvent.objects.count() == 0

    def test_sandbox_with_the_wrong_password_gets_401s(self, conn, halo_sandbox):
        from integrations.models import Connection

        Connection.objects.filter(pk=conn.pk).update(webhook_password="rotated-password-not-in-halo-" + "x" * 10)
        invoice = open_invoice(conn)
        halo_sandbox.store.update_invoice(invoice.halopsa_id, amount=invoice.total + 1)
        assert halo_sandbox.wait_for_webhooks(20)
        assert {d["status"] for d in halo_sandbox.webhook_deliveries} == {401}
        assert WebhookEvent.objects.count() == 0

    def test_unknown_key_oversized_and_malformed(self, conn, webhook_live_server, settings):
        with http_session() as session:
            unknown = session.post(
                webhook_live_server.url + "/hooks/halo/00000000-0000-4000-8000-000000000000/",
                data=b"{}",
                headers={"Content-Type": "application/json"},
                timeout=10,
            )
        assert unknown.status_code == 404 and unknown.json() == {"error": "unknown webhook endpoint"}
        settings.HALOPSA_WEBHOOK_MAX_BODY = 2048
        big = post(conn, webhook_live_server, delivery(padding="x" * 5000))
        assert big.status_code == 413
        bad = post(conn, webhook_live_server, raw=b'{"event": "invoice updated",')
        assert bad.status_code == 400 and "JSON" in bad.json()["error"]
        assert WebhookEvent.objects.count() == 0


class TestSchemes:
    """Real-time sync from the sandbox's deliveries under each scheme, set up either way; a webhook
    in HaloPSA whose scheme differs from the connection's is refused."""

    @pytest.fixture
    def synced(self, webhook_live_server, halo_sandbox, make_connection, partner):
        def make(**fields):
            connection = make_connection(partner, halo_sandbox, halopsa_version=halo_sandbox.version, **fields)
            full_sync(connection)
            return connection

        return make

    def edit_an_invoice(self, connection, sandbox) -> Invoice:
        invoice = open_invoice(connection)
        sandbox.store.update_invoice(invoice.halopsa_id, amount=invoice.total + Decimal("3.00"))
        assert sandbox.wait_for_webhooks(20)
        return invoice

    @pytest.mark.parametrize("hmac_secret", ["", "hmac-" + "k" * 30])
    def test_registered_through_the_api_with_known_eventnos(
        self, synced, halo_sandbox, partner_user, settings, hmac_secret
    ):
        settings.HALOPSA_WEBHOOK_EVENTNOS = {name: WEBHOOK_EVENTNOS[name] for name in SUBSCRIBED_EVENTS}
        conn = synced(webhook_hmac_secret=hmac_secret)
        check = webhook_subscription_create(connection=conn, user=partner_user)
        assert check["complete"] is True
        invoice = self.edit_an_invoice(conn, halo_sandbox)
        assert delivered_ok(halo_sandbox)
        assert Invoice.objects.get(pk=invoice.pk).total == invoice.total + Decimal("3.00")
        assert WebhookEvent.objects.get(connection=conn).state == WebhookEvent.State.PROCESSED

    def test_hmac_set_up_by_hand(self, synced, halo_sandbox, webhook_live_server):
        conn = synced(webhook_hmac_secret="hmac-" + "m" * 30)
        setup = webhook_setup_instructions(conn)
        # What a person enters in HaloPSA from the page: type 3, the header, the secret, the events.
        halo_sandbox.add_webhook(
            setup["url"],
            authentication_type=setup["authentication_type"],
            authentication_header=setup["hmac_header"],
            basic_password=setup["hmac_secret"],
            events=setup["events"],
        )
        invoice = self.edit_an_invoice(conn, halo_sandbox)
        assert delivered_ok(halo_sandbox)
        assert Invoice.objects.get(pk=invoice.pk).total == invoice.total + Decimal("3.00")
        # Basic credentials alone, even the connection's own, do not get in; a wrong signature neither.
        body = json.dumps(delivery("invoice updated", invoice.halopsa_id)).encode()
        assert post(conn, webhook_live_server, raw=body).status_code == 401
        assert (
            post(
                conn, webhook_live_server, raw=body, auth="", signature=hmac_signature("not-the-key", body)
            ).status_code
            == 401
        )
        assert WebhookEvent.objects.filter(connection=conn).count() == 1

    def test_basic_set_up_by_hand(self, synced, halo_sandbox):
        conn = synced()
        setup = webhook_setup_instructions(conn)
        halo_sandbox.add_webhook(
            setup["url"],
            authentication_type=setup["authentication_type"],
            basic_username=setup["username"],
            basic_password=setup["password"],
            events=setup["events"],
        )
        invoice = self.edit_an_invoice(conn, halo_sandbox)
        assert delivered_ok(halo_sandbox)
        assert Invoice.objects.get(pk=invoice.pk).total == invoice.total + Decimal("3.00")

    @pytest.mark.parametrize("connection_scheme", ["hmac", "basic"])
    def test_a_webhook_with_the_other_scheme_is_refused(self, synced, halo_sandbox, connection_scheme):
        conn = synced(webhook_hmac_secret="hmac-" + "w" * 30 if connection_scheme == "hmac" else "")
        setup = webhook_setup_instructions(conn)
        if connection_scheme == "hmac":  # HaloPSA set to Basic, with the connection's Basic credentials
            fields = {
                "authentication_type": 1,
                "basic_username": conn.webhook_username,
                "basic_password": conn.webhook_password,
            }
        else:  # HaloPSA set to sign, keyed by the connection's Basic password
            fields = {
                "authentication_type": 3,
                "authentication_header": "Token",
                "basic_username": conn.webhook_username,
                "basic_password": conn.webhook_password,
            }
        halo_sandbox.add_webhook(setup["url"], events=setup["events"], **fields)
        self.edit_an_invoice(conn, halo_sandbox)
        assert halo_sandbox.webhook_deliveries
        assert {d["status"] for d in halo_sandbox.webhook_deliveries} == {401}
        assert not WebhookEvent.objects.filter(connection=conn).exists()


class TestVersionGating:
    @pytest.mark.sandbox(version="2.99.0")
    def test_old_halopsa_sends_nothing_and_posted_events_are_ignored(
        self, webhook_live_server, halo_sandbox, make_connection, partner, partner_user
    ):
        conn = make_connection(partner, halo_sandbox, halopsa_version="2.99.0")
        assert not conn.is_realtime
        with pytest.raises(WebhookError):
            webhook_subscription_create(connection=conn, user=partner_user)
        # Even a webhook registered by hand never fires on this version.
        halo_sandbox.add_webhook(
            webhook_live_server.url + webhook_path(conn),
            authentication_type=1,
            basic_username=conn.webhook_username,
            basic_password=conn.webhook_password,
            events=list(SUBSCRIBED_EVENTS),
        )
        halo_sandbox.store.create_client(name="Too Old Ltd")
        assert halo_sandbox.wait_for_webhooks(5)
        assert halo_sandbox.webhook_deliveries == []
        # A delivery that arrives anyway is kept, marked ignored, and syncs nothing.
        response = post(conn, webhook_live_server, delivery("client created", 1))
        assert response.status_code == 200 and response.json()["status"] == "ignored"
        event = WebhookEvent.objects.get(connection=conn)
        assert event.state == WebhookEvent.State.IGNORED and "2.99.0" in event.error
        assert not SyncRun.objects.filter(connection=conn).exists()


class TestPollSafetyNet:
    def scheduled_poll(self, connection) -> SyncRun:
        from integrations.tasks.sync import sync_scheduled_task

        run = SyncRun.objects.get(pk=sync_scheduled_task(connection.pk))
        assert run.state == SyncRun.State.SUCCEEDED, run.message
        return run

    def test_poll_finds_nothing_when_webhooks_work(self, conn, halo_sandbox):
        invoice = open_invoice(conn)
        halo_sandbox.store.update_invoice(invoice.halopsa_id, amount=invoice.total + Decimal("4.00"))
        assert halo_sandbox.wait_for_webhooks(20)
        assert self.scheduled_poll(conn).fixed_by_poll == 0
        health = webhook_health(conn)
        assert health["healthy"] is True and health["fixed_by_last_poll"] == 0

    def test_poll_fixes_and_reports_what_a_silent_webhook_missed(self, conn, halo_sandbox):
        for hook in halo_sandbox.store.list_webhooks():  # the webhook silently stops in HaloPSA
            halo_sandbox.store.delete_webhook(hook["id"])
        invoice = open_invoice(conn)
        halo_sandbox.store.update_invoice(invoice.halopsa_id, amount=invoice.total + Decimal("4.00"))
        assert halo_sandbox.wait_for_webhooks(5) and halo_sandbox.webhook_deliveries == []
        run = self.scheduled_poll(conn)
        assert run.fixed_by_poll >= 1
        assert Invoice.objects.get(pk=invoice.pk).total == invoice.total + Decimal("4.00")
        health = webhook_health(conn)
        assert health["fixed_by_last_poll"] == run.fixed_by_poll and health["healthy"] is False
        assert any("webhooks missed" in warning for warning in health["warnings"])


class TestConnectionTestSetsTheMode:
    @pytest.mark.parametrize(
        ("version", "realtime"), [("2.99.0", False), ("2.122.0", False), ("2.122.1", True), ("v2.126.32", True)]
    )
    def test_version_detection(self, halo_sandbox_factory, make_connection, partner, version, realtime):
        from integrations.services.connections import connection_test

        conn = make_connection(partner, halo_sandbox_factory(version=version))
        assert connection_test(connection=conn).ok
        conn.refresh_from_db()
        assert conn.halopsa_version == version
        assert conn.is_realtime is realtime
        assert webhook_setup_instructions(conn)["mode"] == ("real time" if realtime else "hourly")


class TestReplay:
    def test_failed_event_is_replayed(self, conn, halo_sandbox, partner_user):
        invoice = open_invoice(conn)
        old_total = invoice.total
        halo_sandbox.add_fault("status", status=403, path=f"/api/Invoice/{invoice.halopsa_id}", count=50)
        halo_sandbox.store.update_invoice(invoice.halopsa_id, amount=old_total + Decimal("7.00"))
        assert halo_sandbox.wait_for_webhooks(20)
        event = WebhookEvent.objects.get(connection=conn, event="invoice updated")
        assert event.state == WebhookEvent.State.FAILED
        assert "permission" in event.error.lower()  # HaloPSA's refusal, in words
        assert Invoice.objects.get(pk=invoice.pk).total == old_total
        halo_sandbox.clear_faults()
        event = webhook_event_replay(event=event, user=partner_user)
        assert event.state == WebhookEvent.State.PROCESSED
        assert Invoice.objects.get(pk=invoice.pk).total == old_total + Decimal("7.00")
        audit = AuditEvent.objects.get(action="webhook.replay")
        assert audit.user == partner_user and audit.object_id == str(event.pk)
        with pytest.raises(WebhookError, match="Only failed events"):
            webhook_event_replay(event=event, user=partner_user)


class TestBurst:
    @pytest.mark.slow
    @pytest.mark.sandbox(rate_limit=0)
    def test_500_deliveries_lose_nothing(self, conn, halo_sandbox, webhook_live_server, settings):
        settings.HALOPSA_RATE_LIMIT = 100_000  # the client's own budget: this test is about the receiver
        invoices = list(
            Invoice.objects.filter(connection=conn, deleted_in_halopsa_at__isnull=True).values_list(
                "halopsa_id", flat=True
            )[:10]
        )
        payloads = [delivery("invoice updated", invoices[n % len(invoices)]) for n in range(480)]
        payloads += payloads[:20]  # 20 HaloPSA retries of deliveries already sent

        def send(payload):
            return post(conn, webhook_live_server, payload).status_code

        with ThreadPoolExecutor(max_workers=8) as pool:
            statuses = Counter(pool.map(send, payloads))
        assert not [status for status in statuses if status >= 500]
        assert statuses[202] + statuses[200] == 500
        assert WebhookEvent.objects.filter(connection=conn).count() == 480
        dedupe_keys = {f"id:{p['id']}" for p in payloads}
        assert set(WebhookEvent.objects.values_list("dedupe_key", flat=True)) == dedupe_keys
        # With truly parallel requests (PostgreSQL) some events may find the connection's sync lease
        # busy for longer than they wait: they are parked for the sweep, never dropped.
        waiting = WebhookEvent.objects.filter(state=WebhookEvent.State.RECEIVED)
        assert all(event.error.startswith("Waiting") for event in waiting)
        webhook_events_requeue_stale(older_than=timedelta(0))
        assert set(WebhookEvent.objects.values_list("state", flat=True)) == {WebhookEvent.State.PROCESSED}


def test_send_test_webhook_command(conn, webhook_live_server, capsys):
    invoice = open_invoice(conn)
    call_command("send_test_webhook", connection=conn.pk, object_id=invoice.halopsa_id)
    out = capsys.readouterr().out
    assert "202" in out and '"accepted"' in out
    assert WebhookEvent.objects.get(connection=conn).state == WebhookEvent.State.PROCESSED
    call_command("send_test_webhook", connection=conn.pk, wrong_secret=True)
    assert "401" in capsys.readouterr().out
    assert WebhookEvent.objects.count() == 1


def test_send_test_webhook_command_on_an_hmac_connection(webhook_live_server, make_connection, partner, capsys):
    from integrations.services.webhooks import webhook_test_delivery

    conn = make_connection(partner, halopsa_version="2.130.1", webhook_hmac_secret="hmac-" + "t" * 30)
    url, headers, body = webhook_test_delivery(conn)
    assert "Authorization" not in headers and headers["Token"] == hmac_signature(conn.webhook_hmac_secret, body)
    call_command("send_test_webhook", connection=conn.pk, wrong_secret=True)
    assert "401" in capsys.readouterr().out
    call_command("send_test_webhook", connection=conn.pk)
    assert '"accepted"' in capsys.readouterr().out
    assert WebhookEvent.objects.filter(connection=conn).count() == 1
