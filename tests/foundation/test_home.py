"""The home page: the partner's connections, or an explained empty state."""

from __future__ import annotations


def test_empty_state_explains_what_a_connection_is_and_offers_to_add_one(client, partner_user):
    client.force_login(partner_user)
    response = client.get("/")

    assert response.status_code == 200
    content = response.content.decode()
    assert "No HaloPSA connection yet." in content
    assert "client ID and secret" in content
    assert "Add your HaloPSA connection" in content


def test_user_without_partner_is_told_to_ask_an_administrator(client, make_user):
    client.force_login(make_user("newcomer", None))
    content = client.get("/").content.decode()

    assert "not linked to a partner" in content
    assert "Add your HaloPSA connection" not in content


def test_home_lists_only_the_partners_own_connections(client, partner, other_partner, partner_user, make_connection):
    make_connection(partner, name="Acme HaloPSA")
    make_connection(other_partner, name="Globex HaloPSA")
    client.force_login(partner_user)

    content = client.get("/").content.decode()

    assert "Acme HaloPSA" in content
    assert "Globex HaloPSA" not in content
    assert "No HaloPSA connection yet." not in content


def test_staff_see_every_partners_connections_with_the_partner_named(
    client, partner, other_partner, staff_user, make_connection
):
    make_connection(partner, name="Acme HaloPSA")
    make_connection(other_partner, name="Globex HaloPSA")
    client.force_login(staff_user)

    content = client.get("/").content.decode()

    assert "Acme HaloPSA" in content and "Globex HaloPSA" in content
    assert "Acme MSP" in content and "Globex MSP" in content
