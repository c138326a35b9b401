"""Connections: add, edit, test, pause/resume, enable/disable, delete, and the connection page."""

from __future__ import annotations

import logging

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied, ValidationError
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_http_methods, require_POST

from integrations import selectors
from integrations.forms import ConnectionForm, ConnectionStateForm, SyncRequestForm
from integrations.halopsa.exceptions import HaloError
from integrations.models import Connection, SyncRun
from integrations.services import connections as connection_services
from integrations.services.audit import audit_record
from integrations.services.sync import sync_queue
from integrations.services.webhooks import (
    WEBHOOK_SCHEME_BASIC,
    WEBHOOK_SCHEME_HMAC,
    WebhookError,
    webhook_auth_scheme,
    webhook_auth_scheme_set,
    webhook_setup_instructions,
    webhook_subscription_create,
    webhook_subscription_outcome,
)
from integrations.tenancy import get_visible_or_404
from integrations.views.charts import runs_chart
from integrations.views.confirm import Fact, confirmation_page, confirmed

logger = logging.getLogger(__name__)


def _apply_service_errors(form, exc: ValidationError) -> None:
    if hasattr(exc, "error_dict"):
        for name, errors in exc.error_dict.items():
            form.add_error(name if name in form.fields else None, errors)
    else:
        form.add_error(None, exc)


@login_required
@require_http_methods(["GET", "POST"])
def connection_create(request):
    if not request.user.is_staff and request.user.partner_id is None:
        raise PermissionDenied("Your account is not linked to a partner.")
    form = ConnectionForm(request.POST or None, user=request.user)
    if request.method == "POST" and form.is_valid():
        try:
            connection = connection_services.connection_create(
                partner=form.partner_for_create(),
                user=request.user,
                check_credentials=True,
                start_sync=True,
                **form.service_fields(),
            )
        except ValidationError as exc:
            _apply_service_errors(form, exc)
        else:
            messages.success(
                request,
                f"Connection “{connection.name}” added: HaloPSA {connection.halopsa_version} accepted "
                "the credentials, and the first full sync has started.",
            )
            return redirect("connection_detail", pk=connection.pk)
    return render(request, "integrations/connection_form.html", {"form": form, "connection": None})


@login_required
@require_http_methods(["GET", "POST"])
def connection_edit(request, pk: int):
    connection = get_visible_or_404(Connection, request.user, pk=pk)
    form = ConnectionForm(request.POST or None, instance=connection, user=request.user)
    if request.method == "POST" and form.is_valid():
        try:
            connection_services.connection_update(
                connection=connection, user=request.user, check_credentials=True, **form.service_fields()
            )
        except ValidationError as exc:
            _apply_service_errors(form, exc)
        else:
            messages.success(request, "Connection saved.")
            return redirect("connection_detail", pk=connection.pk)
    return render(request, "integrations/connection_form.html", {"form": form, "connection": connection})


@login_required
@require_http_methods(["GET", "POST"])
def connection_delete(request, pk: int):
    connection = get_visible_or_404(Connection.objects.select_related("partner"), request.user, pk=pk)
    if request.method == "POST":
        name = connection.name
        connection_services.connection_delete(connection=connection, user=request.user)
        messages.success(request, f"Connection “{name}” deleted with everything synced through it.")
        return redirect("home")
    return render(request, "integrations/connection_confirm_delete.html", {"connection": connection})


@login_required
@require_POST
def connection_test(request, pk: int):
    connection = get_visible_or_404(Connection, request.user, pk=pk)

    result = connection_services.connection_test(connection=connection)
    # connection_test takes no user (contract), so the person's action is recorded here.
    audit_record(
        user=request.user,
        action="connection.test",
        summary=f"Tested connection {connection.name}: {'ok' if result.ok else result.failure}",
        obj=connection,
        ok=result.ok,
        failure=result.failure,
    )
    if result.ok:
        connection.refresh_from_db()
        mode = "real time (webhooks)" if connection.is_realtime else "hourly (HaloPSA older than 2.122.1)"
        messages.success(request, f"Connected. HaloPSA version {result.version}; sync mode: {mode}.")
    else:
        messages.error(request, f"Test failed — {result.failure_label}: {result.message}")
    for problem in result.problems:
        messages.warning(request, problem.get("message", ""))
    return redirect(reverse("connection_detail", args=[connection.pk]) + "#halopsa-shape")


@login_required
@require_POST
def connection_state(request, pk: int):
    connection = get_visible_or_404(Connection, request.user, pk=pk)
    form = ConnectionStateForm(request.POST)
    if not form.is_valid():
        messages.error(request, "Unknown action.")
        return redirect("connection_detail", pk=connection.pk)

    connection_services.connection_set_state(connection=connection, user=request.user, **form.state_kwargs())
    messages.success(
        request,
        {
            "pause": "Paused: scheduled syncs are skipped until you resume.",
            "resume": "Resumed.",
            "enable": "Enabled.",
            "disable": "Disabled: nothing syncs or pushes.",
        }[form.cleaned_data["action"]],
    )
    return redirect("connection_detail", pk=connection.pk)


