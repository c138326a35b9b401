"""Dashboard routes. Every view scopes objects to the signed-in user's partner (404 otherwise)."""

from django.urls import path, register_converter

from integrations.ids import IdConverter
from integrations.views import activity, connections, data, exports, home, profile, queues, runs

# <id:pk> instead of <int:pk>: a number beyond 64 bits is a 404, not an OverflowError.
register_converter(IdConverter, "id")

urlpatterns = [
    path("", home.home, name="home"),
    # Connections
    path("connections/new/", connections.connection_create, name="connection_create"),
    path("connections/<id:pk>/", connections.connection_detail, name="connection_detail"),
    path("connections/<id:pk>/edit/", connections.connection_edit, name="connection_edit"),
    path("connections/<id:pk>/delete/", connections.connection_delete, name="connection_delete"),
    path("connections/<id:pk>/test/", connections.connection_test, name="connection_test"),
    path("connections/<id:pk>/state/", connections.connection_state, name="connection_state"),
    path("connections/<id:pk>/sync/", connections.connection_sync, name="connection_sync"),
    path("connections/<id:pk>/webhook/", connections.connection_webhook_subscribe, name="connection_webhook_subscribe"),
    path("connections/<id:pk>/webhook/auth/", connections.connection_webhook_auth, name="connection_webhook_auth"),
    path("connections/<id:pk>/progress/", runs.connection_progress, name="connection_progress"),
    # Runs and what failed in them
    path("runs/<id:pk>/", runs.run_detail, name="run_detail"),
    path("runs/<id:pk>/progress/", runs.run_progress, name="run_progress"),
    path("sync-errors/<id:pk>/retry/", runs.sync_error_retry, name="sync_error_retry"),
    path("webhook-events/<id:pk>/replay/", runs.webhook_event_replay, name="webhook_event_replay"),
    path("push-jobs/<id:pk>/retry/", runs.push_job_retry, name="push_job_retry"),
    # Synced data
    path("customers/", data.customer_list, name="customer_list"),
    path("customers/<id:pk>/", data.customer_detail, name="customer_detail"),
    path("customers/<id:pk>/archive/", queues.record_archive_toggle, {"kind": "customers"}, name="customer_archive"),
    path("invoices/", data.invoice_list, name="invoice_list"),
    path("invoices/export.csv", exports.invoice_export, name="invoice_export"),
    path("invoices/<id:pk>/", data.invoice_detail, name="invoice_detail"),
    path("invoices/<id:pk>/pdf/", data.invoice_pdf, name="invoice_pdf"),
    path("invoices/<id:pk>/status/", data.invoice_status, name="invoice_status"),
    path("invoices/<id:pk>/payments/", data.invoice_payment, name="invoice_payment"),
    path("invoices/<id:pk>/resync/", data.invoice_resync, name="invoice_resync"),
    path("invoices/<id:pk>/archive/", queues.record_archive_toggle, {"kind": "invoices"}, name="invoice_archive"),
    path("payments/", data.payment_list, name="payment_list"),
    path("payments/export.csv", exports.payment_export, name="payment_export"),
    path("payments/<id:pk>/delete/", data.payment_delete, name="payment_delete"),
    # Queues and the activity log
    path("unknown-customers/", queues.unknown_customers, name="unknown_customers"),
    path("archive-queue/", queues.archive_queue, name="archive_queue"),
    path("activity/", activity.activity, name="activity"),
    # The signed-in user's own settings
    path("profile/", profile.profile, name="profile"),
]
