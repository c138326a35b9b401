"""What the portal stores.

Three groups:
- tenancy and configuration: Partner, User, Connection (a partner's HaloPSA), SyncCursor, Lease;
- the platform's copy of HaloPSA data: Customer, Contact (billing only), Invoice, InvoiceLine,
  Payment, InvoicePdf. Rows mirrored from HaloPSA carry their HaloPSA id per connection, the
  fingerprint of the content last seen, and the "deleted in HaloPSA" / archived flags
  (`HaloMirror`). Rows created in the portal have no HaloPSA id and are never touched by a sync;
- the record of work: SyncRun, SyncError, PushJob (outbox of writes to HaloPSA), WebhookEvent,
  AuditEvent, Incident.

Money is Decimal (2 places), dates are dates, times are timezone-aware UTC.
"""

from __future__ import annotations

import secrets
import uuid
from decimal import Decimal
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings
from django.contrib.auth.models import AbstractUser
from django.db import models
from django.db.models import Q
from django.utils import timezone

from integrations.crypto import EncryptedTextField
from integrations.halopsa.payloads import PayloadEncoder
from integrations.tenancy import PartnerScopedQuerySet

# Typed Any so each DecimalField(**MONEY) type-checks as a DecimalField, not a dict of objects.
MONEY: dict[str, Any] = {"max_digits": 14, "decimal_places": 2, "default": Decimal("0.00")}
# First HaloPSA release whose webhooks cover invoices (docs/requirements.md).
REALTIME_MIN_VERSION = (2, 122, 1)


def parse_version(text: str) -> tuple[int, ...] | None:
    """Numeric HaloPSA version ('v2.126.32' -> (2, 126, 32)); None when unreadable."""
    cleaned = (text or "").strip().lstrip("vV")
    parts = []
    for piece in cleaned.split("."):
        digits = "".join(ch for ch in piece if ch.isdigit())
        if not digits:
            break
        parts.append(int(digits))
    return tuple(parts) or None


def halopsa_url_key(url: str) -> str:
    """A HaloPSA URL as compared for "the same HaloPSA": scheme and host in lower case (the host
    IDNA-encoded), the scheme's default port left out, no trailing slash, query or fragment.
    'HTTPS://Acme.HaloPSA.com:443/' -> 'https://acme.halopsa.com'. An unparsable URL is returned
    stripped (validation refuses it before anything is stored)."""
    text = (url or "").strip()
    try:
        parts = urlsplit(text)
        host, port = (parts.hostname or "").rstrip("."), parts.port
    except ValueError:
        return text
    scheme = parts.scheme.lower()
    try:
        host = host.encode("idna").decode("ascii")
    except UnicodeError:
        pass  # not a name IDNA can encode: compared in lower case as it is
    if ":" in host:
        host = f"[{host}]"  # an IPv6 literal
    if port is not None and port != {"https": 443, "http": 80}.get(scheme):
        host = f"{host}:{port}"
    return f"{scheme}://{host}{parts.path.rstrip('/')}"


# --- Tenancy ------------------------------------------------------------------------------


class Partner(models.Model):
    """An MSP's organisation; owns connections and everything synced through them."""

    name = models.CharField(max_length=200, unique=True)
    created_at = models.DateTimeField(auto_now_add=True)

    objects = PartnerScopedQuerySet.as_manager()
    partner_lookup = "pk"

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class User(AbstractUser):
    """A person who signs in. Partner users see their partner's data; staff see every partner."""

    partner = models.ForeignKey(Partner, null=True, blank=True, on_delete=models.PROTECT, related_name="users")
    # Incident e-mails (integrations/services/incidents.py) go to `email` while this is on; the
    # user sets both on their profile page.
    receives_alerts = models.BooleanField("E-mail me when a connection needs attention", default=True)


# --- Connections ---------------------------------------------------------------------------


