"""The Procfile names processes and commands that exist (a renamed command would break deploys)."""

from __future__ import annotations

import shlex

from django.core.management import get_commands

from tests.production.procs import BASE_DIR


def procfile() -> dict[str, str]:
    entries = {}
    for line in (BASE_DIR / "Procfile").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, command = line.split(":", 1)
            entries[name.strip()] = command.strip()
    return entries


def test_procfile_has_web_worker_and_release():
    entries = procfile()

    assert set(entries) == {"web", "worker", "release"}
    assert shlex.split(entries["web"])[:2] == ["gunicorn", "syncportal.asgi"]
    assert shlex.split(entries["worker"]) == ["python", "manage.py", "qcluster"]


def test_every_manage_py_command_in_the_procfile_exists():
    available = get_commands()
    used = []
    for command in procfile().values():
        for step in command.split("&&"):
            words = shlex.split(step)
            if words[:2] == ["python", "manage.py"]:
                used.append(words[2])
    assert {"qcluster", "migrate", "createcachetable", "ensure_schedules"} <= set(used)
    assert [name for name in used if name not in available] == []


def test_gunicorn_config_reads_port_and_concurrency_from_the_environment(monkeypatch):
    import runpy

    monkeypatch.setenv("PORT", "9123")
    monkeypatch.setenv("HOST", "127.0.0.1")
    monkeypatch.setenv("WEB_CONCURRENCY", "3")
    config = runpy.run_path(str(BASE_DIR / "gunicorn.conf.py"))

    assert config["bind"] == ["127.0.0.1:9123"]
    assert config["workers"] == 3
    assert config["accesslog"] == "-"
    assert config["timeout"] > 0 and config["graceful_timeout"] > 0

    monkeypatch.delenv("WEB_CONCURRENCY")
    import multiprocessing

    assert runpy.run_path(str(BASE_DIR / "gunicorn.conf.py"))["workers"] == multiprocessing.cpu_count() * 2 + 1
