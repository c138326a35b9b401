#!/usr/bin/env bash
# `make lint`: ruff (lint, import order), ruff format --check, mypy (django-stubs) and a check that
# the models and the migrations agree. Settings live in pyproject.toml. Every tool always runs; the
# command fails if any of them failed, and says which. `.venv/bin/ruff format .` fixes the format.
set -uo pipefail
cd "$(dirname "$0")/.."
VENV=".venv/bin"
failed=()

echo "== ruff check =="
"$VENV/ruff" check . || failed+=("ruff check")

echo "== ruff format --check =="
"$VENV/ruff" format --check . || failed+=("ruff format (run .venv/bin/ruff format .)")

echo "== mypy =="
"$VENV/mypy" || failed+=("mypy")

echo "== makemigrations --check =="
# The settings the test suite uses (pytest.ini), so no local .env is needed or written.
if ! DJANGO_SETTINGS_MODULE=syncportal.settings_test "$VENV/python" manage.py makemigrations --check --dry-run; then
  echo "The models and the migrations differ: run manage.py makemigrations and commit the migration."
  failed+=("makemigrations --check")
fi

if [ "${#failed[@]}" -gt 0 ]; then
  echo "== lint: FAILED: ${failed[*]} =="
  exit 1
fi
echo "== lint: passed =="