class Connection(models.Model):
    """A partner's HaloPSA instance and how we sync with it."""

    class InvoiceNumberField(models.TextChoices):
        HALOPSA = "invoicenumber", "HaloPSA invoice number"
        THIRD_PARTY = "thirdpartyinvoicenumber", "Third-party invoice number (accounting package)"

    class BillingContactRule(models.TextChoices):
        # The rule's meaning lives in integrations/halopsa/mapping.py (billing_contacts_for_client).
        ACCOUNTS_AND_INVOICE_USERS = "accounts_and_invoice_users", "Accounts contact + users who can access invoices"
        ACCOUNTS_ONLY = "accounts_only", "Client's accounts contact only"
        INVOICE_USERS_ONLY = "invoice_users_only", "Users who can access invoices only"

    partner = models.ForeignKey(Partner, on_delete=models.CASCADE, related_name="connections")
    name = models.CharField(max_length=200)
    base_url = models.URLField("HaloPSA URL", help_text="e.g. https://yourcompany.halopsa.com")
    auth_url = models.URLField(
        "Authorisation server URL",
        blank=True,
        help_text="Leave blank to use <HaloPSA URL>/auth. Hosted instances show it under Configuration > Integrations > HaloPSA API.",
    )
    client_id = models.CharField(max_length=200)
    client_secret = EncryptedTextField()
    # halopsa_url_key(base_url), set by the connection services (and kept current by save() once
    # set): one connection per partner per HaloPSA and client id (the constraint below). Rows
    # created with the ORM directly (tests, data loads) leave it empty and are not constrained.
    # NULL, not "": unset keys must stay outside the unique constraint.
    base_url_key = models.CharField(max_length=300, null=True, blank=True, editable=False)  # noqa: DJ001
    tenant = models.CharField(max_length=200, blank=True)
    enabled = models.BooleanField(default=True, help_text="Disabled connections never sync or push.")
    paused = models.BooleanField(default=False, help_text="Paused connections skip scheduled syncs until resumed.")
    invoices_created_since = models.DateField(null=True, blank=True)
    invoice_number_field = models.CharField(
        max_length=40, choices=InvoiceNumberField.choices, default=InvoiceNumberField.HALOPSA
    )
    billing_contact_rule = models.CharField(
        max_length=40, choices=BillingContactRule.choices, default=BillingContactRule.ACCOUNTS_AND_INVOICE_USERS
    )
    default_currency = models.CharField(max_length=3, default="USD")

    halopsa_version = models.CharField(max_length=40, blank=True)
    version_checked_at = models.DateTimeField(null=True, blank=True)
    last_test_ok = models.BooleanField(null=True, blank=True)
    last_test_at = models.DateTimeField(null=True, blank=True)
    last_test_message = models.TextField(blank=True)
    # Why the last test failed (services.connections.ConnectionTestResult.failure; "" when it passed).
    last_test_failure = models.CharField(max_length=30, blank=True)
    # What the shape probe learned about this instance's API (integrations/halopsa/shape.py).
    halo_shape = models.JSONField(default=dict, blank=True)
    shape_checked_at = models.DateTimeField(null=True, blank=True)

    # Inbound webhooks: the key routes the request (not secret). They authenticate one way: with an
    # HMAC secret, by its signature only; without one, by the Basic username and password.
    webhook_key = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    webhook_username = models.CharField(max_length=64, default="", blank=True)
    webhook_password = EncryptedTextField(blank=True, default="")
    webhook_hmac_secret = EncryptedTextField(blank=True, default="")
    webhook_subscription_id = models.CharField(max_length=64, blank=True)
    # What GET /Webhook/{id} showed after the last registration through the API: events attached,
    # events still to tick by hand, problems (services/webhooks/setup.py, webhook_subscription_create).
    webhook_subscription_check = models.JSONField(default=dict, blank=True)

    # Minute of the hour for the hourly sync, spread so connections do not all start at :00.
    schedule_minute = models.PositiveSmallIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    objects = PartnerScopedQuerySet.as_manager()
    partner_lookup = "partner_id"

    class Meta:
        ordering = ["partner__name", "name"]
        constraints = [
            models.UniqueConstraint(fields=["partner", "name"], name="connection_name_unique_per_partner"),
            models.UniqueConstraint(
                fields=["partner", "base_url_key", "client_id"],
                condition=Q(base_url_key__isnull=False),
                name="connection_endpoint_unique_per_partner",
                violation_error_message="You already have a connection to this HaloPSA with this client ID.",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.partner.name} / {self.name}"

    def save(self, *args, **kwargs):
        if not self.webhook_username:
            self.webhook_username = f"halo-{secrets.token_hex(4)}"
        if not self.webhook_password:
            self.webhook_password = secrets.token_urlsafe(32)
        if self.base_url_key is not None:  # an edit elsewhere (the admin) keeps the key true to the URL
            self.base_url_key = halopsa_url_key(self.base_url)
        super().save(*args, **kwargs)

    @property
    def version_tuple(self) -> tuple[int, ...] | None:
        return parse_version(self.halopsa_version)

    @property
    def is_realtime(self) -> bool:
        """Webhooks carry invoices in real time from HaloPSA 2.122.1; older versions poll hourly."""
        version = self.version_tuple
        return version is not None and version >= REALTIME_MIN_VERSION

    @property
    def is_active(self) -> bool:
        return self.enabled and not self.paused


class SyncCursor(models.Model):
    """Per connection and entity: the last successful sync and the change cursor it reached."""

    class Entity(models.TextChoices):
        CUSTOMERS = "customers", "Customers"
        CONTACTS = "contacts", "Billing contacts"
        INVOICES = "invoices", "Invoices"
        PDFS = "pdfs", "Invoice PDFs"

    connection = models.ForeignKey(Connection, on_delete=models.CASCADE, related_name="cursors")
    entity = models.CharField(max_length=20, choices=Entity.choices)
    last_success_at = models.DateTimeField(null=True, blank=True)
    last_full_sync_at = models.DateTimeField(null=True, blank=True)
    # HaloPSA modification time up to which everything has been read (incremental syncs read from
    # here minus an overlap, so clock skew and equal timestamps never skip a record).
    changed_since = models.DateTimeField(null=True, blank=True)

    objects = PartnerScopedQuerySet.as_manager()
    partner_lookup = "connection__partner_id"

    class Meta:
        constraints = [models.UniqueConstraint(fields=["connection", "entity"], name="cursor_unique_per_entity")]


class HaloUserFlag(models.Model):
    """A HaloPSA user's billing flag read from GET /Users/{id}, for instances whose user list rows
    lack it (HaloShape.billing_flag_source "detail"). `list_fingerprint` is the list row it was
    read for: the detail is fetched again only when that row changes."""

    connection = models.ForeignKey(Connection, on_delete=models.CASCADE, related_name="+")
    halopsa_user_id = models.BigIntegerField()
    list_fingerprint = models.CharField(max_length=64, blank=True)
    # None until the detail has been read (a user waiting for it keeps the contacts it had).
    can_access_invoices = models.BooleanField(null=True, blank=True)
    checked_at = models.DateTimeField(null=True, blank=True)

    objects = PartnerScopedQuerySet.as_manager()
    partner_lookup = "connection__partner_id"

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["connection", "halopsa_user_id"], name="user_flag_unique_per_connection")
        ]


