"""The receiver view: routing, authentication, limits, parsing, storing and deduplication.

These run inside a test transaction, so on-commit callbacks (the processing task) are captured,
not run: each test can count exactly what would have been enqueued.
"""

from __future__ import annotations

import json

import pytest
from django.test import RequestFactory, override_settings
from hypothesis import HealthCheck, given, settings as hsettings, strategies as st

from integrations.models import WebhookEvent
from tests.webhooks.conftest import basic_auth, delivery, hmac_signature, webhook_path

pytestmark = pytest.mark.django_db


def test_accepted_delivery_is_stored_and_queued(post_webhook, realtime_connection, django_capture_on_commit_callbacks):
    payload = delivery("invoice updated", 101, total=123.45)
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        response = post_webhook(realtime_connection, payload, HTTP_X_TRACE="abc")
    assert response.status_code == 202
    event = WebhookEvent.objects.get()
    assert response.json() == {"status": "accepted", "event_id": event.pk}
    assert (event.connection, event.entity, event.object_id, event.event) == (
        realtime_connection,
        "invoice",
        101,
        "invoice updated",
    )
    assert event.state == WebhookEvent.State.RECEIVED
    assert event.dedupe_key == f"id:{payload['id']}"
    assert len(callbacks) == 1
    # The raw payload is kept exactly (amounts as strings, never floats); credentials are not.
    assert event.payload["invoice"]["total"] == "123.45"
    assert event.headers.get("X-Trace") == "abc"
    assert not any(name.lower() == "authorization" for name in event.headers)
    assert realtime_connection.webhook_password not in json.dumps(event.headers)


@pytest.mark.parametrize(
    "case", ["missing", "wrong_password", "wrong_username", "garbled", "bearer", "no_colon", "empty_password"]
)
def test_bad_credentials_get_the_same_401_and_store_nothing(
    case, post_webhook, realtime_connection, django_capture_on_commit_callbacks
):
    conn = realtime_connection
    auth = {
        "missing": "",
        "wrong_password": basic_auth(conn.webhook_username, conn.webhook_password + "x"),
        "wrong_username": basic_auth(conn.webhook_username + "x", conn.webhook_password),
        "garbled": "Basic !!!not-base64!!!",
        "bearer": f"Bearer {conn.webhook_password}",
        "no_colon": "Basic " + __import__("base64").b64encode(conn.webhook_password.encode()).decode(),
        "empty_password": basic_auth(conn.webhook_username, ""),
    }[case]
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        response = post_webhook(conn, auth=auth)
    assert response.status_code == 401
    assert response.json() == {"error": "authentication failed"}
    assert response["WWW-Authenticate"] == 'Basic realm="syncportal"'
    assert WebhookEvent.objects.count() == 0
    assert callbacks == []


def test_other_connections_credentials_are_refused(post_webhook, make_connection, partner, other_partner):
    mine = make_connection(partner, halopsa_version="2.130.1")
    theirs = make_connection(other_partner, halopsa_version="2.130.1")
    response = post_webhook(mine, auth=basic_auth(theirs.webhook_username, theirs.webhook_password))
    assert response.status_code == 401
    assert response.json() == {"error": "authentication failed"}
    # ...and the same credentials on their own endpoint work: the test is not vacuous.
    assert post_webhook(theirs).status_code == 202
    assert list(WebhookEvent.objects.values_list("connection_id", flat=True)) == [theirs.pk]


def test_each_connection_gets_its_own_credentials(make_connection, partner):
    one = make_connection(partner, name="one")
    two = make_connection(partner, name="two")
    assert one.webhook_key != two.webhook_key
    assert one.webhook_password != two.webhook_password
    assert len(one.webhook_password) >= 32


