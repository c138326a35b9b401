#!/usr/bin/env bash
# `make test`: the whole suite on SQLite + the ORM broker, then the database- and task-touching
# tests again on PostgreSQL + the Redis broker, both started here on loopback and stopped after.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p test-artifacts
PYTEST=".venv/bin/pytest"

echo "== Test suite on SQLite (ORM broker) =="
$PYTEST "$@"

if [ "${SKIP_POSTGRES:-}" = "1" ]; then
  echo "SKIP_POSTGRES=1: PostgreSQL/Redis pass not run."
  exit 0
fi
echo "== Test suite on PostgreSQL + Redis =="
scripts/with_services.sh $PYTEST -m "not e2e" "$@"
