"""500 connections do not all start their hourly sync at minute 0 (issue 11 item 3)."""

from __future__ import annotations

import io
import math
from collections import Counter

from django.core.management import call_command
from django_q.models import Schedule

from integrations.models import Connection, Partner
from integrations.schedules import NAME_PREFIX
from integrations.services.connections import connection_create

CONNECTIONS = 500


def test_hourly_syncs_of_500_connections_are_spread_evenly_over_the_hour(db):
    partners = [Partner.objects.create(name=f"MSP {i}") for i in range(10)]
    for i in range(CONNECTIONS):
        connection_create(
            partner=partners[i % len(partners)],
            name=f"HaloPSA {i}",
            base_url=f"https://msp{i}.halopsa.com",
            client_id="id",
            client_secret="secret",
            detect_version=False,
        )

    per_minute = Counter(Connection.objects.values_list("schedule_minute", flat=True))
    assert set(per_minute) == set(range(60))  # every minute of the hour is used
    assert max(per_minute.values()) == math.ceil(CONNECTIONS / 60)  # 9, not 500 at :00
    assert min(per_minute.values()) == CONNECTIONS // 60

    # The django-q2 schedule rows follow the connections' minutes, also after a redeploy's ensure_schedules.
    for _ in range(2):
        schedules = Schedule.objects.filter(name__startswith=NAME_PREFIX)
        assert schedules.count() == CONNECTIONS
        assert Counter(schedule.next_run.minute for schedule in schedules) == per_minute
        call_command("ensure_schedules", stdout=io.StringIO())