class Lease(models.Model):
    """A named lock taken by conditional UPDATE; works on SQLite (no select_for_update) and PostgreSQL.

    A holder that dies leaves `expires_at` in the past, so the next caller takes the lease over.
    """

    name = models.CharField(max_length=200, unique=True)
    owner = models.CharField(max_length=64, blank=True)
    expires_at = models.DateTimeField(null=True, blank=True)


# --- The platform's copy of HaloPSA data ---------------------------------------------------


class Origin(models.TextChoices):
    HALOPSA = "halopsa", "HaloPSA"
    PLATFORM = "platform", "Platform"


class HaloMirror(models.Model):
    """Fields every row mirrored from HaloPSA carries: its mapping to HaloPSA and its lifecycle."""

    connection = models.ForeignKey(Connection, on_delete=models.CASCADE, related_name="+")
    # None for rows created in the portal (and for the per-connection "unknown" customer).
    halopsa_id = models.BigIntegerField(null=True, blank=True)
    origin = models.CharField(max_length=10, choices=Origin.choices, default=Origin.HALOPSA)
    # sha256 of the mapped content last written; an unchanged record costs no database write.
    fingerprint = models.CharField(max_length=64, blank=True)
    # What HaloPSA sent (Decimals kept as exact strings by the encoder).
    raw = models.JSONField(null=True, blank=True, encoder=PayloadEncoder)
    remote_updated_at = models.DateTimeField(null=True, blank=True)
    last_seen_at = models.DateTimeField(null=True, blank=True)
    # Deleted in HaloPSA: flagged by a full sync or a webhook, archived only by a person.
    deleted_in_halopsa_at = models.DateTimeField(null=True, blank=True)
    archived_at = models.DateTimeField(null=True, blank=True)
    archived_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    objects = PartnerScopedQuerySet.as_manager()
    partner_lookup = "connection__partner_id"

    class Meta:
        abstract = True
        constraints = [
            models.UniqueConstraint(
                fields=["connection", "halopsa_id"],
                condition=Q(halopsa_id__isnull=False),
                name="%(class)s_unique_halopsa_id",
            )
        ]

    @property
    def deleted_in_halopsa(self) -> bool:
        return self.deleted_in_halopsa_at is not None

    @property
    def archived(self) -> bool:
        return self.archived_at is not None


