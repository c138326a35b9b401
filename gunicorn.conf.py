"""gunicorn settings for the web process (`gunicorn syncportal.asgi`; read from the working directory).

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
# asgi workers: each reads request bodies on an event loop, so a client that sends its body slowly
# (or never finishes it) holds a coroutine, not the worker; sync workers were stalled by as many
# such clients as there were workers (docs/deploy.md, "Slow clients"). Django still runs the views
# of a worker one at a time, in one thread, as a sync worker did; slow HaloPSA work runs in qcluster.
worker_class = "asgi"
workers = _int("WEB_CONCURRENCY", multiprocessing.cpu_count() * 2 + 1)
# Open connections per worker (slow or idle ones included) before it stops accepting more.
worker_connections = _int("GUNICORN_WORKER_CONNECTIONS", 1000)
# Django answers no ASGI lifespan events.
asgi_lifespan = "off"
# A view that runs longer than this is a bug or a stuck database; the worker is replaced (below).
# Also the longest wait for the next piece of a request body before the request is dropped.
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


def on_starting(server):
    """asgi workers need the ASGI application: say so, instead of answering 500 to everything."""
    app_uri = (getattr(server.app, "app_uri", "") or "").split(":")[0]
    if server.cfg.worker_class_str == "asgi" and app_uri == "syncportal.wsgi":
        raise RuntimeError(
            "gunicorn.conf.py runs asgi workers: start `gunicorn syncportal.asgi --config gunicorn.conf.py`."
        )


def post_worker_init(worker):
    """Stop the heartbeat while a view has run longer than `timeout`, so the arbiter replaces the
    worker as it replaced a stuck sync worker (the event loop would otherwise keep beating while
    the one thread that runs Django's views is stuck)."""
    if worker.cfg.worker_class_str != "asgi":
        return
    from syncportal.asgi_guard import oldest_request_age

    notify = worker.notify

    def notify_unless_stuck():
        if oldest_request_age() <= worker.cfg.timeout:
            notify()

    worker.notify = notify_unless_stuck
