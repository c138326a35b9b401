#!/usr/bin/env bash
# `make run`: migrate, prepare the demo (partner, user, connection to the built-in HaloPSA
# sandbox), then run the sandbox, the web server and the qcluster until Ctrl-C stops all three.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
PORT="${PORT:-8000}"
SANDBOX_PORT="${SANDBOX_PORT:-8765}"

$PY manage.py migrate --noinput
$PY manage.py createcachetable
$PY manage.py collectstatic --noinput >/dev/null

# Job control: without it, background jobs of a script ignore SIGINT, and the Ctrl-C forwarded
# below would not reach the qcluster and the web server.
set -m
pids=()
stop_all() {
  trap - INT TERM EXIT
  echo
  echo "Stopping..."
  # SIGINT: django-q2's qcluster can deadlock on SIGTERM (django-q2#346).
  for pid in "${pids[@]}"; do kill -INT "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
}
trap stop_all INT TERM EXIT

$PY manage.py halopsa_sandbox --port "$SANDBOX_PORT" --dataset demo &
pids+=($!)
# Wait for the sandbox to answer before the demo connection is tested against it.
for _ in $(seq 1 50); do
  if $PY -c "import urllib.request,sys; urllib.request.urlopen('http://127.0.0.1:$SANDBOX_PORT/api/authinfo', timeout=1)" 2>/dev/null; then break; fi
  sleep 0.2
done
$PY manage.py setup_demo --sandbox-url "http://127.0.0.1:$SANDBOX_PORT"
$PY manage.py ensure_schedules

$PY manage.py qcluster &
pids+=($!)
echo "syncportal: http://127.0.0.1:$PORT  (Ctrl-C stops the portal, the worker and the sandbox)"
$PY manage.py runserver "127.0.0.1:$PORT" --noreload &
pids+=($!)
wait -n "${pids[@]}" || true