class Customer(HaloMirror):
    """A HaloPSA client (or the per-connection "unknown" customer, or one created in the portal)."""

    UNKNOWN_NAME = "unknown"

    name = models.CharField(max_length=300)
    is_unknown = models.BooleanField(default=False)
    inactive = models.BooleanField(default=False)

    class Meta(HaloMirror.Meta):
        constraints = HaloMirror.Meta.constraints + [
            models.UniqueConstraint(
                fields=["connection"], condition=Q(is_unknown=True), name="one_unknown_customer_per_connection"
            ),
        ]
        indexes = [models.Index(fields=["connection", "name"])]

    def __str__(self) -> str:
        return self.name


class Contact(models.Model):
    """A billing contact of a customer. Only billing contacts are kept; see the connection's rule."""

    class Source(models.TextChoices):
        ACCOUNTS_CONTACT = "accounts_contact", "Client accounts contact"
        INVOICE_USER = "invoice_user", "User who can access invoices"

    customer = models.ForeignKey(Customer, on_delete=models.CASCADE, related_name="billing_contacts")
    # "accounts" for the client's accounts contact, "user:<id>" for a HaloPSA user.
    halopsa_key = models.CharField(max_length=40)
    halopsa_user_id = models.BigIntegerField(null=True, blank=True)
    source = models.CharField(max_length=20, choices=Source.choices)
    name = models.CharField(max_length=300, blank=True)
    email = models.EmailField(max_length=300, blank=True)
    fingerprint = models.CharField(max_length=64, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    objects = PartnerScopedQuerySet.as_manager()
    partner_lookup = "customer__connection__partner_id"

    class Meta:
        constraints = [models.UniqueConstraint(fields=["customer", "halopsa_key"], name="contact_unique_per_customer")]

    def __str__(self) -> str:
        return f"{self.name} <{self.email}>"


class Invoice(HaloMirror):
    class Status(models.TextChoices):
        OPEN = "open", "Open"
        PARTIALLY_PAID = "partially_paid", "Partially paid"
        PAID = "paid", "Paid"
        VOID = "void", "Void"

    customer = models.ForeignKey(Customer, on_delete=models.PROTECT, related_name="invoices")
    number = models.CharField(max_length=100, blank=True)
    invoice_date = models.DateField(null=True, blank=True)
    due_date = models.DateField(null=True, blank=True)
    currency = models.CharField(max_length=3, default="USD")
    subtotal = models.DecimalField(**MONEY)
    tax = models.DecimalField(**MONEY)
    total = models.DecimalField(**MONEY)
    amount_paid = models.DecimalField(**MONEY)
    balance = models.DecimalField(**MONEY)
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.OPEN)
    is_credit_note = models.BooleanField(default=False)

    # Status as HaloPSA last reported it, and when a person changed it here: the two sides of the
    # two-way status sync (conflict rule in integrations/services/push.py and docs/sync-rules.md).
    remote_status = models.CharField(max_length=20, blank=True)
    status_changed_locally_at = models.DateTimeField(null=True, blank=True)
    # The HaloPSA client id the invoice carries (0/None = no customer in HaloPSA).
    halopsa_client_id = models.BigIntegerField(null=True, blank=True)
    # A person assigned this invoice out of the "unknown" queue; syncs keep it until HaloPSA itself
    # gives the invoice a customer.
    customer_assigned_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    customer_assigned_at = models.DateTimeField(null=True, blank=True)
    # HaloPSA's current PDF attachment id; differs from pdf.attachment_id when the PDF is stale.
    pdf_attachment_id = models.BigIntegerField(null=True, blank=True)

    class Meta(HaloMirror.Meta):
        indexes = [
            models.Index(fields=["connection", "status"]),
            models.Index(fields=["connection", "invoice_date"]),
            models.Index(fields=["connection", "due_date"]),
            models.Index(fields=["connection", "number"]),
            models.Index(fields=["customer", "invoice_date"]),
            # The invoice list (not archived, newest first), its count and its per-currency totals read
            # only this index, never the rows, which carry the raw payload before the amounts (figures:
            # benchmarks/README.md, "History").
            models.Index(
                fields=["connection", "archived_at", "invoice_date", "currency", "total", "balance"],
                name="invoice_list_idx",
            ),
            # The archive-queue count: the few invoices HaloPSA deleted.
            models.Index(
                fields=["connection", "archived_at"],
                condition=Q(deleted_in_halopsa_at__isnull=False),
                name="invoice_deleted_idx",
            ),
        ]

    def __str__(self) -> str:
        return self.number or f"invoice {self.pk}"

    @property
    def is_overdue(self) -> bool:
        return (
            self.status in (self.Status.OPEN, self.Status.PARTIALLY_PAID)
            and self.due_date is not None
            and self.due_date < timezone.now().date()
        )


