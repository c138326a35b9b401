"""Sync runs, their progress (polled as JSON), and retrying what failed: records, webhooks, pushes."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import JsonResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_GET, require_POST

from integrations import selectors
from integrations.models import Connection, PushJob, SyncError, SyncRun, WebhookEvent
from integrations.services.push import PushJobRefused, push_job_retry as push_retry
from integrations.services.sync import sync_error_retry as error_retry
from integrations.services.webhooks import WebhookError, webhook_event_replay as event_replay
from integrations.tenancy import get_visible_or_404


@login_required
def run_detail(request, pk: int):
    run = get_visible_or_404(SyncRun.objects.select_related("connection", "requested_by"), request.user, pk=pk)
    errors = run.errors.order_by("-created_at", "-id")[:200]
    return render(
        request,
        "integrations/run_detail.html",
        {"run": run, "connection": run.connection, "errors": errors, "progress": selectors.run_progress(run)},
    )


@login_required
@require_GET
def run_progress(request, pk: int):
    run = get_visible_or_404(SyncRun, request.user, pk=pk)
    return JsonResponse(selectors.run_progress(run))


@login_required
@require_GET
def connection_progress(request, pk: int):
    """The connection's running (or last) sync, for the progress bar on its page."""
    connection = get_visible_or_404(Connection, request.user, pk=pk)
    run = selectors.connection_progress_run(connection=connection)
    return JsonResponse({"run": selectors.run_progress(run) if run else None})


@login_required
@require_POST
def sync_error_retry(request, pk: int):
    error = get_visible_or_404(SyncError.objects.select_related("connection"), request.user, pk=pk)

    run = error_retry(error=error, user=request.user)
    error.refresh_from_db()
    if error.resolved_at:
        messages.success(request, f"{error.entity} #{error.halopsa_id} synced again.")
    elif run.is_active:
        messages.info(request, f"Retry of {error.entity} #{error.halopsa_id} queued ({run.get_scope_display()}).")
    else:
        messages.warning(
            request,
            f"Retried {error.entity} #{error.halopsa_id}: {run.get_state_display().lower()}. {run.message}".strip(),
        )
    return redirect("connection_detail", pk=error.connection_id)


@login_required
@require_POST
def webhook_event_replay(request, pk: int):
    event = get_visible_or_404(WebhookEvent, request.user, pk=pk)

    try:
        event_replay(event=event, user=request.user)
    except WebhookError as exc:
        messages.error(request, exc.message)
    else:
        event.refresh_from_db()
        messages.success(request, f"Webhook event replayed: {event.get_state_display().lower()}.")
    return redirect("connection_detail", pk=event.connection_id)


@login_required
@require_POST
def push_job_retry(request, pk: int):
    job = get_visible_or_404(PushJob, request.user, pk=pk)

    try:
        push_retry(job=job, user=request.user)
    except PushJobRefused as exc:
        messages.error(request, exc.message)
    else:
        job.refresh_from_db()
        messages.success(request, f"Push retried: {job.get_state_display().lower()}.")
    return redirect("connection_detail", pk=job.connection_id)
