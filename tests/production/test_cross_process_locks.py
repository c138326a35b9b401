"""The per-connection lease holds across separate processes on PostgreSQL (issue 11 item 3).

Several Python processes race for the same lease through `lease_acquire`; every hold is logged
with system-wide monotonic times and a flock-protected holder count. Never two holders at once,
and every process gets its turn. A control run without the lease shows the detector sees overlaps.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from tests.production.procs import PYTHON, clean_env, database_url_for, is_postgres, popen, private_tmp


def postgres_only(test):
    test = pytest.mark.skipif(
        not is_postgres(), reason="runs in make test's PostgreSQL+Redis pass (needs DATABASE_URL=postgres://...)"
    )(test)
    return pytest.mark.postgres(test)


WORKERS = 4
ROUNDS = 8
HOLD_SECONDS = 0.02


def race(
    tmp_path: Path, db_settings: dict, *, name: str, use_lock: bool = True
) -> tuple[list[tuple[int, int, int, int]], list[dict]]:
    """Start WORKERS processes contending for `name`; returns (holds, per-process summaries)."""
    (tmp_path / "holders").write_text("0")
    env = clean_env(
        tmp_path, DJANGO_SETTINGS_MODULE="syncportal.settings_test", DATABASE_URL=database_url_for(db_settings)
    )
    args = [PYTHON, "-m", "tests.production.lease_worker", name, str(ROUNDS), str(HOLD_SECONDS), str(tmp_path)]
    if not use_lock:
        args.append("--no-lock")
    procs = [popen(args, env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(WORKERS)]
    try:
        deadline = time.monotonic() + 60
        while len(list(tmp_path.glob("ready.*"))) < WORKERS:
            assert time.monotonic() < deadline, "contenders did not start"
            assert all(proc.poll() is None for proc in procs), [
                proc.communicate() for proc in procs if proc.poll() is not None
            ]
            time.sleep(0.02)
        (tmp_path / "go").touch()
        outputs = [proc.communicate(timeout=120) for proc in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    for proc, (_out, err) in zip(procs, outputs):
        assert proc.returncode == 0, err
    summaries = [json.loads(out.strip().splitlines()[-1]) for out, _ in outputs]
    holds = [tuple(int(part) for part in line.split()) for line in (tmp_path / "holds.log").read_text().splitlines()]
    return holds, summaries


@pytest.fixture
def work_dir():
    yield from private_tmp("lease-race")


def overlapping_pairs(holds) -> list[tuple]:
    ordered = sorted(holds, key=lambda hold: hold[1])
    return [(a, b) for a, b in zip(ordered, ordered[1:]) if b[1] < a[2]]


@postgres_only
def test_only_one_process_at_a_time_holds_a_connection_lease(transactional_db, work_dir):
    from django.db import connection

    from integrations.models import Lease

    started = time.monotonic()
    holds, summaries = race(work_dir, connection.settings_dict, name="sync:connection:1")
    elapsed = time.monotonic() - started

    # Everyone eventually got the lease, every round.
    assert len(holds) == WORKERS * ROUNDS
    assert {hold[0] for hold in holds} == {summary["pid"] for summary in summaries}
    # Never two holders at once, by the holder count and by the hold intervals.
    assert max(hold[3] for hold in holds) == 1
    assert overlapping_pairs(holds) == []
    # There was a real race: processes were refused while another held the lease.
    assert sum(summary["refused"] for summary in summaries) > 0
    # All released: the lease is free again.
    lease = Lease.objects.get(name="sync:connection:1")
    assert lease.owner == "" and lease.expires_at is None
    print(
        f"\nlease race: {WORKERS} processes x {ROUNDS} holds of {HOLD_SECONDS}s in {elapsed:.2f}s, "
        f"{sum(s['refused'] for s in summaries)} refusals, 0 overlaps"
    )


@postgres_only
def test_the_overlap_detector_sees_overlaps_without_the_lease(transactional_db, work_dir):
    """Control: the same race without the lease must show overlaps, or the test above proves nothing."""
    from django.db import connection

    holds, _ = race(work_dir, connection.settings_dict, name="unused", use_lock=False)

    assert len(holds) == WORKERS * ROUNDS
    assert max(hold[3] for hold in holds) > 1
    assert overlapping_pairs(holds) != []


def test_different_connections_do_not_block_each_other(transactional_db):
    from integrations.services.leases import lease_acquire, lease_release

    first = lease_acquire("sync:connection:1", ttl_seconds=60)
    second = lease_acquire("sync:connection:2", ttl_seconds=60)

    assert first and second
    assert lease_acquire("sync:connection:1", ttl_seconds=60) is None
    lease_release("sync:connection:1", first)
    lease_release("sync:connection:2", second)