class InvoiceLine(models.Model):
    invoice = models.ForeignKey(Invoice, on_delete=models.CASCADE, related_name="lines")
    halopsa_id = models.BigIntegerField(null=True, blank=True)
    sequence = models.IntegerField(default=0)
    description = models.TextField(blank=True)
    quantity = models.DecimalField(max_digits=14, decimal_places=4, default=Decimal("0"))
    unit_price = models.DecimalField(max_digits=14, decimal_places=4, default=Decimal("0"))
    net_amount = models.DecimalField(**MONEY)
    tax_amount = models.DecimalField(**MONEY)
    tax_rate = models.DecimalField(max_digits=7, decimal_places=4, default=Decimal("0"))

    objects = PartnerScopedQuerySet.as_manager()
    partner_lookup = "invoice__connection__partner_id"

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["invoice", "halopsa_id"], condition=Q(halopsa_id__isnull=False), name="line_unique_halopsa_id"
            )
        ]


class Payment(models.Model):
    """Money applied to an invoice: from HaloPSA (payments and applied credits) or made on the platform."""

    class Kind(models.TextChoices):
        PAYMENT = "payment", "Payment"
        CREDIT = "credit", "Credit applied"

    invoice = models.ForeignKey(Invoice, on_delete=models.PROTECT, related_name="payments")
    connection = models.ForeignKey(Connection, on_delete=models.CASCADE, related_name="+")
    halopsa_id = models.BigIntegerField(null=True, blank=True)
    source = models.CharField(max_length=10, choices=Origin.choices)
    kind = models.CharField(max_length=10, choices=Kind.choices, default=Kind.PAYMENT)
    amount = models.DecimalField(max_digits=14, decimal_places=2)
    # None: HaloPSA's date could not be read (missing, a "no date" sentinel, junk): shown as unknown,
    # never a reason to stop syncing the invoice. Platform payments always carry one (2000 to today).
    paid_on = models.DateField(null=True, blank=True)
    method = models.CharField(max_length=60, blank=True)
    # For platform payments: the stable reference pushed to HaloPSA (found again on retries).
    reference = models.CharField(max_length=100, blank=True)
    fingerprint = models.CharField(max_length=64, blank=True)
    raw = models.JSONField(null=True, blank=True, encoder=PayloadEncoder)
    # Platform payments are voided here (and deleted in HaloPSA); HaloPSA payments that vanish are removed.
    voided_at = models.DateTimeField(null=True, blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    objects = PartnerScopedQuerySet.as_manager()
    partner_lookup = "connection__partner_id"

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["connection", "halopsa_id"],
                condition=Q(halopsa_id__isnull=False),
                name="payment_unique_halopsa_id",
            ),
            models.CheckConstraint(condition=Q(amount__gt=0), name="payment_amount_positive"),
        ]
        indexes = [models.Index(fields=["connection", "reference"])]


