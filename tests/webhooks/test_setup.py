"""Webhook set-up (API subscription, manual instructions), version detection and health."""
from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from integrations.models import AuditEvent, Connection, SyncRun, WebhookEvent, parse_version
from integrations.services.webhooks import (
    SUBSCRIBED_EVENTS,
    WebhookError,
    webhook_health,
    webhook_setup_instructions,
    webhook_subscription_create,
)
from tests.webhooks.conftest import webhook_path

pytestmark = pytest.mark.django_db


class TestVersion:
    @pytest.mark.parametrize(("text", "expected"), [
        ("2.122.1", (2, 122, 1)),
        ("v2.126.32", (2, 126, 32)),
        ("V2.81.18", (2, 81, 18)),
        (" 2.135.4 ", (2, 135, 4)),
        ("", None),
        ("garbage", None),
    ])
    def test_parse_version(self, text, expected):
        assert parse_version(text) == expected

    def test_comparison_is_numeric(self):
        assert parse_version("2.99") < parse_version("2.122.1")
        assert parse_version("2.99.0") < parse_version("2.122.1") < parse_version("2.122.2") < parse_version("2.130")

    @pytest.mark.parametrize(("version", "realtime"), [
        ("2.122.1", True), ("v2.126.32", True), ("3.0", True), ("2.130.1", True),
        ("2.122.0", False), ("2.99", False), ("2.99.0", False), ("v2.81.18", False),
        ("", False), ("garbage", False), ("unknown", False),
    ])
    def test_is_realtime(self, make_connection, partner, version, realtime):
        assert make_connection(partner, halopsa_version=version).is_realtime is realtime


class TestSubscription:
    @pytest.fixture(autouse=True)
    def _site(self, settings):
        settings.SITE_URL = "https://portal.example.com"

    def test_registers_the_webhook_in_halopsa(self, halo_sandbox, make_connection, partner, partner_user):
        conn = make_connection(partner, halo_sandbox, halopsa_version="2.130.1")
        result = webhook_subscription_create(connection=conn, user=partner_user)
        [hook] = halo_sandbox.store.list_webhooks()
        assert hook["url"] == "https://portal.example.com" + webhook_path(conn)
        assert hook["authentication_type"] == 1
        assert (hook["basic_username"], hook["basic_password"]) == (conn.webhook_username, conn.webhook_password)
        assert set(hook["events"]) == set(SUBSCRIBED_EVENTS)
        assert {"invoice updated", "payment created", "client created", "invoice deleted"} <= set(hook["events"])
        conn.refresh_from_db()
        assert conn.webhook_subscription_id == hook["id"] == result["id"]
        assert "basic_password" not in result
        audit = AuditEvent.objects.get(action="webhook.subscribe")
        assert audit.user == partner_user and audit.partner == partner

    def test_second_call_updates_instead_of_duplicating(self, halo_sandbox, make_connection, partner, partner_user):
        conn = make_connection(partner, halo_sandbox, halopsa_version="2.130.1")
        webhook_subscription_create(connection=conn, user=partner_user)
        Connection.objects.filter(pk=conn.pk).update(webhook_subscription_id="")  # lost our id: found by URL
        conn.refresh_from_db()
        webhook_subscription_create(connection=conn, user=partner_user)
        assert len(halo_sandbox.store.list_webhooks()) == 1

    @pytest.mark.parametrize(("version", "message"), [("", "Test the connection first"), ("2.99.0", "older than 2.122.1")])
    def test_refused_without_real_time(self, halo_sandbox, make_connection, partner, partner_user, version, message):
        conn = make_connection(partner, halo_sandbox, halopsa_version=version)
        with pytest.raises(WebhookError, match=message):
            webhook_subscription_create(connection=conn, user=partner_user)
        assert halo_sandbox.store.list_webhooks() == []

    def test_hmac_connection_registers_a_signed_webhook(self, halo_sandbox, make_connection, partner, partner_user):
        conn = make_connection(partner, halo_sandbox, halopsa_version="2.130.1", webhook_hmac_secret="hmac-key-123")
        webhook_subscription_create(connection=conn, user=partner_user)
        [hook] = halo_sandbox.store.list_webhooks()
        assert hook["authentication_type"] == 3
        assert hook["authentication_header"] == "Token"
        assert hook["basic_password"] == "hmac-key-123"
        conn.refresh_from_db()
        assert conn.webhook_password == "hmac-key-123"


