"""scripts/with_services.sh: services up for the command, its exit code passed on, nothing left behind."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
from pathlib import Path

import pytest

from tests.production.procs import BASE_DIR, PYTHON

# Needs the binaries the script would otherwise install with apt-get; the PostgreSQL+Redis pass
# of `make test` has them (it runs inside this very script).
needs_binaries = pytest.mark.skipif(
    not os.environ.get("REDIS_URL"), reason="runs in make test's PostgreSQL+Redis pass (needs redis-server and initdb)"
)

PROBE = """
import json, os, sys
import psycopg, redis
with psycopg.connect(os.environ["DATABASE_URL"]) as conn:
    server = conn.execute("show server_version").fetchone()[0]
    listen = conn.execute("show listen_addresses").fetchone()[0]
pong = redis.from_url(os.environ["REDIS_URL"]).ping()
print(json.dumps({"database_url": os.environ["DATABASE_URL"], "redis_url": os.environ["REDIS_URL"],
                  "server": server, "listen": listen, "pong": pong}))
sys.exit(7)
"""


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0


@needs_binaries
def test_runs_the_command_against_fresh_services_and_cleans_up():
    result = subprocess.run(
        [str(BASE_DIR / "scripts" / "with_services.sh"), PYTHON, "-c", PROBE],
        cwd=str(BASE_DIR),
        capture_output=True,
        text=True,
        timeout=180,
    )

    # The command's exit code is the script's exit code.
    assert result.returncode == 7, result.stderr
    seen = json.loads(result.stdout.strip().splitlines()[-1])
    assert seen["database_url"].startswith("postgres://postgres@127.0.0.1:")
    assert seen["redis_url"].startswith("redis://127.0.0.1:")
    assert seen["listen"] == "127.0.0.1"  # loopback only
    assert seen["pong"] is True
    # Fresh instances of their own, not the ones this test run uses.
    assert seen["database_url"] != os.environ.get("DATABASE_URL")
    assert seen["redis_url"] != os.environ.get("REDIS_URL")

    # Both stopped and the temporary directory removed.
    pg_port = int(seen["database_url"].rsplit(":", 1)[1].split("/")[0])
    redis_port = int(seen["redis_url"].rsplit(":", 1)[1].split("/")[0])
    assert not port_open(pg_port)
    assert not port_open(redis_port)
    announced = re.search(r"\((/\S*syncportal-services\.\w+)\)", result.stderr)
    assert announced, result.stderr
    assert not Path(announced.group(1)).exists()


def test_without_a_command_it_explains_its_usage():
    result = subprocess.run(
        [str(BASE_DIR / "scripts" / "with_services.sh")], cwd=str(BASE_DIR), capture_output=True, text=True, timeout=30
    )

    assert result.returncode == 2
    assert "usage:" in result.stderr