class InvoicePdf(models.Model):
    """The invoice PDF as last downloaded from HaloPSA."""

    invoice = models.OneToOneField(Invoice, on_delete=models.CASCADE, related_name="pdf")
    file = models.FileField(upload_to="invoice_pdfs/%Y/%m/")
    sha256 = models.CharField(max_length=64)
    size = models.PositiveIntegerField(default=0)
    attachment_id = models.BigIntegerField(null=True, blank=True)
    fetched_at = models.DateTimeField(default=timezone.now)

    objects = PartnerScopedQuerySet.as_manager()
    partner_lookup = "invoice__connection__partner_id"


# --- The record of work --------------------------------------------------------------------


class SyncRun(models.Model):
    class Trigger(models.TextChoices):
        SCHEDULE = "schedule", "Hourly schedule"
        MANUAL = "manual", "Manual"
        WEBHOOK = "webhook", "Webhook"
        CLI = "cli", "Command line"

    class Scope(models.TextChoices):
        INCREMENTAL = "incremental", "Changes since last sync"
        FULL = "full", "Full resync"
        RECENT = "recent", "Fetch new data (since the last sync)"
        UNPAID = "unpaid", "Fetch unpaid invoices"
        ENTITY = "entity", "One entity type"
        INVOICE = "invoice", "One invoice"

    class State(models.TextChoices):
        QUEUED = "queued", "Queued"
        RUNNING = "running", "Running"
        SUCCEEDED = "succeeded", "Succeeded"
        PARTIAL = "partial", "Partial (some records failed)"
        FAILED = "failed", "Failed"

    connection = models.ForeignKey(Connection, on_delete=models.CASCADE, related_name="runs")
    trigger = models.CharField(max_length=20, choices=Trigger.choices)
    scope = models.CharField(max_length=20, choices=Scope.choices)
    entity = models.CharField(max_length=20, blank=True)
    target_halopsa_id = models.BigIntegerField(null=True, blank=True)
    state = models.CharField(max_length=20, choices=State.choices, default=State.QUEUED)
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    task_id = models.CharField(max_length=64, blank=True)
    queued_at = models.DateTimeField(default=timezone.now)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    created = models.PositiveIntegerField(default=0)
    updated = models.PositiveIntegerField(default=0)
    unchanged = models.PositiveIntegerField(default=0)
    failed = models.PositiveIntegerField(default=0)
    api_requests = models.PositiveIntegerField(default=0)
    api_retries = models.PositiveIntegerField(default=0)
    api_bytes = models.PositiveBigIntegerField(default=0)
    progress_done = models.PositiveIntegerField(default=0)
    progress_total = models.PositiveIntegerField(default=0)
    # The run's phases in order (customers, contacts, invoices, pdfs...), each
    # {"phase", "done", "total" (None until known, or for a read that stops at the cursor), "state"}:
    # what the progress bar shows, so no total jumps when a later phase learns its size.
    progress_phases = models.JSONField(default=list, blank=True)
    # Records a scheduled poll changed on a real-time connection: what its webhooks missed.
    fixed_by_poll = models.PositiveIntegerField(default=0)
    message = models.TextField(blank=True)

    objects = PartnerScopedQuerySet.as_manager()
    partner_lookup = "connection__partner_id"

    class Meta:
        ordering = ["-queued_at", "-id"]
        indexes = [models.Index(fields=["connection", "state"]), models.Index(fields=["connection", "-queued_at"])]

    @property
    def duration_seconds(self) -> float | None:
        if self.started_at and self.finished_at:
            return (self.finished_at - self.started_at).total_seconds()
        return None

    @property
    def is_active(self) -> bool:
        return self.state in (self.State.QUEUED, self.State.RUNNING)

    @property
    def is_single_record(self) -> bool:
        return self.target_halopsa_id is not None

    @property
    def scope_label(self) -> str:
        """What the run read, in a partner's words: "Invoice #123", "Resync of invoice PDFs",
        "Full sync (daily)" for the scheduled full read, else the scope's label."""
        if self.target_halopsa_id is not None:
            noun = {"customers": "Customer", "pdfs": "PDF of invoice"}.get(self.entity, "Invoice")
            return f"{noun} #{self.target_halopsa_id}"
        if self.scope == self.Scope.ENTITY:
            return f"Resync of {self.ENTITY_LABELS.get(self.entity, self.entity)}"
        if self.scope == self.Scope.FULL and self.trigger == self.Trigger.SCHEDULE:
            return "Full sync (daily)"
        return self.get_scope_display()

    ENTITY_LABELS = {"customers": "customers and billing contacts", "invoices": "invoices", "pdfs": "invoice PDFs"}


