"""Sign-in and sign-out through the login form, the lockout after repeated failures, and the redirect for anonymous users."""

from __future__ import annotations

import pytest
from django.conf import settings
from django.test import Client

PASSWORD = "correct-horse-battery"


@pytest.fixture
def client_csrf():
    # The real form path: CSRF is checked as in a browser.
    return Client(enforce_csrf_checks=True)


def csrf_token(client: Client) -> str:
    response = client.get("/login/")
    assert response.status_code == 200
    return response.cookies["csrftoken"].value


def sign_in(client: Client, username: str, password: str, **extra):
    return client.post(
        "/login/",
        {"username": username, "password": password, "csrfmiddlewaretoken": csrf_token(client), **extra},
    )


def test_sign_in_through_the_login_form_lands_on_home(client_csrf, partner_user):
    response = sign_in(client_csrf, "alice", PASSWORD)

    assert response.status_code == 302
    assert response["Location"] == "/"
    home = client_csrf.get("/")
    assert home.status_code == 200
    assert home.wsgi_request.user == partner_user
    assert b"Acme MSP" in home.content


def test_sign_in_follows_next_to_the_page_asked_for(client_csrf, partner_user):
    response = sign_in(client_csrf, "alice", PASSWORD, next="/?page=2")

    assert response.status_code == 302
    assert response["Location"] == "/?page=2"


def test_sign_in_refuses_a_next_url_on_another_site(client_csrf, partner_user):
    response = sign_in(client_csrf, "alice", PASSWORD, next="https://evil.example.com/")

    assert response.status_code == 302
    assert response["Location"] == "/"


def test_wrong_password_gets_a_clear_message_and_no_session(client_csrf, partner_user):
    response = sign_in(client_csrf, "alice", "not-the-password")

    assert response.status_code == 200
    assert b"didn&#x27;t match" in response.content or b"didn't match" in response.content
    assert "_auth_user_id" not in client_csrf.session


def test_unknown_user_gets_the_same_message_as_a_wrong_password(client_csrf, partner_user):
    response = sign_in(client_csrf, "nobody", "whatever")

    assert response.status_code == 200
    assert b"match" in response.content
    assert "_auth_user_id" not in client_csrf.session


def test_inactive_user_cannot_sign_in(client_csrf, partner_user):
    partner_user.is_active = False
    partner_user.save()

    response = sign_in(client_csrf, "alice", PASSWORD)

    assert response.status_code == 200
    assert "_auth_user_id" not in client_csrf.session


def test_login_without_csrf_token_is_refused(client_csrf, partner_user):
    client_csrf.get("/login/")
    response = client_csrf.post("/login/", {"username": "alice", "password": PASSWORD})

    assert response.status_code == 403
    assert "_auth_user_id" not in client_csrf.session


def test_repeated_wrong_passwords_lock_the_account_even_for_the_right_password(client_csrf, partner_user):
    limit = settings.AXES_FAILURE_LIMIT
    assert limit > 0
    for _ in range(limit - 1):
        response = sign_in(client_csrf, "alice", "wrong")
        assert b"match" in response.content

    locked = sign_in(client_csrf, "alice", "wrong")
    assert b"Too many failed sign-ins" in locked.content

    after = sign_in(client_csrf, "alice", PASSWORD)
    assert b"Too many failed sign-ins" in after.content
    assert "_auth_user_id" not in client_csrf.session


def test_lockout_is_per_username_so_other_users_can_still_sign_in(client_csrf, partner_user, other_user):
    for _ in range(settings.AXES_FAILURE_LIMIT):
        sign_in(client_csrf, "alice", "wrong")

    response = sign_in(client_csrf, "bob", PASSWORD)

    assert response.status_code == 302
    assert client_csrf.session["_auth_user_id"] == str(other_user.pk)


def test_a_successful_sign_in_resets_the_failure_count(client_csrf, partner_user):
    for _ in range(settings.AXES_FAILURE_LIMIT - 1):
        sign_in(client_csrf, "alice", "wrong")
    assert sign_in(client_csrf, "alice", PASSWORD).status_code == 302
    client_csrf.logout()

    # Starting over: limit - 1 failures again are not a lockout.
    for _ in range(settings.AXES_FAILURE_LIMIT - 1):
        response = sign_in(client_csrf, "alice", "wrong")
    assert b"Too many failed sign-ins" not in response.content
    assert sign_in(client_csrf, "alice", PASSWORD).status_code == 302


