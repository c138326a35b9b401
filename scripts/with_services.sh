#!/usr/bin/env bash
# Run a command against a throw-away PostgreSQL and Redis:
#   scripts/with_services.sh .venv/bin/pytest -m "not e2e"
#
# Installs redis-server (and PostgreSQL, if no server binaries are found) with apt-get when
# missing, starts both on 127.0.0.1 on free ports inside a fresh temporary directory, exports
# DATABASE_URL and REDIS_URL, runs the command, then always stops both and removes the
# directory. The command's exit code is this script's exit code.
#
# initdb/postgres refuse to run as root: as root they run as the `postgres` system user, as
# anyone else (a developer laptop) they run as that user. Nothing is written outside the
# temporary directory, nothing listens beyond loopback, and no service is left running.
set -euo pipefail

if [ "$#" -eq 0 ]; then
  echo "usage: $0 COMMAND [ARGS...]" >&2
  exit 2
fi

log() { echo "with_services: $*" >&2; }
die() { log "$*"; exit 1; }

IS_ROOT=0
[ "$(id -u)" -eq 0 ] && IS_ROOT=1

# Run a command as root (directly, or through sudo); fail when neither is possible.
as_root() {
  if [ "$IS_ROOT" -eq 1 ]; then
    "$@"
  elif command -v sudo >/dev/null 2>&1; then
    sudo "$@"
  else
    return 1
  fi
}