class SyncError(models.Model):
    """One record that could not be synced: its HaloPSA id, what went wrong, and what HaloPSA sent."""

    run = models.ForeignKey(SyncRun, on_delete=models.CASCADE, related_name="errors")
    connection = models.ForeignKey(Connection, on_delete=models.CASCADE, related_name="sync_errors")
    entity = models.CharField(max_length=20)
    halopsa_id = models.BigIntegerField(null=True, blank=True)
    message = models.TextField()
    payload = models.JSONField(null=True, blank=True, encoder=PayloadEncoder)
    created_at = models.DateTimeField(auto_now_add=True)
    resolved_at = models.DateTimeField(null=True, blank=True)

    objects = PartnerScopedQuerySet.as_manager()
    partner_lookup = "connection__partner_id"

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["connection", "resolved_at"])]


class PushJob(models.Model):
    """Outbox of writes to HaloPSA: created in the same transaction as the change it pushes.

    `key` is the stable reference sent to HaloPSA; before any retry creates something, HaloPSA is
    searched for it, so a lost response or a duplicated task never posts twice.
    """

    class Kind(models.TextChoices):
        PAYMENT_CREATE = "payment_create", "Post payment"
        PAYMENT_DELETE = "payment_delete", "Delete payment"
        INVOICE_STATUS = "invoice_status", "Change invoice status"

    class State(models.TextChoices):
        PENDING = "pending", "Pending"
        RUNNING = "running", "Running"
        RETRYING = "retrying", "Failed, will retry"
        DONE = "done", "Done"
        NEEDS_REVIEW = "needs_review", "Needs review"
        CANCELLED = "cancelled", "Cancelled"

    class DeferredReason(models.TextChoices):
        """Why a retrying job waits without its attempt counting as a failure."""

        NONE = "", "Not deferred"
        INVOICE_BUSY = "invoice_busy", "Another push to the same invoice was running"

    connection = models.ForeignKey(Connection, on_delete=models.CASCADE, related_name="push_jobs")
    kind = models.CharField(max_length=20, choices=Kind.choices)
    key = models.CharField(max_length=100, unique=True)
    payment = models.ForeignKey(Payment, null=True, blank=True, on_delete=models.CASCADE, related_name="push_jobs")
    invoice = models.ForeignKey(Invoice, null=True, blank=True, on_delete=models.CASCADE, related_name="push_jobs")
    payload = models.JSONField(default=dict, blank=True)
    state = models.CharField(max_length=20, choices=State.choices, default=State.PENDING)
    attempts = models.PositiveIntegerField(default=0)
    next_attempt_at = models.DateTimeField(default=timezone.now)
    last_error = models.TextField(blank=True)
    # Set by each attempt's outcome: the last one was put off (not a failure), so it opens no incident.
    deferred_reason = models.CharField(
        max_length=20, choices=DeferredReason.choices, default=DeferredReason.NONE, blank=True
    )
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    done_at = models.DateTimeField(null=True, blank=True)

    objects = PartnerScopedQuerySet.as_manager()
    partner_lookup = "connection__partner_id"

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["state", "next_attempt_at"]), models.Index(fields=["connection", "state"])]

    @property
    def outcome(self) -> str:
        """State and what happened, e.g. "Done (posted as HaloPSA payment 12)" or the last error."""
        note = self.payload.get("result", "") if self.state == self.State.DONE else self.last_error
        return f"{self.get_state_display()} ({note})" if note else self.get_state_display()


