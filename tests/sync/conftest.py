"""Fixtures of the pull-sync tests."""

from __future__ import annotations

import pytest


@pytest.fixture
def connection(partner, make_connection, halo_sandbox):
    return make_connection(partner, halo_sandbox)


@pytest.fixture
def unprobed_connection(partner, make_connection):
    """`make(sandbox, **fields)`: a connection whose first sync skips the shape probe (as if it had
    run and learned nothing), so the sync finds out what it needs itself and makes every request
    of the run (run.api_requests is then the sandbox's whole count)."""

    def _make(sandbox, **fields):
        from django.utils import timezone

        return make_connection(partner, sandbox, shape_checked_at=timezone.now(), **fields)

    return _make


@pytest.fixture
def run_sync():
    def _run(connection, scope: str = "full", *, trigger: str = "cli", entity: str = "", halopsa_id: int | None = None):
        from integrations.models import SyncRun
        from integrations.services.sync import sync_execute

        run = SyncRun.objects.create(
            connection=connection, scope=scope, trigger=trigger, entity=entity, target_halopsa_id=halopsa_id
        )
        return sync_execute(run=run)

    return _run