class TestHmac:
    """An HMAC connection accepts the signature alone, as HaloPSA's type-3 webhook sends it
    (docs/halopsa-facts.md §6), and nothing else; a Basic connection accepts Basic credentials alone."""

    @pytest.fixture
    def conn(self, make_connection, partner):
        return make_connection(partner, halopsa_version="2.130.1", webhook_hmac_secret="s3cret-hmac-key")

    def test_signature_alone_passes(self, conn, post_webhook):
        body = json.dumps(delivery()).encode()
        response = post_webhook(conn, raw=body, auth="", signature=hmac_signature("s3cret-hmac-key", body))
        assert response.status_code == 202
        assert WebhookEvent.objects.get().connection == conn

    def test_basic_credentials_beside_a_valid_signature_are_not_looked_at(self, conn, post_webhook):
        for auth in (basic_auth(conn.webhook_username, conn.webhook_password), basic_auth("any", "thing")):
            body = json.dumps(delivery()).encode()
            response = post_webhook(conn, raw=body, auth=auth, signature=hmac_signature("s3cret-hmac-key", body))
            assert response.status_code == 202
        assert WebhookEvent.objects.count() == 2

    def test_basic_credentials_alone_are_refused(self, conn, post_webhook, django_capture_on_commit_callbacks):
        with django_capture_on_commit_callbacks(execute=False) as callbacks:
            response = post_webhook(conn, auth=basic_auth(conn.webhook_username, conn.webhook_password))
        assert response.status_code == 401
        assert response.json() == {"error": "authentication failed"}
        assert response["WWW-Authenticate"] == 'Basic realm="syncportal"'
        assert WebhookEvent.objects.count() == 0 and callbacks == []

    @pytest.mark.parametrize(
        "signature", [None, "", "bm90LWEtc2lnbmF0dXJl", "wrong-key", "other-body", "password-as-key", "\u00e9t\u00e9"]
    )
    def test_missing_or_wrong_signature_is_401(self, conn, post_webhook, signature):
        body = json.dumps(delivery()).encode()
        if signature == "wrong-key":
            signature = hmac_signature("another-key", body)
        elif signature == "other-body":
            signature = hmac_signature("s3cret-hmac-key", body + b" ")
        elif signature == "password-as-key":
            signature = hmac_signature(conn.webhook_password, body)
        response = post_webhook(conn, raw=body, auth="", signature=signature)
        assert response.status_code == 401
        assert response.json() == {"error": "authentication failed"}
        assert WebhookEvent.objects.count() == 0

    def test_signature_header_is_not_stored(self, conn, post_webhook):
        body = json.dumps(delivery()).encode()
        assert (
            post_webhook(conn, raw=body, auth="", signature=hmac_signature("s3cret-hmac-key", body)).status_code == 202
        )
        assert "Token" not in WebhookEvent.objects.get().headers

    @override_settings(HALOPSA_WEBHOOK_HMAC_HEADER="X-Halo-Signature")
    def test_the_header_name_is_a_setting(self, conn, post_webhook):
        body = json.dumps(delivery()).encode()
        signature = hmac_signature("s3cret-hmac-key", body)
        assert post_webhook(conn, raw=body, auth="", signature=signature).status_code == 401  # in "Token"
        body = json.dumps(delivery()).encode()
        response = post_webhook(conn, raw=body, auth="", HTTP_X_HALO_SIGNATURE=hmac_signature("s3cret-hmac-key", body))
        assert response.status_code == 202
        assert "X-Halo-Signature" not in WebhookEvent.objects.get().headers

    def test_a_basic_connection_refuses_a_signature_alone(self, post_webhook, realtime_connection):
        conn = realtime_connection
        body = json.dumps(delivery()).encode()
        for key in (conn.webhook_password, "s3cret-hmac-key"):
            response = post_webhook(conn, raw=body, auth="", signature=hmac_signature(key, body))
            assert response.status_code == 401
        assert WebhookEvent.objects.count() == 0
        # ...while its Basic credentials work, with or without a stray signature header.
        assert post_webhook(conn, raw=body, signature="garbage").status_code == 202


def test_unknown_key_is_404(post_webhook, realtime_connection):
    response = post_webhook(realtime_connection, path="/hooks/halo/00000000-0000-4000-8000-000000000000/")
    assert response.status_code == 404
    assert response.json() == {"error": "unknown webhook endpoint"}


def test_url_without_trailing_slash_works(post_webhook, realtime_connection):
    response = post_webhook(realtime_connection, path=webhook_path(realtime_connection).rstrip("/"))
    assert response.status_code == 202


def test_only_post_is_accepted(client, realtime_connection):
    response = client.get(webhook_path(realtime_connection))
    assert response.status_code == 405
    assert response["Allow"] == "POST"
    assert WebhookEvent.objects.count() == 0


def test_disabled_connection_is_410_after_authentication(post_webhook, make_connection, partner):
    conn = make_connection(partner, halopsa_version="2.130.1", enabled=False)
    assert post_webhook(conn, auth=basic_auth(conn.webhook_username, "wrong")).status_code == 401
    response = post_webhook(conn)
    assert response.status_code == 410
    assert "disabled" in response.json()["error"]
    assert WebhookEvent.objects.count() == 0


