"""A database prepared with `migrate` alone works, and commands keep stdout for their output.

Both run real processes with the production settings (database cache, axes on), as an operator would.
"""

from __future__ import annotations

import json

from tests.production.procs import MANAGE, PYTHON, production_env, run

CACHE_ROUND_TRIP = """
from django.core.cache import cache
cache.set("migrate-only", 42)
print(cache.get("migrate-only"))
"""


def test_a_database_prepared_with_migrate_alone_has_the_cache_table(tmp_path):
    env = production_env(tmp_path, DATABASE_URL=f"sqlite:///{tmp_path / 'fresh.sqlite3'}")

    migrated = run([PYTHON, MANAGE, "migrate", "--noinput"], env)
    assert migrated.returncode == 0, migrated.stderr
    used = run([PYTHON, MANAGE, "shell", "-c", CACHE_ROUND_TRIP], env)

    assert used.returncode == 0, used.stderr
    assert used.stdout.strip().splitlines()[-1] == "42"  # after the shell's own auto-import notice


def test_export_connection_writes_only_json_to_stdout_and_logs_to_stderr(tmp_path):
    env = production_env(tmp_path, DATABASE_URL=f"sqlite:///{tmp_path / 'export.sqlite3'}", LOG_LEVEL="INFO")
    assert run([PYTHON, MANAGE, "migrate", "--noinput"], env).returncode == 0
    created = run(
        [
            PYTHON,
            MANAGE,
            "add_connection",
            "--partner",
            "Acme",
            "--name",
            "Main",
            "--url",
            "https://acme.halopsa.example",
            "--client-id",
            "id",
            "--client-secret",
            "secret",
        ],
        env,
    )
    assert created.returncode == 0, created.stderr
    connection_id = created.stdout.strip().splitlines()[-1]  # add_connection ends with the new id

    exported = run([PYTHON, MANAGE, "export_connection", connection_id], env)

    assert exported.returncode == 0, exported.stderr
    assert json.loads(exported.stdout) == {"customers": [], "invoices": []}
    # The log lines (axes announces itself at start-up) went to stderr, where they belong.
    assert "AXES" in exported.stderr
