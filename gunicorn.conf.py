"""gunicorn settings for the web process (`gunicorn syncportal.wsgi`; read from the working directory).

Every value comes from the environment so one file serves a laptop, a PaaS and a fleet of nodes
behind a load balancer (docs/deploy.md). whitenoise serves static files from inside the app.
"""
from __future__ import annotations

import multiprocessing
import os


def _int(name: str, default: int) -> int:
    value = os.environ.get(name, "").strip()
    return int(value) if value else default


# PaaS convention: listen on $PORT. GUNICORN_BIND overrides everything (e.g. "unix:/run/syncportal.sock").
bind = [os.environ.get("GUNICORN_BIND") or f"{os.environ.get('HOST', '0.0.0.0')}:{_int('PORT', 8000)}"]
# Sync workers: requests are short (pages, webhooks stored then queued); slow HaloPSA work runs in qcluster.
workers = _int("WEB_CONCURRENCY", multiprocessing.cpu_count() * 2 + 1)
threads = _int("GUNICORN_THREADS", 1)
# A request that takes longer than this is a bug or a stuck database; the worker is replaced.
timeout = _int("GUNICORN_TIMEOUT", 30)
graceful_timeout = _int("GUNICORN_GRACEFUL_TIMEOUT", 30)
keepalive = _int("GUNICORN_KEEPALIVE", 5)
# Recycle workers now and then so a slow leak never grows unbounded (jitter avoids all at once).
max_requests = _int("GUNICORN_MAX_REQUESTS", 2000)
max_requests_jitter = _int("GUNICORN_MAX_REQUESTS_JITTER", 200)

# Logs go to stdout/stderr, collected by systemd, the container runtime or the PaaS.
accesslog = "-"
errorlog = "-"
loglevel = os.environ.get("GUNICORN_LOG_LEVEL", "info")
access_log_format = '%(h)s "%(r)s" %(s)s %(b)s %(M)sms "%(a)s"'

# Only the load balancer may claim a request arrived over https (X-Forwarded-Proto); set
# FORWARDED_ALLOW_IPS to its address(es). Django trusts the header only with BEHIND_TLS_PROXY=true.
forwarded_allow_ips = os.environ.get("FORWARDED_ALLOW_IPS", "127.0.0.1,::1")

# The heartbeat file lives in memory where available: a slow disk must not look like a hung worker.
if os.path.isdir("/dev/shm"):
    worker_tmp_dir = "/dev/shm"
# No per-user control socket (~/.gunicorn): several instances, or a read-only home, must not clash.
control_socket_disable = True
