#!/usr/bin/env bash
# `make test`: the whole suite on SQLite + the ORM broker; then tests/sync and tests/push once per
# HaloPSA sandbox profile (each variant alone, then all of them; SQLite only); then everything but
# the browser tests again on PostgreSQL + the Redis broker, both started here on loopback and
# stopped after. Every pass always runs; the command fails if any failed (or collected no tests).
# SKIP_PROFILES=1 / SKIP_POSTGRES=1 leave out those passes.
set -uo pipefail
cd "$(dirname "$0")/.."
mkdir -p test-artifacts
PYTEST=".venv/bin/pytest"

echo "== Test suite on SQLite (ORM broker) =="
$PYTEST "$@"
sqlite_rc=$?

failed_profiles=()
if [ "${SKIP_PROFILES:-}" = "1" ]; then
  echo "SKIP_PROFILES=1: the HaloPSA profile passes are not run."
else
  # The variant names come from the sandbox itself (integrations/sandbox/shapes.py).
  profiles=$(.venv/bin/python -c 'from integrations.sandbox.shapes import PROFILE_VARIANTS; print(*PROFILE_VARIANTS)') || exit 1
  for profile in $profiles all; do
    echo "== tests/sync tests/push under HaloPSA profile: $profile (SQLite) =="
    started=$SECONDS
    $PYTEST -q tests/sync tests/push --halo-profile "$profile" || failed_profiles+=("$profile")
    echo "== profile $profile took $((SECONDS - started)) s =="
  done
fi

postgres_rc=0
if [ "${SKIP_POSTGRES:-}" = "1" ]; then
  echo "SKIP_POSTGRES=1: PostgreSQL/Redis pass not run."
else
  echo "== Test suite on PostgreSQL + Redis =="
  scripts/with_services.sh $PYTEST -m "not e2e" "$@"
  postgres_rc=$?
fi

echo "== SQLite pass exit code: $sqlite_rc; PostgreSQL + Redis pass exit code: $postgres_rc =="
if [ "${#failed_profiles[@]}" -gt 0 ]; then
  echo "== HaloPSA profiles with failures: ${failed_profiles[*]} =="
else
  echo "== HaloPSA profiles: all passed (or not run) =="
fi
[ "$sqlite_rc" -eq 0 ] && [ "${#failed_profiles[@]}" -eq 0 ] && [ "$postgres_rc" -eq 0 ]
