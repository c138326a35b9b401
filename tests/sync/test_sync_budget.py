"""A run that reads lists waits out the client-side request budget instead of failing (issue 10)."""

from __future__ import annotations

import pytest

from integrations.models import Invoice


@pytest.mark.sandbox(dataset="demo", rate_limit=0)
def test_full_sync_waits_for_the_budget_window_instead_of_failing(connection, halo_sandbox, run_sync, settings):
    # 3 requests per second (capacity 2 after headroom) and a 0.1 s "short wait": the demo
    # dataset's lists take 4 pages, so only waiting out the window lets the run finish.
    settings.HALOPSA_RATE_LIMIT = 3
    settings.HALOPSA_RATE_WINDOW = 1
    settings.HALOPSA_BUDGET_MAX_WAIT = 0.1
    settings.HALOPSA_PDF_BATCH = 0
    run = run_sync(connection, "full")
    assert run.state == "succeeded", run.message
    assert run.api_requests >= 4
    assert Invoice.objects.filter(connection=connection).count() > 0


@pytest.mark.sandbox(dataset="demo", rate_limit=0)
def test_one_invoice_sync_keeps_the_short_budget_wait(connection, halo_sandbox, run_sync, settings):
    settings.HALOPSA_RATE_LIMIT = 8
    settings.HALOPSA_RATE_WINDOW = 2
    settings.HALOPSA_BUDGET_MAX_WAIT = 0.1
    from integrations.halopsa.budget import RequestBudget

    budget = RequestBudget(f"conn:{connection.pk}")
    for _ in range(budget.capacity):
        budget.acquire()
    run = run_sync(connection, "invoice", trigger="webhook", halopsa_id=1)
    assert run.state == "failed"
    assert "limit" in run.message