class WebhookEvent(models.Model):
    """One accepted HaloPSA webhook delivery, stored before anything else is done with it."""

    class State(models.TextChoices):
        RECEIVED = "received", "Received"
        PROCESSING = "processing", "Processing"
        PROCESSED = "processed", "Processed"
        IGNORED = "ignored", "Ignored"
        FAILED = "failed", "Failed"

    connection = models.ForeignKey(Connection, on_delete=models.CASCADE, related_name="webhook_events")
    # HaloPSA's delivery id, or the sha256 of the body when it has none: duplicates are dropped.
    dedupe_key = models.CharField(max_length=100)
    event = models.CharField(max_length=200, blank=True)
    entity = models.CharField(max_length=20, blank=True)
    object_id = models.BigIntegerField(null=True, blank=True)
    payload = models.JSONField(null=True, blank=True, encoder=PayloadEncoder)
    # Request headers as received, without Authorization or the HMAC header.
    headers = models.JSONField(default=dict, blank=True)
    state = models.CharField(max_length=20, choices=State.choices, default=State.RECEIVED)
    attempts = models.PositiveIntegerField(default=0)
    # When a worker claimed it (state PROCESSING); a claim older than the task timeout is stale.
    claimed_at = models.DateTimeField(null=True, blank=True)
    error = models.TextField(blank=True)
    received_at = models.DateTimeField(default=timezone.now)
    processed_at = models.DateTimeField(null=True, blank=True)

    objects = PartnerScopedQuerySet.as_manager()
    partner_lookup = "connection__partner_id"

    class Meta:
        ordering = ["-received_at", "-id"]
        constraints = [models.UniqueConstraint(fields=["connection", "dedupe_key"], name="webhook_event_dedupe")]
        indexes = [models.Index(fields=["connection", "state"])]


class AuditEvent(models.Model):
    """Who did what, when: every action a person takes in the portal."""

    partner = models.ForeignKey(Partner, null=True, blank=True, on_delete=models.CASCADE, related_name="audit_events")
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    action = models.CharField(max_length=60)
    object_type = models.CharField(max_length=40, blank=True)
    object_id = models.CharField(max_length=40, blank=True)
    summary = models.CharField(max_length=500)
    details = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    objects = PartnerScopedQuerySet.as_manager()
    partner_lookup = "partner_id"

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["partner", "-created_at"])]


class Incident(models.Model):
    """Something the partner must hear about once (banner + email), until it is resolved."""

    class Kind(models.TextChoices):
        CREDENTIALS_REJECTED = "credentials_rejected", "HaloPSA rejected the credentials"
        SYNC_FAILING = "sync_failing", "Syncs keep failing"
        PUSH_FAILING = "push_failing", "Pushes to HaloPSA keep failing"

    connection = models.ForeignKey(Connection, on_delete=models.CASCADE, related_name="incidents")
    kind = models.CharField(max_length=30, choices=Kind.choices)
    message = models.TextField(blank=True)
    opened_at = models.DateTimeField(default=timezone.now)
    notified_at = models.DateTimeField(null=True, blank=True)
    resolved_at = models.DateTimeField(null=True, blank=True)

    objects = PartnerScopedQuerySet.as_manager()
    partner_lookup = "connection__partner_id"

    class Meta:
        ordering = ["-opened_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["connection", "kind"], condition=Q(resolved_at__isnull=True), name="one_open_incident_per_kind"
            )
        ]
