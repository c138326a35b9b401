"""django-q2 entry points for pushes to HaloPSA: thin, take ids, safe to run twice."""

from __future__ import annotations


def push_job_task(job_id: int) -> None:
    from integrations.services.push import push_job_process

    push_job_process(job_id=job_id)


def push_sweep_task() -> int:
    """Scheduled every minute (Schedule "push-sweep"): re-sends due and abandoned pushes."""
    from integrations.services.push import push_due_dispatch

    return push_due_dispatch()
