#!/usr/bin/env bash
# `make test`: the whole suite on SQLite + the ORM broker; then tests/sync and tests/push once per
# HaloPSA sandbox profile (each variant alone, then all of them; SQLite only); then everything but
# the browser tests again on PostgreSQL + the Redis broker, both started here on loopback and
# stopped after. Every pass always runs; the command fails if any failed (or collected no tests).
# First, models and migrations must agree (else nothing runs), and scripts/lint.sh runs: a lint
# failure fails the command too, reported at the end, but the tests still run.
# SKIP_LINT=1 / SKIP_PROFILES=1 / SKIP_POSTGRES=1 leave out those passes.
set -uo pipefail
cd "$(dirname "$0")/.."
mkdir -p test-artifacts
PYTEST=".venv/bin/pytest"

echo "== Models and migrations agree (makemigrations --check) =="
if ! DJANGO_SETTINGS_MODULE=syncportal.settings_test .venv/bin/python manage.py makemigrations --check --dry-run; then
  echo "== The models and the migrations differ: run manage.py makemigrations and commit the migration. Tests not run. =="
  exit 1
fi

lint_rc=0
if [ "${SKIP_LINT:-}" = "1" ]; then
  echo "SKIP_LINT=1: lint not run."
else
  echo "== Lint (scripts/lint.sh) =="
  scripts/lint.sh
  lint_rc=$?
fi

echo "== Test suite on SQLite (ORM broker) =="
$PYTEST "$@"
sqlite_rc=$?

failed_profiles=()
if [ "${SKIP_PROFILES:-}" = "1" ]; then
  echo "SKIP_PROFILES=1: the HaloPSA profile passes are not run."
else
  # The variant names come from the sandbox itself (halosandbox/shapes.py).
  profiles=$(.venv/bin/python -c 'from halosandbox.shapes import PROFILE_VARIANTS; print(*PROFILE_VARIANTS)') || exit 1
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

if [ "$lint_rc" -ne 0 ]; then
  echo "== Lint failed (scripts/lint.sh exit code $lint_rc): see its output at the top =="
else
  echo "== Lint: passed (or not run) =="
fi
echo "== SQLite pass exit code: $sqlite_rc; PostgreSQL + Redis pass exit code: $postgres_rc =="
if [ "${#failed_profiles[@]}" -gt 0 ]; then
  echo "== HaloPSA profiles with failures: ${failed_profiles[*]} =="
else
  echo "== HaloPSA profiles: all passed (or not run) =="
fi
[ "$lint_rc" -eq 0 ] && [ "$sqlite_rc" -eq 0 ] && [ "${#failed_profiles[@]}" -eq 0 ] && [ "$postgres_rc" -eq 0 ]
