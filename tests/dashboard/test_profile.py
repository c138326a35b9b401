"""The profile page: each user sets the e-mail address incident alerts go to, or turns alerts off."""

from __future__ import annotations

import pytest
from django.core import mail
from django.urls import reverse

from integrations.models import AuditEvent, Incident, User
from integrations.services.incidents import incident_open


def test_header_links_to_the_profile_which_shows_the_current_address(alice_client, partner_user):
    partner_user.email = "alice@acme.example"
    partner_user.save()
    home = alice_client.get(reverse("home")).content.decode()
    assert f'href="{reverse("profile")}"' in home

    page = alice_client.get(reverse("profile"))

    assert page.status_code == 200
    assert 'value="alice@acme.example"' in page.content.decode()
    assert page.context["form"]["receives_alerts"].value() is True


def test_saving_a_new_address_is_recorded(alice_client, partner_user):
    response = alice_client.post(
        reverse("profile"), {"email": "Alice.Ops@ACME.Example", "receives_alerts": "on"}, follow=True
    )

    partner_user.refresh_from_db()
    assert partner_user.email == "Alice.Ops@acme.example"  # the domain is case-insensitive, the mailbox is kept
    assert partner_user.receives_alerts is True
    assert "Profile saved." in response.content.decode()
    event = AuditEvent.objects.get(action="profile.update")
    assert event.partner_id == partner_user.partner_id and "alerts to Alice.Ops@acme.example" in event.summary


@pytest.mark.parametrize(
    "data,error",
    [
        ({"email": "not-an-address", "receives_alerts": "on"}, "Enter an e-mail address such as name@example.com."),
        ({"email": "a@b", "receives_alerts": "on"}, "Enter an e-mail address such as name@example.com."),
        ({"email": "x" * 250 + "@example.com", "receives_alerts": "on"}, "at most 254 characters"),
        ({"email": "", "receives_alerts": "on"}, "Enter the address alerts go to, or turn alerts off."),
    ],
)
def test_invalid_addresses_are_refused_and_the_typed_value_kept(data, error, alice_client, partner_user):
    partner_user.email = "alice@acme.example"
    partner_user.save()

    response = alice_client.post(reverse("profile"), data)

    assert response.status_code == 200
    body = response.content.decode()
    assert error in body
    assert data["email"][:40] in body
    partner_user.refresh_from_db()
    assert partner_user.email == "alice@acme.example"
    assert not AuditEvent.objects.filter(action="profile.update").exists()


def test_turning_alerts_off_without_an_address_is_allowed(alice_client, partner_user):
    alice_client.post(reverse("profile"), {"email": ""})
    partner_user.refresh_from_db()
    assert (partner_user.email, partner_user.receives_alerts) == ("", False)


def test_a_user_changes_only_their_own_profile(alice_client, partner_user, other_user):
    other_user.email = "bob@globex.example"
    other_user.save()
    alice_client.post(
        reverse("profile"),
        {"email": "alice@acme.example", "receives_alerts": "on", "id": other_user.pk, "username": "bob"},
    )
    other_user.refresh_from_db()
    assert other_user.email == "bob@globex.example"
    assert User.objects.get(pk=partner_user.pk).email == "alice@acme.example"


def test_incident_alerts_go_to_the_addresses_users_set(mine, partner, make_user, other_user):
    for username, fields in [
        ("carol", {"email": "carol@acme.example"}),
        ("dave", {"email": "dave@acme.example", "receives_alerts": False}),  # turned alerts off
        ("erin", {}),  # no address: nothing to send to
        ("frank", {"email": "frank@acme.example", "is_active": False}),
    ]:
        User.objects.filter(pk=make_user(username, partner).pk).update(**fields)
    User.objects.filter(pk=other_user.pk).update(email="bob@globex.example")  # another partner's user

    incident = incident_open(mine.connection, Incident.Kind.SYNC_FAILING, "HaloPSA answered 500 five times.")

    assert len(mail.outbox) == 1
    assert mail.outbox[0].to == ["carol@acme.example"]
    incident.refresh_from_db()
    assert incident.notified_at is not None
