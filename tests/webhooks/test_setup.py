"""Webhook set-up (manual instructions, API registration and its read-back check, the auth scheme),
version detection and health."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone as dt_timezone

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from halosandbox.shapes import WEBHOOK_EVENTNOS
from integrations.models import AuditEvent, Connection, SyncRun, WebhookEvent, parse_version
from integrations.selectors import webhook_health
from integrations.services.webhooks import (
    SUBSCRIBED_EVENTS,
    WebhookError,
    webhook_auth_scheme,
    webhook_auth_scheme_set,
    webhook_setup_instructions,
    webhook_subscription_create,
    webhook_subscription_outcome,
)
from tests.webhooks.conftest import tick_by_hand, webhook_path

pytestmark = pytest.mark.django_db


class TestVersion:
    @pytest.mark.parametrize(
        ("text", "expected"),
        [
            ("2.122.1", (2, 122, 1)),
            ("v2.126.32", (2, 126, 32)),
            ("V2.81.18", (2, 81, 18)),
            (" 2.135.4 ", (2, 135, 4)),
            ("", None),
            ("garbage", None),
        ],
    )
    def test_parse_version(self, text, expected):
        assert parse_version(text) == expected

    def test_comparison_is_numeric(self):
        assert parse_version("2.99") < parse_version("2.122.1")
        assert parse_version("2.99.0") < parse_version("2.122.1") < parse_version("2.122.2") < parse_version("2.130")

    @pytest.mark.parametrize(
        ("version", "realtime"),
        [
            ("2.122.1", True),
            ("v2.126.32", True),
            ("3.0", True),
            ("2.130.1", True),
            ("2.122.0", False),
            ("2.99", False),
            ("2.99.0", False),
            ("v2.81.18", False),
            ("", False),
            ("garbage", False),
            ("unknown", False),
        ],
    )
    def test_is_realtime(self, make_connection, partner, version, realtime):
        assert make_connection(partner, halopsa_version=version).is_realtime is realtime


def sandbox_eventnos(*names: str) -> dict[str, int]:
    """HALOPSA_WEBHOOK_EVENTNOS as an operator who learned the (sandbox's) numbers would set it."""
    return {name: WEBHOOK_EVENTNOS[name] for name in (names or SUBSCRIBED_EVENTS)}


def attached_names(hook: dict) -> list[str]:
    return [event["name"] for event in hook["events"]]


class TestSubscription:
    @pytest.fixture(autouse=True)
    def _site(self, settings):
        settings.SITE_URL = "https://portal.example.com"

    def test_without_known_eventnos_nothing_is_attached_and_everything_is_left_to_tick(
        self, halo_sandbox, make_connection, partner, partner_user, settings
    ):
        # The default: HaloPSA's numbers are unknown (docs/halopsa-facts.md §11.4).
        settings.HALOPSA_WEBHOOK_EVENTNOS = {}
        conn = make_connection(partner, halo_sandbox, halopsa_version="2.130.1")
        check = webhook_subscription_create(connection=conn, user=partner_user)
        [hook] = halo_sandbox.store.list_webhooks()
        assert hook["url"] == "https://portal.example.com" + webhook_path(conn)
        assert hook["authentication_type"] == 1 and hook["active"] is True
        assert (hook["basic_username"], hook["basic_password"]) == (conn.webhook_username, conn.webhook_password)
        assert hook["events"] == []
        assert check["verified"] is True and check["events_listed"] is True
        assert check["attached"] == [] and check["to_tick"] == list(SUBSCRIBED_EVENTS)
        assert check["problems"] == [] and check["complete"] is False
        complete, outcome = webhook_subscription_outcome(check)
        assert complete is False
        assert "0 of 12 events attached" in outcome and "Tick by hand in HaloPSA: invoice created" in outcome
        conn.refresh_from_db()
        assert conn.webhook_subscription_id == hook["id"] == check["subscription_id"]
        assert conn.webhook_subscription_check == check
        assert conn.webhook_password not in json.dumps(check)
        audit = AuditEvent.objects.get(action="webhook.subscribe")
        assert audit.user == partner_user and audit.partner == partner
        assert audit.details["to_tick"] == list(SUBSCRIBED_EVENTS)

    def test_known_eventnos_are_attached_as_objects_and_confirmed(
        self, halo_sandbox, make_connection, partner, partner_user, settings
    ):
        settings.HALOPSA_WEBHOOK_EVENTNOS = sandbox_eventnos()
        conn = make_connection(partner, halo_sandbox, halopsa_version="2.130.1")
        check = webhook_subscription_create(connection=conn, user=partner_user)
        [hook] = halo_sandbox.store.list_webhooks()
        assert attached_names(hook) == list(SUBSCRIBED_EVENTS)
        assert [event["eventno"] for event in hook["events"]] == [WEBHOOK_EVENTNOS[n] for n in SUBSCRIBED_EVENTS]
        assert check["attached"] == list(SUBSCRIBED_EVENTS) and check["to_tick"] == []
        assert webhook_subscription_outcome(check) == (
            True,
            "Webhook registered in HaloPSA and read back: 12 of 12 events attached.",
        )
        # The check really read the webhook back.
        assert halo_sandbox.count_requests(f"/api/Webhook/{hook['id']}", "GET") == 1

    def test_an_eventno_halopsa_does_not_have_is_reported_as_not_attached(
        self, halo_sandbox, make_connection, partner, partner_user, settings
    ):
        # a wrong guess: the sandbox drops it
        settings.HALOPSA_WEBHOOK_EVENTNOS = {
            **sandbox_eventnos("invoice created", "client updated"),
            "invoice updated": 61,
        }
        conn = make_connection(partner, halo_sandbox, halopsa_version="2.130.1")
        check = webhook_subscription_create(connection=conn, user=partner_user)
        [hook] = halo_sandbox.store.list_webhooks()
        assert attached_names(hook) == ["invoice created", "client updated"]
        assert check["attached"] == ["invoice created", "client updated"]
        assert "invoice updated" in check["to_tick"] and len(check["to_tick"]) == 10
        assert check["complete"] is False

    def test_update_keeps_what_a_person_ticked_and_adds_the_known_ones(
        self, halo_sandbox, make_connection, partner, partner_user, settings
    ):
        settings.HALOPSA_WEBHOOK_EVENTNOS = {}
        conn = make_connection(partner, halo_sandbox, halopsa_version="2.130.1")
        webhook_subscription_create(connection=conn, user=partner_user)
        [hook] = halo_sandbox.store.list_webhooks()
        tick_by_hand(halo_sandbox, hook["id"], "client updated", "user updated")
        # Lost our id meanwhile: found again by URL, updated rather than duplicated.
        Connection.objects.filter(pk=conn.pk).update(webhook_subscription_id="")
        conn.refresh_from_db()
        settings.HALOPSA_WEBHOOK_EVENTNOS = sandbox_eventnos("invoice updated", "client updated")
        check = webhook_subscription_create(connection=conn, user=partner_user)
        [hook] = halo_sandbox.store.list_webhooks()
        assert attached_names(hook) == ["client updated", "user updated", "invoice updated"]
        assert check["attached"] == ["invoice updated", "client updated"]
        assert check["other_events"] == ["user updated"]  # attached, but its number is not configured
        assert "user updated" in check["to_tick"]  # the portal cannot confirm it, so it does not claim it
        conn.refresh_from_db()
        assert conn.webhook_subscription_id == hook["id"]

    def test_update_without_known_eventnos_keeps_the_ticked_events(
        self, halo_sandbox, make_connection, partner, partner_user, settings
    ):
        settings.HALOPSA_WEBHOOK_EVENTNOS = {}
        conn = make_connection(partner, halo_sandbox, halopsa_version="2.130.1")
        webhook_subscription_create(connection=conn, user=partner_user)
        [hook] = halo_sandbox.store.list_webhooks()
        tick_by_hand(halo_sandbox, hook["id"], "invoice updated")
        check = webhook_subscription_create(connection=conn, user=partner_user)  # `events` left out of the update
        assert [attached_names(hook) for hook in halo_sandbox.store.list_webhooks()] == [["invoice updated"]]
        assert check["other_events"] == ["invoice updated"] and check["attached"] == []

    def test_a_configured_event_the_portal_does_not_subscribe_to_is_refused(
        self, halo_sandbox, make_connection, partner, partner_user, settings
    ):
        settings.HALOPSA_WEBHOOK_EVENTNOS = {"invoice paid": 5}
        conn = make_connection(partner, halo_sandbox, halopsa_version="2.130.1")
        with pytest.raises(WebhookError, match=r"'invoice paid'.*not subscribe to"):
            webhook_subscription_create(connection=conn, user=partner_user)
        assert halo_sandbox.store.list_webhooks() == []

    def test_a_webhook_that_cannot_be_read_back_is_not_called_registered(
        self, halo_sandbox, make_connection, partner, partner_user, settings
    ):
        settings.HALOPSA_WEBHOOK_EVENTNOS = sandbox_eventnos()
        conn = make_connection(partner, halo_sandbox, halopsa_version="2.130.1")
        halo_sandbox.add_fault("status", status=403, path="/api/Webhook/", method="GET", count=1)
        check = webhook_subscription_create(connection=conn, user=partner_user)
        assert len(halo_sandbox.store.list_webhooks()) == 1  # HaloPSA took it, but the portal cannot tell
        assert check["verified"] is False and check["complete"] is False
        assert check["attached"] == [] and check["to_tick"] == list(SUBSCRIBED_EVENTS)
        assert "could not be read back" in check["error"]
        complete, outcome = webhook_subscription_outcome(check)
        assert complete is False and "not confirmed" in outcome and "registered" not in outcome

    @pytest.mark.parametrize(
        ("version", "message"), [("", "Test the connection first"), ("2.99.0", "older than 2.122.1")]
    )
    def test_refused_without_real_time(self, halo_sandbox, make_connection, partner, partner_user, version, message):
        conn = make_connection(partner, halo_sandbox, halopsa_version=version)
        with pytest.raises(WebhookError, match=message):
            webhook_subscription_create(connection=conn, user=partner_user)
        assert halo_sandbox.store.list_webhooks() == []

    def test_hmac_connection_registers_a_signed_webhook_without_basic(
        self, halo_sandbox, make_connection, partner, partner_user, settings
    ):
        settings.HALOPSA_WEBHOOK_EVENTNOS = sandbox_eventnos()
        conn = make_connection(partner, halo_sandbox, halopsa_version="2.130.1", webhook_hmac_secret="hmac-key-123")
        password = conn.webhook_password
        check = webhook_subscription_create(connection=conn, user=partner_user)
        [hook] = halo_sandbox.store.list_webhooks()
        assert hook["authentication_type"] == 3
        assert hook["authentication_header"] == "Token"
        assert (hook["basic_username"], hook["basic_password"]) == ("", "hmac-key-123")
        assert check["complete"] is True
        conn.refresh_from_db()
        assert conn.webhook_password == password  # the Basic password is no longer borrowed for HMAC
        assert "hmac-key-123" not in json.dumps(check)


class FakeHaloClient:
    """Answers GET /Webhook/{id} with a given body: for answers the sandbox never gives."""

    def __init__(self, webhook):
        self.webhook = webhook

    def get_webhook(self, webhook_id):
        return self.webhook


@pytest.mark.parametrize(
    ("changes", "problem"),
    [
        ({"url": "https://elsewhere.example.com/hook"}, "Its URL in HaloPSA is 'https://elsewhere.example.com/hook'"),
        ({"authentication_type": 0}, "authentication type in HaloPSA is 0, not 1 (Basic)"),
        ({"active": False}, "not active"),
        ({"disabled": True}, "not active"),
        ({"events": None}, "did not list the webhook's events"),
    ],
)
def test_the_check_reports_what_halopsa_holds(make_connection, partner, settings, changes, problem):
    from integrations.services.webhooks import _subscription_check, webhook_endpoint_url

    conn = make_connection(partner, halopsa_version="2.130.1")
    webhook = {
        "id": "0f0f0f0f-1111-2222-3333-444455556666",
        "url": webhook_endpoint_url(conn),
        "authentication_type": 1,
        "active": True,
        "events": [{"eventno": str(number)} for number in WEBHOOK_EVENTNOS.values()],
    }
    complete = _subscription_check(FakeHaloClient(webhook), conn, webhook["id"], sandbox_eventnos())
    assert complete["complete"] is True and complete["problems"] == []  # the same webhook, unchanged
    check = _subscription_check(FakeHaloClient({**webhook, **changes}), conn, webhook["id"], sandbox_eventnos())
    assert check["verified"] is True and check["complete"] is False
    assert any(problem in text for text in check["problems"]), check["problems"]


def test_the_check_never_puts_an_odd_id_into_a_url(make_connection, partner):
    from integrations.services.webhooks import _subscription_check

    conn = make_connection(partner, halopsa_version="2.130.1")
    check = _subscription_check(None, conn, "../Invoice/1", {})
    assert check["verified"] is False and "id" in check["error"]


class TestAuthScheme:
    def test_switching_schemes(self, make_connection, partner, partner_user):
        conn = make_connection(partner, halopsa_version="2.130.1", webhook_subscription_check={"complete": True})
        assert webhook_auth_scheme(conn) == "basic"
        webhook_auth_scheme_set(connection=conn, scheme="hmac", user=partner_user)
        conn.refresh_from_db()
        secret = conn.webhook_hmac_secret
        assert webhook_auth_scheme(conn) == "hmac" and len(secret) >= 32
        assert conn.webhook_subscription_check == {}  # HaloPSA must be changed to match
        webhook_auth_scheme_set(connection=conn, scheme="hmac", user=partner_user)  # already: unchanged
        conn.refresh_from_db()
        assert conn.webhook_hmac_secret == secret
        webhook_auth_scheme_set(connection=conn, scheme="basic", user=partner_user)
        conn.refresh_from_db()
        assert conn.webhook_hmac_secret == "" and webhook_auth_scheme(conn) == "basic"
        assert AuditEvent.objects.filter(action="webhook.auth_scheme").count() == 2
        with pytest.raises(WebhookError, match="Unknown webhook authentication"):
            webhook_auth_scheme_set(connection=conn, scheme="bearer", user=partner_user)

    def test_command(self, make_connection, partner, capsys):
        conn = make_connection(partner, halopsa_version="2.130.1")
        call_command("webhook_auth", connection=conn.pk)
        assert "authenticate with Basic" in capsys.readouterr().out
        call_command("webhook_auth", connection=conn.pk, scheme="hmac")
        out = capsys.readouterr().out
        conn.refresh_from_db()
        assert "authenticate with HMAC (HaloPSA authentication type 3)" in out and "Changed" in out
        assert conn.webhook_hmac_secret and conn.webhook_hmac_secret not in out
        with pytest.raises(CommandError, match="does not exist"):
            call_command("webhook_auth", connection=999_999)


class TestSetupInstructions:
    @pytest.fixture(autouse=True)
    def _site(self, settings):
        settings.SITE_URL = "https://portal.example.com"

    def test_basic(self, make_connection, partner):
        conn = make_connection(partner, halopsa_version="2.130.1")
        info = webhook_setup_instructions(conn)
        assert info["url"] == f"https://portal.example.com/hooks/halo/{conn.webhook_key}/"
        assert (info["scheme"], info["authentication"], info["authentication_type"]) == ("basic", "Basic", 1)
        assert (info["username"], info["password"]) == (conn.webhook_username, conn.webhook_password)
        assert info["hmac_header"] == "" and info["hmac_secret"] == ""
        assert info["events"] == list(SUBSCRIBED_EVENTS)
        assert info["mode"] == "real time" and info["realtime"] is True
        assert info["batching"] == "off"
        assert any(info["url"] in step for step in info["steps"])
        assert any("batching off" in step for step in info["steps"])
        assert any("Basic Authentication, with the username and password" in step for step in info["steps"])
        assert not any("HMAC" in step for step in info["steps"])
        assert info["subscription_check"] is None
        old = webhook_setup_instructions(make_connection(partner, name="old", halopsa_version="2.99"))
        assert old["mode"] == "hourly" and old["can_create_subscription"] is False

    def test_hmac(self, make_connection, partner, settings):
        settings.HALOPSA_WEBHOOK_HMAC_HEADER = "X-Signature"
        conn = make_connection(partner, halopsa_version="2.130.1", webhook_hmac_secret="hmac-secret-value")
        info = webhook_setup_instructions(conn)
        assert (info["scheme"], info["authentication"], info["authentication_type"]) == ("hmac", "HMAC", 3)
        assert (info["hmac_header"], info["hmac_secret"]) == ("X-Signature", "hmac-secret-value")
        assert info["username"] == "" and info["password"] == ""  # Basic is not used: not shown
        [auth_step] = [step for step in info["steps"] if step.startswith("Authentication:")]
        assert 'HMAC (authentication type 3), header "X-Signature"' in auth_step and "Basic" not in auth_step

    def test_the_last_check_is_shown_with_its_time(self, make_connection, partner):
        conn = make_connection(
            partner,
            halopsa_version="2.130.1",
            webhook_subscription_check={
                "checked_at": "2026-01-02T03:04:05+00:00",
                "verified": True,
                "events_listed": True,
                "attached": ["invoice updated"],
                "to_tick": ["invoice created"],
                "problems": [],
                "complete": False,
            },
        )
        check = webhook_setup_instructions(conn)["subscription_check"]
        assert check["checked_at"] == datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt_timezone.utc)
        assert "1 of 12 events attached" in check["outcome"]