@override_settings(HALOPSA_WEBHOOK_MAX_BODY=1000)
def test_oversized_body_is_413_and_not_stored(post_webhook, realtime_connection):
    payload = delivery(padding="x" * 2000)
    response = post_webhook(realtime_connection, payload)
    assert response.status_code == 413
    assert "1000" in response.json()["error"]
    assert WebhookEvent.objects.count() == 0
    # Just under the limit is fine.
    assert post_webhook(realtime_connection, delivery(padding="x" * 300)).status_code == 202


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"{not json", "not valid JSON"),
        (b"", "not valid JSON"),
        (b"[1, 2]", "batching"),
        (b'"a string"', "JSON object"),
        (b"42", "JSON object"),
        (b'{"id": NaN}', "not valid JSON"),
        (b"\xff\xfe{}", "UTF-8"),
        (b"[" * 100_000 + b"]" * 100_000, "not valid JSON"),
    ],
)
def test_malformed_bodies_are_400_with_a_clear_error(post_webhook, realtime_connection, raw, message):
    with override_settings(HALOPSA_WEBHOOK_MAX_BODY=300_000):
        response = post_webhook(realtime_connection, raw=raw)
    assert response.status_code == 400
    assert message in response.json()["error"]
    assert WebhookEvent.objects.count() == 0


def test_same_delivery_twice_is_one_event_and_one_task(
    post_webhook, realtime_connection, django_capture_on_commit_callbacks
):
    payload = delivery("invoice updated", 7)
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        first = post_webhook(realtime_connection, payload)
        second = post_webhook(realtime_connection, payload)
    assert first.status_code == 202
    assert second.status_code == 200
    assert second.json() == {"status": "duplicate"}
    assert WebhookEvent.objects.count() == 1
    assert len(callbacks) == 1


def test_same_delivery_id_on_two_connections_is_two_events(post_webhook, make_connection, partner, other_partner):
    payload = delivery()
    a = make_connection(partner, halopsa_version="2.130.1")
    b = make_connection(other_partner, halopsa_version="2.130.1")
    assert post_webhook(a, payload).status_code == 202
    assert post_webhook(b, payload).status_code == 202
    assert WebhookEvent.objects.count() == 2


def test_without_delivery_id_the_body_hash_dedupes(post_webhook, realtime_connection):
    payload = delivery()
    del payload["id"]
    assert post_webhook(realtime_connection, payload).status_code == 202
    assert post_webhook(realtime_connection, payload).json() == {"status": "duplicate"}
    payload["object_id"] = 102
    assert post_webhook(realtime_connection, payload).status_code == 202
    keys = list(WebhookEvent.objects.values_list("dedupe_key", flat=True))
    assert len(keys) == 2 and all(key.startswith("sha256:") for key in keys)


@pytest.mark.parametrize("version", ["2.99.0", "2.122.0", "", "garbage"])
def test_old_or_unknown_version_events_are_stored_ignored(
    post_webhook, make_connection, partner, version, django_capture_on_commit_callbacks
):
    conn = make_connection(partner, halopsa_version=version)
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        response = post_webhook(conn)
    assert response.status_code == 200
    assert response.json()["status"] == "ignored"
    event = WebhookEvent.objects.get()
    assert event.state == WebhookEvent.State.IGNORED
    assert "2.122.1" in event.error and "hourly" in event.error
    assert callbacks == []


def test_paused_connection_events_are_stored_ignored(post_webhook, make_connection, partner):
    conn = make_connection(partner, halopsa_version="2.130.1", paused=True)
    assert post_webhook(conn).json()["status"] == "ignored"
    assert "paused" in WebhookEvent.objects.get().error


@pytest.mark.parametrize(
    ("event_name", "key", "entity"),
    [
        ("invoice updated", "invoice", "invoice"),
        ("payment created", "payment", "payment"),
        ("client deleted", "client", "client"),
        ("user created", "user", "user"),
        ("Payment applied to Invoice", "payment", "payment"),
        ("something changed", "invoice", "invoice"),  # falls back to the object key
    ],
)
def test_entity_comes_from_the_event_name_or_object_key(post_webhook, realtime_connection, event_name, key, entity):
    payload = delivery("invoice updated", 55)
    payload["event"] = event_name
    payload[key] = payload.pop("invoice")
    assert post_webhook(realtime_connection, payload).status_code == 202
    assert WebhookEvent.objects.get().entity == entity


def test_unhandled_event_is_stored_ignored(post_webhook, realtime_connection):
    payload = delivery("invoice updated", 5)
    payload["event"] = "ticket status changed"
    payload["ticket"] = payload.pop("invoice")
    assert post_webhook(realtime_connection, payload).json()["status"] == "ignored"
    assert "not one the portal handles" in WebhookEvent.objects.get().error


