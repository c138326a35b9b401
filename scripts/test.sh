#!/usr/bin/env bash
# `make test`: the whole suite on SQLite + the ORM broker, then everything but the browser tests
# again on PostgreSQL + the Redis broker, both started here on loopback and stopped after.
# Both passes always run; the command fails if either failed (or collected no tests).
set -uo pipefail
cd "$(dirname "$0")/.."
mkdir -p test-artifacts
PYTEST=".venv/bin/pytest"

echo "== Test suite on SQLite (ORM broker) =="
$PYTEST "$@"
sqlite_rc=$?

postgres_rc=0
if [ "${SKIP_POSTGRES:-}" = "1" ]; then
  echo "SKIP_POSTGRES=1: PostgreSQL/Redis pass not run."
else
  echo "== Test suite on PostgreSQL + Redis =="
  scripts/with_services.sh $PYTEST -m "not e2e" "$@"
  postgres_rc=$?
fi

echo "== SQLite pass exit code: $sqlite_rc; PostgreSQL + Redis pass exit code: $postgres_rc =="
[ "$sqlite_rc" -eq 0 ] && [ "$postgres_rc" -eq 0 ]