@pytest.mark.parametrize("path", ["/", "/?page=2"])
def test_anonymous_users_are_redirected_to_sign_in(client, db, path):
    response = client.get(path)

    assert response.status_code == 302
    assert response["Location"].startswith("/login/?next=")
    from urllib.parse import parse_qs, urlsplit

    assert parse_qs(urlsplit(response["Location"]).query)["next"] == [path]


def test_admin_is_for_staff_only(client, partner_user, staff_user):
    client.force_login(partner_user)
    assert client.get("/admin/").status_code == 302
    client.force_login(staff_user)
    assert client.get("/admin/").status_code == 200


def test_sign_out_is_a_post_and_ends_the_session(client_csrf, partner_user):
    sign_in(client_csrf, "alice", PASSWORD)
    token = client_csrf.cookies["csrftoken"].value

    # GET must not sign anyone out (a link or image could trigger it).
    assert client_csrf.get("/logout/").status_code == 405
    assert "_auth_user_id" in client_csrf.session

    response = client_csrf.post("/logout/", {"csrfmiddlewaretoken": token})
    assert response.status_code == 302
    assert response["Location"] == "/login/"
    assert client_csrf.get("/").status_code == 302


def test_base_layout_offers_sign_out_as_a_form(client, partner_user):
    client.force_login(partner_user)
    response = client.get("/")

    assert b'action="/logout/"' in response.content
    assert b'method="post"' in response.content


# --- The lockout behind the load balancer (issue 17 item 14) ---------------------------------
# Every request reaches the nodes from the balancer (10.0.0.5 here), which appends the address it
# received the request from to X-Forwarded-For. TRUSTED_PROXIES says which addresses are proxies.

BALANCER = "10.0.0.5"
ALICE_AT = "198.51.100.7"
ATTACKER_AT = "203.0.113.9"


def sign_in_from(client: Client, username: str, password: str, remote: str, forwarded_for: str | None = None):
    meta = {"REMOTE_ADDR": remote}
    if forwarded_for is not None:
        meta["HTTP_X_FORWARDED_FOR"] = forwarded_for
    token = client.get("/login/", **meta).cookies["csrftoken"].value
    return client.post("/login/", {"username": username, "password": password, "csrfmiddlewaretoken": token}, **meta)


def attack(username: str, remote: str, forwarded_for: str | None = None) -> None:
    attacker = Client(enforce_csrf_checks=True)
    for _ in range(settings.AXES_FAILURE_LIMIT):
        sign_in_from(attacker, username, "guess", remote, forwarded_for)
    locked = sign_in_from(attacker, username, PASSWORD, remote, forwarded_for)
    assert b"Too many failed sign-ins" in locked.content  # the attacker is locked out


def test_without_trusted_proxies_a_forged_header_is_ignored(client_csrf, partner_user, settings):
    settings.TRUSTED_PROXIES = []
    # Straight to the node, claiming to be Alice's address: the failures count against the sender.
    attack("alice", ATTACKER_AT, forwarded_for=ALICE_AT)

    assert sign_in_from(client_csrf, "alice", PASSWORD, ALICE_AT).status_code == 302
    # ...and another forged header does not get the attacker out of the lockout.
    again = sign_in_from(Client(enforce_csrf_checks=True), "alice", PASSWORD, ATTACKER_AT, forwarded_for="192.0.2.1")
    assert b"Too many failed sign-ins" in again.content


def test_without_trusted_proxies_everyone_behind_the_balancer_shares_one_lockout(client_csrf, partner_user, settings):
    """Why the setting exists: keyed on the balancer's address, a stranger locks Alice out."""
    settings.TRUSTED_PROXIES = []
    attack("alice", BALANCER, forwarded_for=ATTACKER_AT)

    response = sign_in_from(client_csrf, "alice", PASSWORD, BALANCER, forwarded_for=ALICE_AT)
    assert b"Too many failed sign-ins" in response.content