class TestHealth:
    def test_counts_events_and_what_the_polls_fixed(self, make_connection, partner):
        conn = make_connection(partner, halopsa_version="2.130.1")
        now = timezone.now()
        for n, state in enumerate(["processed", "processed", "failed", "ignored"]):
            WebhookEvent.objects.create(
                connection=conn,
                dedupe_key=f"k{n}",
                entity="invoice",
                object_id=n + 1,
                state=state,
                received_at=now - timedelta(minutes=n),
            )
        WebhookEvent.objects.create(
            connection=conn, dedupe_key="old", state="processed", received_at=now - timedelta(days=2)
        )
        SyncRun.objects.create(
            connection=conn,
            trigger="schedule",
            scope="incremental",
            state="succeeded",
            queued_at=now - timedelta(hours=2),
            fixed_by_poll=1,
        )
        SyncRun.objects.create(
            connection=conn,
            trigger="schedule",
            scope="incremental",
            state="succeeded",
            queued_at=now - timedelta(hours=1),
            fixed_by_poll=3,
        )
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


def test_eventnos_setting_is_read_strictly():
    from django.core.exceptions import ImproperlyConfigured

    from integrations.conf import parse_webhook_eventnos as _webhook_eventnos

    assert _webhook_eventnos("") == {}
    assert _webhook_eventnos(" Invoice  Updated = 124 ,client created=45,") == {
        "invoice updated": 124,
        "client created": 45,
    }
    for bad in ("invoice updated", "invoice updated=abc", "=12", "invoice updated=-1"):
        with pytest.raises(ImproperlyConfigured, match="HALOPSA_WEBHOOK_EVENTNOS"):
            _webhook_eventnos(bad)
