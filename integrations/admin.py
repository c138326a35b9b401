"""Django admin for staff: raw inspection of what the portal stores. Secrets are never shown."""

from django.contrib import admin
from django.contrib.auth.admin import UserAdmin
from django.db import models

from integrations import models as portal


@admin.register(portal.User)
class PortalUserAdmin(UserAdmin):
    fieldsets = UserAdmin.fieldsets + (("Partner", {"fields": ("partner",)}),)  # type: ignore[operator]
    list_display = ("username", "email", "partner", "is_staff", "is_active")
    list_filter = ("partner", "is_staff", "is_active")


@admin.register(portal.Partner)
class PartnerAdmin(admin.ModelAdmin):
    list_display = ("name", "created_at")
    search_fields = ("name",)


@admin.register(portal.Connection)
class ConnectionAdmin(admin.ModelAdmin):
    list_display = ("name", "partner", "base_url", "halopsa_version", "enabled", "paused")
    list_filter = ("enabled", "paused", "partner")
    # Secrets are excluded outright: the admin neither shows nor edits them.
    exclude = ("client_secret", "webhook_password", "webhook_hmac_secret")
    readonly_fields = (
        "webhook_key",
        "halopsa_version",
        "version_checked_at",
        "last_test_ok",
        "last_test_at",
        "last_test_message",
    )
    # HaloPSA is only called over https; a scheme-less URL typed here means https.
    formfield_overrides = {models.URLField: {"assume_scheme": "https"}}


class ReadOnlyAdmin(admin.ModelAdmin):
    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False


@admin.register(portal.Customer)
class CustomerAdmin(ReadOnlyAdmin):
    list_display = ("name", "connection", "halopsa_id", "is_unknown", "deleted_in_halopsa_at", "archived_at")
    list_filter = ("is_unknown", "origin")
    search_fields = ("name",)
    ordering = ("name",)


@admin.register(portal.Invoice)
class InvoiceAdmin(ReadOnlyAdmin):
    list_display = ("number", "customer", "total", "balance", "status", "due_date")
    list_filter = ("status", "origin")
    search_fields = ("number",)
    raw_id_fields = ("customer",)
    ordering = ("-invoice_date", "-id")


@admin.register(portal.Payment)
class PaymentAdmin(ReadOnlyAdmin):
    list_display = ("invoice", "amount", "paid_on", "source", "kind", "voided_at")
    raw_id_fields = ("invoice",)
    ordering = ("paid_on", "id")


@admin.register(portal.SyncRun)
class SyncRunAdmin(ReadOnlyAdmin):
    list_display = (
        "connection",
        "trigger",
        "scope",
        "state",
        "queued_at",
        "created",
        "updated",
        "failed",
        "api_requests",
    )
    list_filter = ("state", "trigger", "scope")


@admin.register(portal.SyncError)
class SyncErrorAdmin(ReadOnlyAdmin):
    list_display = ("connection", "entity", "halopsa_id", "message", "created_at", "resolved_at")


@admin.register(portal.PushJob)
class PushJobAdmin(ReadOnlyAdmin):
    list_display = ("connection", "kind", "key", "state", "attempts", "next_attempt_at")
    list_filter = ("state", "kind")


@admin.register(portal.WebhookEvent)
class WebhookEventAdmin(ReadOnlyAdmin):
    list_display = ("connection", "event", "object_id", "state", "received_at")
    list_filter = ("state",)


@admin.register(portal.AuditEvent)
class AuditEventAdmin(ReadOnlyAdmin):
    list_display = ("created_at", "partner", "user", "action", "summary")
    list_filter = ("action",)