def test_with_trusted_proxies_a_stranger_cannot_lock_alice_out(client_csrf, partner_user, settings):
    settings.TRUSTED_PROXIES = ["10.0.0.0/8"]
    attack("alice", BALANCER, forwarded_for=ATTACKER_AT)

    response = sign_in_from(client_csrf, "alice", PASSWORD, BALANCER, forwarded_for=ALICE_AT)
    assert response.status_code == 302
    assert client_csrf.session["_auth_user_id"] == str(partner_user.pk)


def test_with_trusted_proxies_a_spoofed_address_neither_locks_others_nor_escapes(client_csrf, partner_user, settings):
    settings.TRUSTED_PROXIES = ["10.0.0.0/8"]
    # The attacker sends "X-Forwarded-For: <Alice's address>"; the balancer appends the real one.
    attack("alice", BALANCER, forwarded_for=f"{ALICE_AT}, {ATTACKER_AT}")

    assert sign_in_from(client_csrf, "alice", PASSWORD, BALANCER, forwarded_for=ALICE_AT).status_code == 302
    other_lie = sign_in_from(
        Client(enforce_csrf_checks=True), "alice", PASSWORD, BALANCER, forwarded_for=f"192.0.2.1, {ATTACKER_AT}"
    )
    assert b"Too many failed sign-ins" in other_lie.content


def test_with_trusted_proxies_a_request_around_the_balancer_is_keyed_on_its_sender(client_csrf, partner_user, settings):
    settings.TRUSTED_PROXIES = ["10.0.0.0/8"]
    attack("alice", ATTACKER_AT, forwarded_for=ALICE_AT)  # not from a proxy: the header is not believed

    assert sign_in_from(client_csrf, "alice", PASSWORD, BALANCER, forwarded_for=ALICE_AT).status_code == 302


@pytest.mark.parametrize(
    "trusted,remote,forwarded,expected",
    [
        ([], "203.0.113.9", "198.51.100.7", "203.0.113.9"),
        (["10.0.0.5"], "10.0.0.5", "198.51.100.7", "198.51.100.7"),
        (["10.0.0.5"], "10.0.0.6", "198.51.100.7", "10.0.0.6"),
        # two proxies, a forged left part
        (
            ["10.0.0.0/8"],
            "10.0.0.5",
            "1.2.3.4, 198.51.100.7, 10.1.1.1",
            "198.51.100.7",
        ),
        (["10.0.0.0/8"], "10.0.0.5", "", "10.0.0.5"),  # no header: the proxy itself
        (["10.0.0.0/8"], "10.0.0.5", "10.2.2.2, 10.1.1.1", "10.2.2.2"),  # all trusted: the first
        (["10.0.0.0/8"], "10.0.0.5", "not-an-ip", "10.0.0.5"),  # garbage where the client should be
        (["10.0.0.0/8"], "10.0.0.5", "198.51.100.7:52100", "198.51.100.7"),
        (["fd00::/8"], "fd00::1", "2001:db8::7", "2001:db8::7"),
        (["fd00::/8"], "fd00::1", "[2001:db8::7]:443", "2001:db8::7"),
        (["10.0.0.0/8"], "::ffff:10.0.0.5", "::ffff:198.51.100.7", "198.51.100.7"),
    ],
)
def test_client_ip_reads_forwarded_for_from_the_right_through_trusted_proxies(
    trusted, remote, forwarded, expected, rf, settings
):
    from syncportal.client_ip import client_ip

    settings.TRUSTED_PROXIES = trusted
    request = rf.get("/login/", REMOTE_ADDR=remote, HTTP_X_FORWARDED_FOR=forwarded)
    assert client_ip(request) == expected


def test_the_lockout_uses_the_client_ip_setting():
    assert settings.AXES_CLIENT_IP_CALLABLE == "syncportal.client_ip.client_ip"
    assert settings.AXES_LOCKOUT_PARAMETERS == [["username", "ip_address"]]


def test_a_bad_trusted_proxy_entry_is_a_configuration_error(rf, settings):
    from django.core.exceptions import ImproperlyConfigured

    from syncportal.client_ip import client_ip

    settings.TRUSTED_PROXIES = ["10.0.0.0/33"]
    with pytest.raises(ImproperlyConfigured, match="TRUSTED_PROXIES"):
        client_ip(rf.get("/", REMOTE_ADDR="10.0.0.5"))