@login_required
@require_POST
def connection_sync(request, pk: int):
    """Manual resync (full, one entity, new data since the last sync, unpaid); a second click reuses the active run."""
    connection = get_visible_or_404(Connection, request.user, pk=pk)
    form = SyncRequestForm(request.POST)
    if not form.is_valid():
        messages.error(
            request, "Choose what to sync: " + "; ".join(str(e) for errs in form.errors.values() for e in errs)
        )
        return redirect("connection_detail", pk=connection.pk)
    if not connection.enabled:
        messages.error(request, "This connection is disabled; enable it before syncing.")
        return redirect("connection_detail", pk=connection.pk)
    run, started = sync_queue(
        connection=connection,
        scope=form.cleaned_data["scope"],
        trigger=SyncRun.Trigger.MANUAL,
        entity=form.cleaned_data["entity"],
        user=request.user,
    )
    report_sync_queued(request, run, started)
    return redirect("connection_detail", pk=connection.pk)


def report_sync_queued(request, run, started: bool) -> None:
    """Tell the person what their resync click did (queued, already running, or already done inline)."""
    run.refresh_from_db()
    if not started:
        messages.info(
            request,
            f"A sync is already {run.get_state_display().lower()} ({run.scope_label}); no second one was started.",
        )
    elif run.is_active:
        messages.success(request, f"Sync queued: {run.scope_label}.")
    else:
        messages.success(request, f"Sync {run.get_state_display().lower()}: {run.scope_label}.")


@login_required
def connection_detail(request, pk: int):
    connection = selectors.connection_for_page(user=request.user, pk=pk)
    health = selectors.connection_health(connection=connection)
    runs = selectors.connection_runs(connection=connection)
    progress_run = selectors.connection_progress_run(connection=connection)
    context = {
        "connection": connection,
        "health": health,
        "runs": runs,
        "webhook_runs": selectors.connection_webhook_runs(connection=connection),
        "chart": runs_chart(runs[:20]),
        "progress": selectors.run_progress(progress_run) if progress_run else None,
        "errors": selectors.connection_open_errors(connection=connection),
        "webhook_events": selectors.connection_webhook_events(connection=connection),
        "push_jobs": selectors.connection_push_jobs(connection=connection),
        "shape": connection_services.connection_shape_summary(connection=connection),
        "webhook_setup": _webhook_setup(connection),
        "webhook_health": selectors.webhook_health(connection),
        "sync_form": SyncRequestForm(),
    }
    return render(request, "integrations/connection_detail.html", context)


@login_required
@require_POST
def connection_webhook_subscribe(request, pk: int):
    """Register the connection's webhook in HaloPSA through its API (needs Admin:webhooks), a helper
    beside the manual set-up: the message says what HaloPSA showed when read back."""
    connection = get_visible_or_404(Connection, request.user, pk=pk)

    try:
        check = webhook_subscription_create(connection=connection, user=request.user)
    except (WebhookError, HaloError) as exc:
        messages.error(request, f"Webhook not registered: {exc.message} Create it by hand with the set-up steps.")
    else:
        complete, outcome = webhook_subscription_outcome(check)
        (messages.success if complete else messages.warning)(request, outcome)
    return redirect(reverse("connection_detail", args=[connection.pk]) + "#webhooks")


WEBHOOK_SCHEME_LABELS = {
    WEBHOOK_SCHEME_BASIC: "Basic (username and password)",
    WEBHOOK_SCHEME_HMAC: "HMAC signature (a shared secret signs each delivery)",
}


@login_required
@require_POST
def connection_webhook_auth(request, pk: int):
    """Switch how the connection's webhooks authenticate (one scheme at a time). Deliveries signed
    the old way are refused from then on, so the switch is confirmed first."""
    connection = get_visible_or_404(Connection, request.user, pk=pk)
    scheme, current = request.POST.get("scheme", ""), webhook_auth_scheme(connection)
    page = reverse("connection_detail", args=[connection.pk]) + "#webhooks"
    if scheme not in WEBHOOK_SCHEME_LABELS:
        messages.error(request, "Choose Basic or HMAC for the webhook authentication.")
        return redirect(page)
    if scheme == current:
        messages.info(request, f"Webhooks already use {WEBHOOK_SCHEME_LABELS[scheme]}.")
        return redirect(page)
    if not confirmed(request):
        return confirmation_page(
            request,
            title=f"Switch the webhooks of {connection.name} to {scheme.upper()}?",
            facts=[
                Fact("Connection", connection.name),
                Fact("Now", WEBHOOK_SCHEME_LABELS[current]),
                Fact("After", WEBHOOK_SCHEME_LABELS[scheme], emphasis=True),
            ],
            consequence="From now on deliveries authenticated the old way are refused (the hourly sync still "
            "catches up). Change the webhook in HaloPSA to match the new set-up shown on the "
            "connection page, or register it again.",
            confirm_label=f"Switch to {scheme.upper()}",
            cancel_url=page,
            danger=True,
        )
    webhook_auth_scheme_set(connection=connection, scheme=scheme, user=request.user)
    messages.success(
        request,
        f"Webhooks now authenticate with {WEBHOOK_SCHEME_LABELS[scheme]}; change the webhook in HaloPSA to match.",
    )
    return redirect(page)


def _webhook_setup(connection: Connection):
    try:
        return webhook_setup_instructions(connection)
    except Exception:  # instructions are a convenience: never break the connection page over them
        logger.exception("webhook set-up instructions failed for connection %s", connection.pk)
        return None
