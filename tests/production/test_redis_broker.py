"""django-q2's Redis broker against a real Redis (the PostgreSQL+Redis pass of `make test`).

These tests fail, not skip, when REDIS_URL is set but Redis does not answer.
"""

from __future__ import annotations

import os
import signal
import subprocess
import uuid

import pytest

from tests.production.procs import (
    MANAGE,
    PYTHON,
    clean_env,
    database_url_for,
    free_port,
    is_postgres,
    popen,
    production_env,
    run,
)

REDIS_URL = os.environ.get("REDIS_URL", "")
needs_redis = pytest.mark.skipif(not REDIS_URL, reason="runs in make test's PostgreSQL+Redis pass (needs REDIS_URL)")


@needs_redis
def test_the_configured_broker_is_redis_and_answers():
    from django_q.brokers import get_broker
    from django_q.brokers.redis_broker import Redis

    broker = get_broker()

    assert isinstance(broker, Redis)
    assert broker.ping() is True
    assert broker.info().startswith("Redis ")


@needs_redis
def test_a_message_goes_through_redis_in_order_and_once():
    from django_q.brokers import get_broker

    broker = get_broker(list_key=f"syncportal-test-{uuid.uuid4().hex}")
    try:
        broker.enqueue("first")
        broker.enqueue("second")
        assert broker.queue_size() == 2

        assert broker.dequeue() == [(None, b"first")]
        assert broker.dequeue() == [(None, b"second")]
        assert broker.dequeue() is None  # empty after a 1 s blocking wait
    finally:
        broker.delete_queue()


@needs_redis
def test_the_django_cache_is_redis_when_redis_url_is_set(tmp_path):
    # The test settings swap in LocMem; the production settings must use Redis with the same URL.
    script = (
        "import django; django.setup(); from django.core.cache import cache, caches; "
        "cache.set('syncportal-probe', 41); print(cache.incr('syncportal-probe'), type(caches['default']).__name__)"
    )
    result = run([PYTHON, "-c", script], production_env(tmp_path, REDIS_URL=REDIS_URL))

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "42 RedisCache"


def test_an_unreachable_redis_fails_loudly(tmp_path):
    """REDIS_URL pointing at a closed port: the broker raises instead of pretending to work."""
    closed = f"redis://127.0.0.1:{free_port()}/0"
    script = (
        "import django; django.setup(); from django_q.brokers import get_broker; "
        "b = get_broker(); print(type(b).__name__); b.ping()"
    )
    env = clean_env(tmp_path, DJANGO_SETTINGS_MODULE="syncportal.settings_test", REDIS_URL=closed)

    result = run([PYTHON, "-c", script], env)

    assert result.returncode != 0
    assert "Redis" in result.stdout
    assert "ConnectionError" in result.stderr


@needs_redis
@pytest.mark.skipif(
    not is_postgres(),
    reason="runs in make test's PostgreSQL+Redis pass (the worker process must share the test database)",
)
def test_a_qcluster_process_runs_a_task_enqueued_through_redis(transactional_db, tmp_path):
    """The production path end to end: enqueue on Redis here, a separate qcluster runs it and stores the result."""
    from django.db import connection
    from django_q.brokers import get_broker
    from django_q.tasks import async_task, result

    env = clean_env(
        tmp_path,
        DJANGO_SETTINGS_MODULE="syncportal.settings_test",
        DATABASE_URL=database_url_for(connection.settings_dict),
        REDIS_URL=REDIS_URL,
        Q_WORKERS="2",
    )
    cluster = popen([PYTHON, MANAGE, "qcluster"], env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    # Same cluster name on both sides: django-q2 salts its task signatures with it.
    broker = get_broker()
    broker.purge_queue()
    try:
        task_id = async_task("operator.add", 2, 3, broker=broker, sync=False)
        value = result(task_id, wait=60_000)
    finally:
        # SIGINT: qcluster can deadlock on SIGTERM (django-q2#346).
        cluster.send_signal(signal.SIGINT)
        try:
            output, _ = cluster.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            cluster.kill()
            output, _ = cluster.communicate()
        broker.delete_queue()

    assert value == 5, output
    assert cluster.returncode == 0, output