def test_setup_instructions(make_connection, partner, settings):
    settings.SITE_URL = "https://portal.example.com"
    conn = make_connection(partner, halopsa_version="2.130.1")
    info = webhook_setup_instructions(conn)
    assert info["url"] == f"https://portal.example.com/hooks/halo/{conn.webhook_key}/"
    assert (info["username"], info["password"]) == (conn.webhook_username, conn.webhook_password)
    assert info["events"] == list(SUBSCRIBED_EVENTS)
    assert info["mode"] == "real time" and info["realtime"] is True
    assert info["batching"] == "off" and info["hmac_header"] == ""
    assert any(info["url"] in step for step in info["steps"])
    assert any("batching off" in step for step in info["steps"])
    old = webhook_setup_instructions(make_connection(partner, name="old", halopsa_version="2.99"))
    assert old["mode"] == "hourly" and old["can_create_subscription"] is False


class TestHealth:
    def test_counts_events_and_what_the_polls_fixed(self, make_connection, partner):
        conn = make_connection(partner, halopsa_version="2.130.1")
        now = timezone.now()
        for n, state in enumerate(["processed", "processed", "failed", "ignored"]):
            WebhookEvent.objects.create(connection=conn, dedupe_key=f"k{n}", entity="invoice", object_id=n + 1,
                                        state=state, received_at=now - timedelta(minutes=n))
        WebhookEvent.objects.create(connection=conn, dedupe_key="old", state="processed", received_at=now - timedelta(days=2))
        SyncRun.objects.create(connection=conn, trigger="schedule", scope="incremental", state="succeeded",
                               queued_at=now - timedelta(hours=2), fixed_by_poll=1)
        SyncRun.objects.create(connection=conn, trigger="schedule", scope="incremental", state="succeeded",
                               queued_at=now - timedelta(hours=1), fixed_by_poll=3)
        SyncRun.objects.create(connection=conn, trigger="webhook", scope="invoice", state="succeeded", queued_at=now)
        health = webhook_health(conn, now=now)
        assert health["events_24h"] == {"received": 0, "processing": 0, "processed": 2, "ignored": 1, "failed": 1}
        assert health["events_24h_total"] == 4
        assert health["last_event"]["object_id"] == 1
        assert health["fixed_by_last_poll"] == 3
        assert health["fixed_by_polls_24h"] == 4
        assert [poll["fixed_by_poll"] for poll in health["recent_polls"]] == [3, 1]
        assert health["healthy"] is False
        assert any("missed" in warning for warning in health["warnings"])
        assert any("failed" in warning for warning in health["warnings"])

    def test_quiet_and_clean_real_time_connection(self, make_connection, partner):
        conn = make_connection(partner, halopsa_version="2.130.1")
        WebhookEvent.objects.create(connection=conn, dedupe_key="a", state="processed")
        SyncRun.objects.create(connection=conn, trigger="schedule", scope="incremental", state="succeeded")
        health = webhook_health(conn)
        assert health["healthy"] is True and health["warnings"] == []

    def test_real_time_connection_without_any_webhook_warns(self, make_connection, partner):
        health = webhook_health(make_connection(partner, halopsa_version="2.130.1"))
        assert health["last_event_at"] is None
        assert any("No webhook received" in warning for warning in health["warnings"])

    def test_hourly_connection_has_no_webhook_warnings(self, make_connection, partner):
        health = webhook_health(make_connection(partner, halopsa_version="2.99"))
        assert health["mode"] == "hourly" and health["warnings"] == []