def test_event_without_record_id_is_stored_ignored(post_webhook, realtime_connection):
    payload = delivery("invoice updated", 5)
    payload["object_id"] = "abc"
    payload["invoice"] = {"invoicenumber": "INV-1"}
    assert post_webhook(realtime_connection, payload).json()["status"] == "ignored"
    assert "no record id" in WebhookEvent.objects.get().error


def test_object_id_falls_back_to_the_entity_object(post_webhook, realtime_connection):
    payload = delivery("invoice updated", 77)
    del payload["object_id"]
    post_webhook(realtime_connection, payload)
    assert WebhookEvent.objects.get().object_id == 77


@pytest.mark.parametrize(
    "raw",
    [
        rb'{"id": "a\u0000b", "event": "invoice\u0000 updated", "object_id": 5, "invoice": {"k\u0000": "v\u0000"}}',
        rb'{"id": "\ud800", "event": "invoice updated \udfff", "object_id": 5, "invoice": {"name": "\ud83d"}}',
    ],
)
def test_text_a_database_cannot_store_is_made_storable(post_webhook, realtime_connection, raw):
    # PostgreSQL refuses NUL and lone surrogates; JSON allows both as escapes.
    response = post_webhook(realtime_connection, raw=raw)
    assert response.status_code == 202
    event = WebhookEvent.objects.get()
    assert event.object_id == 5 and event.entity == "invoice"
    assert "\\u0000" not in json.dumps(event.payload) and "\\ud8" not in json.dumps(event.payload)
    assert "\x00" not in event.event + event.dedupe_key


def test_the_receiver_itself_never_calls_halopsa(
    post_webhook, halo_sandbox, make_connection, partner, django_capture_on_commit_callbacks
):
    # The answer never waits on HaloPSA: all API work happens in the queued task.
    halo_sandbox.add_fault("slow", delay=30)
    conn = make_connection(partner, halo_sandbox, halopsa_version="2.130.1")
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        response = post_webhook(conn)
    assert response.status_code == 202
    assert len(callbacks) == 1
    assert halo_sandbox.count_requests() == 0


def test_unreachable_queue_still_accepts_and_leaves_the_event_for_the_sweep(
    post_webhook, realtime_connection, monkeypatch, django_capture_on_commit_callbacks
):
    from django_q.models import Schedule

    from integrations.services.webhooks import processing as service  # where the event's task is queued

    def broken_broker(*args, **kwargs):
        raise ConnectionError("broker down")

    monkeypatch.setattr(service, "async_task", broken_broker)
    with django_capture_on_commit_callbacks(execute=True):
        response = post_webhook(realtime_connection)
    assert response.status_code == 202
    assert WebhookEvent.objects.get().state == WebhookEvent.State.RECEIVED
    assert Schedule.objects.filter(name=service.SWEEP_SCHEDULE_NAME, func=service.SWEEP_TASK).exists()


def test_responses_never_echo_secrets(post_webhook, make_connection, partner):
    conn = make_connection(partner, halopsa_version="2.130.1", webhook_hmac_secret="hmac-secret-value")
    for response in (post_webhook(conn), post_webhook(conn, raw=b"{bad"), post_webhook(conn, auth="Basic x")):
        text = response.content.decode()
        assert conn.webhook_password not in text and "hmac-secret-value" not in text


def test_error_reports_hide_the_authorization_header(realtime_connection):
    from syncportal.reporting import SecretHidingReporterFilter

    auth = basic_auth(realtime_connection.webhook_username, realtime_connection.webhook_password)
    request = RequestFactory().post(
        webhook_path(realtime_connection), data=b"{}", content_type="application/json", HTTP_AUTHORIZATION=auth
    )
    meta = SecretHidingReporterFilter().get_safe_request_meta(request)
    assert auth not in json.dumps({k: str(v) for k, v in meta.items()})


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.text(max_size=20)
    | st.decimals(allow_nan=False, allow_infinity=False, places=2),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=20,
)


@hsettings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    body=st.one_of(
        json_values.map(lambda value: json.dumps(value, default=str).encode()),
        st.dictionaries(
            st.sampled_from(["id", "event", "object_id", "invoice", "payment", "user", "client"]),
            json_values,
            max_size=6,
        ).map(lambda value: json.dumps(value, default=str).encode()),
        st.binary(max_size=200),
    )
)
def test_random_bodies_never_get_a_server_error(post_webhook, realtime_connection, body):
    response = post_webhook(realtime_connection, raw=body)
    assert response.status_code in (200, 202, 400)
