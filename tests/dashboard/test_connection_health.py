"""One health state per connection (issue 17 item 6): Connected / Needs attention / Reconnect, from
the last test, the last run and open alerts, the same on the home list and the connection page."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from integrations import selectors
from integrations.models import Incident, PushJob, SyncRun
from integrations.services.sync import LEASE_CONFLICT_MESSAGE

pytestmark = pytest.mark.django_db

NOW = timezone.now()


def _run(connection, state, *, minutes_ago=10, trigger=SyncRun.Trigger.SCHEDULE, message="", **fields):
    finished = None if state in (SyncRun.State.QUEUED, SyncRun.State.RUNNING) else NOW - timedelta(minutes=minutes_ago)
    return SyncRun.objects.create(
        connection=connection,
        trigger=trigger,
        scope=SyncRun.Scope.INCREMENTAL,
        state=state,
        queued_at=NOW - timedelta(minutes=minutes_ago + 1),
        finished_at=finished,
        message=message,
        **fields,
    )


def _tested(connection, ok, *, failure="", message="", minutes_ago=5):
    connection.last_test_ok, connection.last_test_failure, connection.last_test_message = ok, failure, message
    connection.last_test_at = NOW - timedelta(minutes=minutes_ago)
    connection.save()


def _health(user, connection):
    return next(c.health_state for c in selectors.connection_list(user=user) if c.pk == connection.pk)


def _working(connection):
    _tested(connection, True, minutes_ago=60)
    _run(connection, SyncRun.State.SUCCEEDED, minutes_ago=30)


def _alert(kind):
    def _open(connection):
        from integrations.services.incidents import incident_open

        incident_open(connection, kind, "details")

    return _open


SCENARIOS = {
    # name: (set-up after a working connection, or None for a new one; level; words in the first reason)
    "new": (None, "attention", "Not tested or synced yet"),
    "working": (lambda c: None, "connected", ""),
    "last run failed": (
        lambda c: _run(c, "failed", minutes_ago=1, message="HaloPSA timed out."),
        "attention",
        "The last sync failed: HaloPSA timed out.",
    ),
    "last run partial": (lambda c: _run(c, "partial", minutes_ago=1), "attention", "The last sync was partial"),
    "credentials rejected in a sync": (
        _alert(Incident.Kind.CREDENTIALS_REJECTED),
        "reconnect",
        "credentials stopped working",
    ),
    "test rejected the credentials": (
        lambda c: _tested(c, False, failure="bad_credentials", message="401", minutes_ago=1),
        "reconnect",
        "The last test failed — Bad credentials: 401",
    ),
    "test refused the address": (
        lambda c: _tested(c, False, failure="refused_address", message="private", minutes_ago=1),
        "reconnect",
        "Address refused",
    ),
    "test timed out": (
        lambda c: _tested(c, False, failure="timeout", message="slow", minutes_ago=1),
        "attention",
        "The last test failed — Timed out: slow",
    ),
    "syncs keep failing": (_alert(Incident.Kind.SYNC_FAILING), "attention", "Syncs keep failing"),
    "pushes keep failing": (_alert(Incident.Kind.PUSH_FAILING), "attention", "Pushes to HaloPSA are failing"),
    "a push waits for review": (
        lambda c: PushJob.objects.create(
            connection=c, kind=PushJob.Kind.INVOICE_STATUS, key="k1", state=PushJob.State.NEEDS_REVIEW
        ),
        "attention",
        "Pushes to HaloPSA are failing. 1 wait for review.",
    ),
    "probe found a feature blocked": (
        lambda c: (
            type(c)
            .objects.filter(pk=c.pk)
            .update(
                halo_shape={
                    "problems": [{"feature": "payment_push", "message": "HaloPSA lists no invoice's payments exactly."}]
                }
            )
        ),
        "attention",
        "Blocked in this HaloPSA: HaloPSA lists no invoice's payments exactly.",
    ),
    # Facts that are over do not count.
    "a failed test before the last good sync": (
        lambda c: (_tested(c, False, failure="bad_credentials", minutes_ago=50), _run(c, "succeeded", minutes_ago=1)),
        "connected",
        "",
    ),
    "a lease conflict after a good sync": (
        lambda c: _run(c, "failed", minutes_ago=1, message=LEASE_CONFLICT_MESSAGE),
        "connected",
        "",
    ),
    "a failed run before a good one": (
        lambda c: (_run(c, "failed", minutes_ago=20), _run(c, "succeeded", minutes_ago=2)),
        "connected",
        "",
    ),
    "paused is not a health fact": (lambda c: type(c).objects.filter(pk=c.pk).update(paused=True), "connected", ""),
}


@pytest.mark.parametrize("name", SCENARIOS)
def test_health_rule(partner_user, partner, make_connection, name):
    set_up, level, words = SCENARIOS[name]
    connection = make_connection(partner)
    if set_up is not None:
        _working(connection)
        set_up(connection)
    health = _health(partner_user, connection)
    assert health.level == level, health
    assert (words in health.reasons[0]) if words else not health.reasons


def test_a_new_connection_whose_first_sync_runs_is_not_connected_yet(partner_user, partner, make_connection):
    connection = make_connection(partner)
    _tested(connection, True)
    _run(connection, SyncRun.State.RUNNING)
    health = _health(partner_user, connection)
    assert (health.level, health.reasons) == ("attention", ("The first sync has not finished yet.",))


def test_reconnect_lists_the_other_problems_too(partner_user, partner, make_connection):
    connection = make_connection(partner)
    _working(connection)
    _alert(Incident.Kind.CREDENTIALS_REJECTED)(connection)
    _run(connection, "failed", minutes_ago=1, message="HaloPSA rejected the client ID or secret.")
    health = _health(partner_user, connection)
    assert health.level == "reconnect" and len(health.reasons) == 2 and "The last sync failed" in health.reasons[1]


def test_a_failing_connection_never_shows_green_on_the_list(alice_client, partner, make_connection):
    failing = make_connection(partner, name="Failing HaloPSA")
    _working(failing)
    _run(failing, "failed", minutes_ago=1, message="HaloPSA answered 500.")
    working = make_connection(partner, name="Working HaloPSA", base_url="https://other.halopsa.com")
    _working(working)
    body = alice_client.get(reverse("home")).content.decode()
    rows = {
        name: body[body.index(f">{name}</a>") :].split("</tr>", 1)[0] for name in ("Failing HaloPSA", "Working HaloPSA")
    }
    assert 'class="badge badge-warn" data-health="attention">Needs attention' in rows["Failing HaloPSA"]
    assert "The last sync failed: HaloPSA answered 500." in rows["Failing HaloPSA"]
    assert "badge-ok" not in rows["Failing HaloPSA"] and ">active<" not in body
    assert 'class="badge badge-ok" data-health="connected">Connected' in rows["Working HaloPSA"]
    assert '<td class="opt">On</td>' in rows["Failing HaloPSA"]  # enabled: a separate, neutral fact


def test_the_connection_page_shows_the_same_state_and_every_reason(alice_client, partner, make_connection):
    connection = make_connection(partner)
    _working(connection)
    _tested(connection, False, failure="bad_credentials", message="HaloPSA said 401.", minutes_ago=1)
    PushJob.objects.create(
        connection=connection, kind=PushJob.Kind.INVOICE_STATUS, key="k2", state=PushJob.State.NEEDS_REVIEW
    )
    connection.paused = True
    connection.save()
    body = alice_client.get(reverse("connection_detail", kwargs={"pk": connection.pk})).content.decode()
    head = body[body.index("<h1>") : body.index("</h1>")]
    assert 'data-health="reconnect">Reconnect</span>' in head and ">paused<" in head and "badge-ok" not in head
    summary = body[body.index('class="health-summary') : body.index("</section>", body.index('class="health-summary'))]
    assert "The last test failed — Bad credentials: HaloPSA said 401. Edit the connection to fix it." in summary
    assert "Pushes to HaloPSA are failing. 1 wait for review." in summary
    assert "Paused: scheduled syncs are skipped" in summary
    assert reverse("connection_edit", kwargs={"pk": connection.pk}) in summary


def test_the_list_costs_one_query_whatever_the_history(
    alice_client, partner, make_connection, django_assert_num_queries
):
    connections = [make_connection(partner, name=f"C{i}", base_url=f"https://c{i}.halopsa.com") for i in range(4)]
    for connection in connections:
        _working(connection)
        _run(connection, "failed", minutes_ago=1)
        _alert(Incident.Kind.SYNC_FAILING)(connection)
    user = alice_client.get(reverse("home")).wsgi_request.user
    with django_assert_num_queries(1):
        states = [c.health_state.level for c in selectors.connection_list(user=user)]
    assert states == ["attention"] * 4


def test_other_partners_connections_are_not_read(partner_user, partner, other_partner, make_connection):
    make_connection(partner)
    theirs = make_connection(other_partner, name="Theirs")
    assert [c.name for c in selectors.connection_list(user=partner_user)] == ["Main HaloPSA"]
    from django.http import Http404

    with pytest.raises(Http404):
        selectors.connection_for_page(user=partner_user, pk=theirs.pk)
