"""Dashboard routes. Every view scopes objects to the signed-in user's partner (404 otherwise)."""
from django.urls import path

from integrations.views import activity, connections, data, home, queues, runs

urlpatterns = [
    path("", home.home, name="home"),
    # Connections
    path("connections/new/", connections.connection_create, name="connection_create"),
    path("connections/<int:pk>/", connections.connection_detail, name="connection_detail"),
    path("connections/<int:pk>/edit/", connections.connection_edit, name="connection_edit"),
    path("connections/<int:pk>/delete/", connections.connection_delete, name="connection_delete"),
    path("connections/<int:pk>/test/", connections.connection_test, name="connection_test"),
    path("connections/<int:pk>/state/", connections.connection_state, name="connection_state"),
    path("connections/<int:pk>/sync/", connections.connection_sync, name="connection_sync"),
    path("connections/<int:pk>/webhook/", connections.connection_webhook_subscribe, name="connection_webhook_subscribe"),
    path("connections/<int:pk>/progress/", runs.connection_progress, name="connection_progress"),
    # Runs and what failed in them
    path("runs/<int:pk>/", runs.run_detail, name="run_detail"),
    path("runs/<int:pk>/progress/", runs.run_progress, name="run_progress"),
    path("sync-errors/<int:pk>/retry/", runs.sync_error_retry, name="sync_error_retry"),
    path("webhook-events/<int:pk>/replay/", runs.webhook_event_replay, name="webhook_event_replay"),
    path("push-jobs/<int:pk>/retry/", runs.push_job_retry, name="push_job_retry"),
    # Synced data
    path("customers/", data.customer_list, name="customer_list"),
    path("customers/<int:pk>/", data.customer_detail, name="customer_detail"),
    path("customers/<int:pk>/archive/", queues.record_archive_toggle, {"kind": "customers"}, name="customer_archive"),
    path("invoices/", data.invoice_list, name="invoice_list"),
    path("invoices/<int:pk>/", data.invoice_detail, name="invoice_detail"),
    path("invoices/<int:pk>/pdf/", data.invoice_pdf, name="invoice_pdf"),
    path("invoices/<int:pk>/status/", data.invoice_status, name="invoice_status"),
    path("invoices/<int:pk>/payments/", data.invoice_payment, name="invoice_payment"),
    path("invoices/<int:pk>/resync/", data.invoice_resync, name="invoice_resync"),
    path("invoices/<int:pk>/archive/", queues.record_archive_toggle, {"kind": "invoices"}, name="invoice_archive"),
    path("payments/", data.payment_list, name="payment_list"),
    path("payments/<int:pk>/delete/", data.payment_delete, name="payment_delete"),
    # Queues and the activity log
    path("unknown-customers/", queues.unknown_customers, name="unknown_customers"),
    path("archive-queue/", queues.archive_queue, name="archive_queue"),
    path("activity/", activity.activity, name="activity"),
]
