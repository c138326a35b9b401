"""The webhook set-up on the connection page: the manual path first, only the scheme's secret, and
the API registration helper saying what HaloPSA showed when read back."""

from __future__ import annotations

import pytest
from django.urls import reverse

from halosandbox.shapes import WEBHOOK_EVENTNOS
from integrations.services.webhooks import SUBSCRIBED_EVENTS

pytestmark = pytest.mark.django_db


def webhook_section(client, connection) -> str:
    html = client.get(reverse("connection_detail", kwargs={"pk": connection.pk})).content.decode()
    section = html[html.index('id="webhooks"') :]
    return section[: section.index("</section>")]


@pytest.fixture
def signed_in(client, partner_user):
    client.force_login(partner_user)
    return client


def test_manual_steps_come_before_the_api_helper(signed_in, make_connection, partner):
    conn = make_connection(partner, halopsa_version="2.130.1")
    section = webhook_section(signed_in, conn)
    manual = section.index("Create the webhook in HaloPSA")
    steps = section.index("Configuration &gt; Integrations &gt; Webhooks")
    helper = section.index(reverse("connection_webhook_subscribe", kwargs={"pk": conn.pk}))
    assert manual < steps < helper
    assert "Basic Authentication, with the username and password shown here" in section
    assert conn.webhook_username in section and conn.webhook_password in section
    assert "HMAC" not in section


def test_an_hmac_connection_shows_its_secret_and_header_and_no_basic_password(signed_in, make_connection, partner):
    conn = make_connection(partner, halopsa_version="2.130.1", webhook_hmac_secret="hmac-secret-" + "s" * 24)
    html = signed_in.get(reverse("connection_detail", kwargs={"pk": conn.pk})).content.decode()
    section = webhook_section(signed_in, conn)
    assert html.count(conn.webhook_hmac_secret) == 1 and conn.webhook_hmac_secret in section
    assert conn.webhook_password not in html and conn.webhook_username not in html
    assert "HMAC (authentication type 3), header &quot;Token&quot;" in section
    assert "Basic Authentication" not in section


def test_registering_says_what_is_attached_and_what_to_tick(
    signed_in, make_connection, partner, halo_sandbox, settings
):
    settings.HALOPSA_WEBHOOK_EVENTNOS = {
        name: WEBHOOK_EVENTNOS[name] for name in ("invoice created", "invoice updated")
    }
    conn = make_connection(partner, halo_sandbox, halopsa_version="2.130.1")
    response = signed_in.post(reverse("connection_webhook_subscribe", kwargs={"pk": conn.pk}), follow=True)
    html = response.content.decode()
    to_tick = ", ".join(name for name in SUBSCRIBED_EVENTS if name not in ("invoice created", "invoice updated"))
    assert "Webhook registered in HaloPSA and read back: 2 of 12 events attached." in html  # the message
    assert f"Tick by hand in HaloPSA: {to_tick}." in html
    section = webhook_section(signed_in, conn)
    [hook] = halo_sandbox.store.list_webhooks()
    assert f"HaloPSA webhook <code>{hook['id']}</code>" in section
    assert "<dt>Attached</dt><dd>invoice created, invoice updated</dd>" in section
    assert f"<dt>Tick by hand</dt><dd>{to_tick}</dd>" in section
    assert "Update the webhook in HaloPSA" in section


def test_a_failed_registration_points_at_the_manual_steps(signed_in, make_connection, partner, halo_sandbox):
    halo_sandbox.add_fault("status", status=403, path="/api/Webhook", method="POST", count=1)
    conn = make_connection(partner, halo_sandbox, halopsa_version="2.130.1")
    html = signed_in.post(reverse("connection_webhook_subscribe", kwargs={"pk": conn.pk}), follow=True).content.decode()
    assert "Webhook not registered:" in html and "Create it by hand with the set-up steps." in html
    assert "Last registration" not in webhook_section(signed_in, conn)
