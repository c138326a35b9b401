"""Retry/replay buttons and PDF fetch-on-first-view, with the real services and the sandbox."""

from __future__ import annotations

from django.urls import reverse

from integrations.models import AuditEvent, InvoicePdf, PushJob, SyncRun, WebhookEvent


def test_push_retry_button(alice_client, mine, partner_user, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=False):
        response = alice_client.post(reverse("push_job_retry", kwargs={"pk": mine.push_job.pk}), follow=True)
    assert "Push retried" in response.content.decode()
    assert PushJob.objects.get(pk=mine.push_job.pk).state == PushJob.State.PENDING
    assert AuditEvent.objects.filter(action="push.retry", user=partner_user).exists()


def test_push_retry_of_finished_job_is_explained(alice_client, mine):
    PushJob.objects.filter(pk=mine.push_job.pk).update(state=PushJob.State.DONE)
    response = alice_client.post(reverse("push_job_retry", kwargs={"pk": mine.push_job.pk}), follow=True)
    assert "only failed or waiting pushes can be retried" in response.content.decode()


def test_webhook_replay_button(alice_client, mine, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=False):
        response = alice_client.post(reverse("webhook_event_replay", kwargs={"pk": mine.webhook_event.pk}), follow=True)
    assert "Webhook event replayed" in response.content.decode()
    assert WebhookEvent.objects.get(pk=mine.webhook_event.pk).state == WebhookEvent.State.RECEIVED
    again = alice_client.post(reverse("webhook_event_replay", kwargs={"pk": mine.webhook_event.pk}), follow=True)
    assert "Only failed events can be replayed" in again.content.decode()


def test_sync_error_retry_button_queues_that_record(
    alice_client, mine, partner_user, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=False):
        response = alice_client.post(reverse("sync_error_retry", kwargs={"pk": mine.sync_error.pk}), follow=True)
    run = SyncRun.objects.filter(connection=mine.connection).order_by("-id").first()
    assert (run.scope, run.target_halopsa_id, run.requested_by) == ("invoice", 103, partner_user)
    assert "Retry of invoices #103 queued" in response.content.decode()


def test_pdf_fetched_on_first_view(
    alice_client, partner, make_connection, halo_sandbox, django_capture_on_commit_callbacks
):
    from integrations.models import Invoice

    connection = make_connection(partner, halo_sandbox)
    with django_capture_on_commit_callbacks(execute=True):
        alice_client.post(reverse("connection_sync", kwargs={"pk": connection.pk}), {"scope": "full"})
    invoice = (
        Invoice.objects.filter(connection=connection, pdf_attachment_id__isnull=False).order_by("halopsa_id").first()
    )
    InvoicePdf.objects.filter(invoice=invoice).delete()
    response = alice_client.get(reverse("invoice_pdf", kwargs={"pk": invoice.pk}))
    assert response.status_code == 200 and response["Content-Type"] == "application/pdf"
    assert b"".join(response.streaming_content).startswith(b"%PDF")
    assert InvoicePdf.objects.filter(invoice=invoice).exists()


def test_pdf_unavailable_is_a_message_not_an_error(alice_client, mine):
    InvoicePdf.objects.filter(invoice=mine.invoice).delete()
    response = alice_client.get(reverse("invoice_pdf", kwargs={"pk": mine.invoice.pk}), follow=True)
    assert response.status_code == 200 and "No PDF:" in response.content.decode()


def test_register_webhook_in_halopsa(alice_client, partner, make_connection, halo_sandbox):
    connection = make_connection(partner, halo_sandbox, halopsa_version="2.130.1")
    response = alice_client.post(reverse("connection_webhook_subscribe", kwargs={"pk": connection.pk}), follow=True)
    assert "Webhook registered in HaloPSA" in response.content.decode()
    assert len(halo_sandbox.store.list_webhooks()) == 1


def test_register_webhook_refused_for_old_version(alice_client, partner, make_connection, halo_sandbox):
    connection = make_connection(partner, halo_sandbox, halopsa_version="2.99.0")
    response = alice_client.post(reverse("connection_webhook_subscribe", kwargs={"pk": connection.pk}), follow=True)
    assert "Webhook not registered" in response.content.decode()
    assert halo_sandbox.store.list_webhooks() == []


def test_switch_webhook_authentication_after_confirming(
    alice_client, partner, make_connection, halo_sandbox, partner_user
):
    connection = make_connection(partner, halo_sandbox, halopsa_version="2.130.1")
    url = reverse("connection_webhook_auth", kwargs={"pk": connection.pk})
    page = alice_client.get(reverse("connection_detail", kwargs={"pk": connection.pk})).content.decode()
    assert url in page and "Sign deliveries with a shared secret instead" in page

    asked = alice_client.post(url, {"scheme": "hmac"})
    assert asked.status_code == 200 and "Switch to HMAC" in asked.content.decode()
    connection.refresh_from_db()
    assert connection.webhook_hmac_secret == ""  # nothing changes before the confirmation

    done = alice_client.post(url, {"scheme": "hmac", "confirmed": "yes"}, follow=True).content.decode()
    connection.refresh_from_db()
    assert connection.webhook_hmac_secret and "Webhooks now authenticate with HMAC" in done
    assert "Use Basic authentication instead" in done
    assert AuditEvent.objects.filter(action="webhook.auth_scheme", user=partner_user).count() == 1

    again = alice_client.post(url, {"scheme": "hmac", "confirmed": "yes"}, follow=True).content.decode()
    assert "already use HMAC" in again
    bad = alice_client.post(url, {"scheme": "none", "confirmed": "yes"}, follow=True).content.decode()
    assert "Choose Basic or HMAC" in bad

    alice_client.post(url, {"scheme": "basic", "confirmed": "yes"})
    connection.refresh_from_db()
    assert connection.webhook_hmac_secret == ""