apt_install() {
  local pkg="$1" why="$2"
  command -v apt-get >/dev/null 2>&1 || die "$why is missing and apt-get is not available: install '$pkg' yourself."
  log "installing $pkg ($why is missing)..."
  if ! { as_root apt-get update -qq && as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$pkg" >/dev/null; }; then
    die "$why is missing and could not be installed (needs root or sudo): run 'sudo apt-get install $pkg'."
  fi
}

# --- Find (or install) the binaries ----------------------------------------------------------
find_pg_bindir() {
  local dir
  if [ -n "${PG_BINDIR:-}" ] && [ -x "$PG_BINDIR/initdb" ]; then echo "$PG_BINDIR"; return 0; fi
  # Debian/Ubuntu keep server binaries per major version, off PATH; take the newest.
  dir="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)"
  if [ -n "$dir" ] && [ -x "$dir/initdb" ]; then echo "$dir"; return 0; fi
  if command -v pg_config >/dev/null 2>&1; then
    dir="$(pg_config --bindir)"
    if [ -x "$dir/initdb" ]; then echo "$dir"; return 0; fi
  fi
  # Homebrew and other layouts put initdb on PATH.
  if command -v initdb >/dev/null 2>&1; then dirname "$(command -v initdb)"; return 0; fi
  return 1
}

PG_BIN="$(find_pg_bindir || true)"
if [ -z "$PG_BIN" ]; then
  apt_install postgresql "PostgreSQL (initdb)"
  PG_BIN="$(find_pg_bindir || true)"
  [ -n "$PG_BIN" ] || die "PostgreSQL was installed but initdb was not found; set PG_BINDIR."
fi
REDIS_SERVER="$(command -v redis-server || true)"
if [ -z "$REDIS_SERVER" ]; then
  apt_install redis-server "redis-server"
  REDIS_SERVER="$(command -v redis-server || true)"
  [ -n "$REDIS_SERVER" ] || die "redis-server was installed but is not on PATH."
fi

PYTHON="$(command -v python3 || command -v python3.11 || command -v python || true)"
[ -n "$PYTHON" ] || die "python3 is needed to pick free ports."

# A port nobody listens on right now (the kernel picks it; a race with another process is
# possible but rare, and the start below fails loudly if it happens).
free_port() {
  "$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

# --- Temporary directory and cleanup -----------------------------------------------------------
WORKDIR="$(mktemp -d "${TMPDIR:-/tmp}/syncportal-services.XXXXXX")"
PG_DATA="$WORKDIR/pgdata"
PG_SOCK="$WORKDIR/pgsock"
PG_LOG="$WORKDIR/postgres.log"
REDIS_DIR="$WORKDIR/redis"
REDIS_PID=""
PG_STARTED=0

# Run a PostgreSQL binary as the user that owns the cluster, from a directory it can enter.
pg_as_owner() {
  if [ "$IS_ROOT" -eq 1 ] && command -v runuser >/dev/null 2>&1; then
    (cd "$WORKDIR" && runuser -u postgres -- "$@")
  elif [ "$IS_ROOT" -eq 1 ]; then
    (cd "$WORKDIR" && su -s /bin/sh postgres -c '"$0" "$@"' -- "$@")
  else
    (cd "$WORKDIR" && "$@")
  fi
}

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  if [ "$PG_STARTED" -eq 1 ]; then
    pg_as_owner "$PG_BIN/pg_ctl" -D "$PG_DATA" -m fast -w -t 30 stop >/dev/null 2>&1 \
      || pg_as_owner "$PG_BIN/pg_ctl" -D "$PG_DATA" -m immediate stop >/dev/null 2>&1 || true
  fi
  if [ -n "$REDIS_PID" ] && kill -0 "$REDIS_PID" 2>/dev/null; then
    kill -TERM "$REDIS_PID" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$REDIS_PID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$REDIS_PID" 2>/dev/null || true
    wait "$REDIS_PID" 2>/dev/null || true
  fi
  rm -rf "$WORKDIR"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

mkdir -p "$PG_SOCK" "$REDIS_DIR"
if [ "$IS_ROOT" -eq 1 ]; then
  getent passwd postgres >/dev/null || die "running as root needs the 'postgres' system user (initdb refuses root)."
  command -v runuser >/dev/null 2>&1 || command -v su >/dev/null 2>&1 \
    || die "running as root needs 'runuser' or 'su' to start PostgreSQL as 'postgres'."
  chown postgres "$WORKDIR" "$PG_SOCK"
  chmod 0700 "$WORKDIR"
fi

# --- PostgreSQL ------------------------------------------------------------------------------
pg_as_owner "$PG_BIN/initdb" -D "$PG_DATA" -U postgres -A trust -E UTF8 --locale=C --no-sync \
  >"$WORKDIR/initdb.log" 2>&1 || { cat "$WORKDIR/initdb.log" >&2; die "initdb failed."; }
# Loopback only, socket in the temp dir; durability off because the data is thrown away.
cat >>"$PG_DATA/postgresql.conf" <<EOF
listen_addresses = '127.0.0.1'
unix_socket_directories = '$PG_SOCK'
max_connections = 200
fsync = off
synchronous_commit = off
full_page_writes = off
EOF
if [ "$IS_ROOT" -eq 1 ]; then touch "$PG_LOG" && chown postgres "$PG_LOG"; fi
PG_STARTED=1
# The free port can be taken between choosing and binding it; try another one then.
for attempt in 1 2 3; do
  PG_PORT="$(free_port)"
  if pg_as_owner "$PG_BIN/pg_ctl" -D "$PG_DATA" -l "$PG_LOG" -o "-p $PG_PORT" -w -t 60 start >/dev/null; then
    break
  fi
  [ "$attempt" -lt 3 ] || { cat "$PG_LOG" >&2; die "PostgreSQL did not start (last port tried: $PG_PORT)."; }
done
pg_as_owner "$PG_BIN/createdb" -h 127.0.0.1 -p "$PG_PORT" -U postgres syncportal \
  || die "could not create the syncportal database."

# --- Redis -----------------------------------------------------------------------------------
redis_ping() {
  # Plain RESP over bash's /dev/tcp, so redis-cli is not needed. A subshell keeps the fd and
  # the silenced stderr (connection refused while starting) out of this shell.
  (
    exec 3<>"/dev/tcp/127.0.0.1/$REDIS_PORT" || exit 1
    printf 'PING\r\n' >&3
    reply=""
    read -r -t 2 reply <&3 || true
    [[ "$reply" == "+PONG"* ]]
  ) 2>/dev/null
}

start_redis() {
  REDIS_PORT="$(free_port)"
  # No RDB snapshots, no AOF, no unix socket: an in-memory broker that disappears with the dir.
  "$REDIS_SERVER" --bind 127.0.0.1 --port "$REDIS_PORT" --dir "$REDIS_DIR" --save "" --appendonly no \
    --daemonize no --protected-mode yes --logfile "$WORKDIR/redis.log" &
  REDIS_PID=$!
  for _ in $(seq 1 100); do
    redis_ping && return 0
    kill -0 "$REDIS_PID" 2>/dev/null || return 1  # exited: most likely the port was taken
    sleep 0.1
  done
  return 1
}
for attempt in 1 2 3; do
  start_redis && break
  kill -KILL "$REDIS_PID" 2>/dev/null || true
  wait "$REDIS_PID" 2>/dev/null || true
  REDIS_PID=""
  [ "$attempt" -lt 3 ] || { cat "$WORKDIR/redis.log" >&2; die "redis-server did not start (last port tried: $REDIS_PORT)."; }
done

export DATABASE_URL="postgres://postgres@127.0.0.1:$PG_PORT/syncportal"
export REDIS_URL="redis://127.0.0.1:$REDIS_PORT/0"
log "PostgreSQL $("$PG_BIN/postgres" --version | awk '{print $3}') on 127.0.0.1:$PG_PORT, Redis on 127.0.0.1:$REDIS_PORT ($WORKDIR)"

# Run the command in the foreground (not exec), so the trap stops the services afterwards.
set +e
"$@"
rc=$?
set -e
exit "$rc"
