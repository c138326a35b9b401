"""One contender in the cross-process lease race (started by test_cross_process_locks.py).

    python -m tests.production.lease_worker NAME ROUNDS HOLD_SECONDS WORKDIR [--no-lock]

Waits for WORKDIR/go (so every process starts contending at once), then ROUNDS times: spins on
`lease_acquire(NAME)` until it gets the lease, holds it for HOLD_SECONDS while counting holders
in a flock-protected file, and releases it. Each hold is appended to WORKDIR/holds.log as
"<pid> <start_ns> <end_ns> <holders_seen>" with CLOCK_MONOTONIC times (shared by all processes
on the machine); the interval lies inside the lease, so two holds may never overlap.
`--no-lock` skips the lease: the control case proving the detector sees overlaps.
"""

from __future__ import annotations

import fcntl
import json
import os
import sys
import time
from pathlib import Path


def _bump_holders(counter: Path, delta: int) -> int:
    with counter.open("r+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        value = int(handle.read() or "0") + delta
        handle.seek(0)
        handle.truncate()
        handle.write(str(value))
        handle.flush()
        fcntl.flock(handle, fcntl.LOCK_UN)
    return value


def main(argv: list[str]) -> int:
    name, rounds, hold, workdir = argv[0], int(argv[1]), float(argv[2]), Path(argv[3])
    use_lock = "--no-lock" not in argv
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "syncportal.settings_test")
    import django

    django.setup()
    from django.db import connection

    from integrations.services.leases import lease_acquire, lease_release

    connection.ensure_connection()  # connect before the start line, not inside the race
    (workdir / f"ready.{os.getpid()}").touch()
    go = workdir / "go"
    deadline = time.monotonic() + 60
    while not go.exists():
        if time.monotonic() > deadline:
            print("no start signal", file=sys.stderr)
            return 2
        time.sleep(0.005)

    counter = workdir / "holders"
    refused = 0
    for _ in range(rounds):
        owner = None
        while use_lock:
            owner = lease_acquire(name, ttl_seconds=60)
            if owner:
                break
            refused += 1
            time.sleep(0.002)
        start = time.monotonic_ns()
        seen = _bump_holders(counter, +1)
        time.sleep(hold)
        _bump_holders(counter, -1)
        end = time.monotonic_ns()
        with (workdir / "holds.log").open("a") as log:
            log.write(f"{os.getpid()} {start} {end} {seen}\n")
        if owner:
            lease_release(name, owner)
    print(json.dumps({"pid": os.getpid(), "refused": refused}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
