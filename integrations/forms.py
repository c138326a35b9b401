"""Dashboard forms: they parse and validate input; services do the work."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from django import forms
from django.contrib.auth.base_user import BaseUserManager

from integrations.ids import ID_MAX, parse_id
from integrations.models import Connection, Invoice, Partner, SyncRun, User
from integrations.selectors import INVOICE_SORTS, InvoiceFilters, PaymentFilters
from integrations.services.payments import (
    EARLIEST_PAYMENT_DATE,
    SETTABLE_STATUSES,
    invoice_status_choices,
    latest_payment_date,
    payment_date_problem,
)

CONNECTION_FIELDS = [
    "name",
    "base_url",
    "auth_url",
    "client_id",
    "tenant",
    "invoices_created_since",
    "invoice_number_field",
    "billing_contact_rule",
]


class DateInput(forms.DateInput):
    input_type = "date"


class IdField(forms.IntegerField):
    """A row id: a number beyond 64 bits is invalid here, never an OverflowError in a query."""

    def __init__(self, **kwargs):
        kwargs.setdefault("min_value", 1)
        kwargs.setdefault("max_value", ID_MAX)
        kwargs.setdefault("error_messages", {"min_value": "Not a valid id.", "max_value": "Not a valid id."})
        super().__init__(**kwargs)


class IdChoiceField(forms.ModelChoiceField):
    """ModelChoiceField whose ids are checked for range before any query."""

    def to_python(self, value):
        if value not in self.empty_values and parse_id(value) is None:
            raise forms.ValidationError(self.error_messages["invalid_choice"], code="invalid_choice")
        return super().to_python(value)


class IdMultipleChoiceField(forms.ModelMultipleChoiceField):
    """ModelMultipleChoiceField whose ids are checked for range before the `pk__in` query."""

    def _check_values(self, value):
        for pk in value:
            if parse_id(pk) is None:
                raise forms.ValidationError(
                    self.error_messages["invalid_pk_value"], code="invalid_pk_value", params={"pk": str(pk)[:40]}
                )
        return super()._check_values(value)


class ConnectionForm(forms.ModelForm):
    """Add/edit a connection. The secret is write-only: never rendered back, blank on edit keeps it."""

    base_url = forms.URLField(
        label="HaloPSA URL",
        assume_scheme="https",
        help_text="e.g. https://yourcompany.halopsa.com",
    )
    auth_url = forms.URLField(
        label="Authorisation server URL",
        assume_scheme="https",
        required=False,
        help_text=(
            "Leave blank to use the HaloPSA URL followed by /auth. Hosted instances show it under "
            "Configuration > Integrations > HaloPSA API."
        ),
    )
    client_secret = forms.CharField(
        label="Client secret",
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "new-password"}),
        required=False,
        strip=True,
    )

    class Meta:
        model = Connection
        fields = ["partner", *CONNECTION_FIELDS]
        widgets = {"invoices_created_since": DateInput()}
        labels = {"client_id": "Client ID", "invoices_created_since": "Invoices created since"}
        help_texts = {
            "invoices_created_since": "Optional: older invoices are not synced.",
            "tenant": "Only for hosted HaloPSA instances that ask for one; usually blank.",
        }

    def __init__(self, *args, user, **kwargs):
        super().__init__(*args, **kwargs)
        self.user = user
        self.editing = self.instance.pk is not None
        if user.is_staff:
            self.fields["partner"].queryset = Partner.objects.all()
            self.fields["partner"].required = True
            if self.editing:
                self.fields["partner"].disabled = True
        else:
            # Partner users create connections for their own partner only.
            del self.fields["partner"]
        if self.editing:
            self.fields[
                "client_secret"
            ].help_text = "Leave blank to keep the stored secret. Never shown again once saved."
        else:
            self.fields["client_secret"].required = True
        self.order_fields(["partner", "name", "base_url", "auth_url", "client_id", "client_secret", "tenant"])

    def clean_base_url(self) -> str:
        return self.cleaned_data["base_url"].rstrip("/")

    def clean(self):
        cleaned = super().clean()
        partner = (
            cleaned.get("partner")
            if "partner" in self.fields
            else (self.instance.partner if self.editing else self.user.partner)
        )
        name = cleaned.get("name")
        if partner is not None and name:
            clash = Connection.objects.filter(partner=partner, name=name).exclude(pk=self.instance.pk)
            if clash.exists():
                self.add_error("name", "You already have a connection with this name.")
        return cleaned

    def _post_clean(self):
        # The service, not ModelForm, writes the row (the secret and partner need its rules).
        pass

    def service_fields(self) -> dict:
        """Field values for connection_create/connection_update (no blank secret on edit)."""
        values = {name: self.cleaned_data[name] for name in CONNECTION_FIELDS}
        if self.cleaned_data.get("client_secret"):
            values["client_secret"] = self.cleaned_data["client_secret"]
        return values

    def partner_for_create(self) -> Partner | None:
        return self.cleaned_data["partner"] if "partner" in self.fields else self.user.partner


class SyncRequestForm(forms.Form):
    """A manual resync: full, one entity type, the last hour, or the unpaid invoices."""

    SCOPES = [
        (SyncRun.Scope.FULL, "Full resync"),
        (SyncRun.Scope.ENTITY, "One entity type"),
        (SyncRun.Scope.RECENT, "Fetch new data"),
        (SyncRun.Scope.UNPAID, "Fetch unpaid invoices"),
    ]
    ENTITIES = [("customers", "Customers and billing contacts"), ("invoices", "Invoices"), ("pdfs", "Invoice PDFs")]

    scope = forms.ChoiceField(choices=SCOPES)
    entity = forms.ChoiceField(choices=[("", "—"), *ENTITIES], required=False)

    def clean(self):
        cleaned = super().clean()
        if cleaned.get("scope") == SyncRun.Scope.ENTITY and not cleaned.get("entity"):
            self.add_error("entity", "Choose which entity type to resync.")
        if cleaned.get("scope") != SyncRun.Scope.ENTITY:
            cleaned["entity"] = ""
        return cleaned


class ConnectionStateForm(forms.Form):
    ACTIONS = {
        "pause": {"paused": True},
        "resume": {"paused": False},
        "enable": {"enabled": True},
        "disable": {"enabled": False},
    }
    action = forms.ChoiceField(choices=[(a, a) for a in ACTIONS])

    def state_kwargs(self) -> dict:
        return self.ACTIONS[self.cleaned_data["action"]]


class PaymentForm(forms.Form):
    """A payment on one invoice. Bound to the invoice so an amount above its balance is an error
    next to the field; `payment_record` checks everything again (the command and races)."""

    amount = forms.DecimalField(
        max_digits=14,
        decimal_places=2,
        min_value=Decimal("0.01"),
        widget=forms.TextInput(attrs={"inputmode": "decimal", "autocomplete": "off"}),
        error_messages={
            "invalid": "Enter an amount such as 12.34.",
            "min_value": "A payment must be greater than zero.",
            "max_decimal_places": "Use at most two decimal places (cents).",
            "max_digits": "That amount is too large.",
        },
    )
    paid_on = forms.DateField(
        label="Paid on",
        widget=DateInput(),
        required=False,
        help_text="Defaults to today. From 2000-01-01 to today.",
        error_messages={"invalid": "Enter a date as YYYY-MM-DD."},
    )
    method = forms.CharField(max_length=60, required=False, help_text="e.g. card, bank transfer.")
    reference = forms.CharField(max_length=100, required=False, help_text="Optional; one is generated when blank.")

    def __init__(self, *args, invoice: Invoice | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.invoice = invoice
        self.fields["paid_on"].widget.attrs.update(
            min=EARLIEST_PAYMENT_DATE.isoformat(), max=latest_payment_date().isoformat()
        )
        if invoice is not None and invoice.balance > 0:
            self.fields["amount"].widget.attrs["placeholder"] = f"{invoice.balance}"

    def clean_amount(self):
        amount = self.cleaned_data["amount"]
        if self.invoice is not None and amount > self.invoice.balance:
            raise forms.ValidationError(
                f"More than the balance ({self.invoice.balance:,.2f} {self.invoice.currency}); overpayments are refused."
            )
        return amount

    def clean_paid_on(self):
        paid_on = self.cleaned_data.get("paid_on")
        problem = payment_date_problem(paid_on) if paid_on is not None else ""
        if problem:
            raise forms.ValidationError(problem)
        return paid_on


class InvoiceStatusForm(forms.Form):
    """The status menu: pre-selects the invoice's status and offers only the changes that make
    sense from it (payments.invoice_status_choices). Any status a person may set is accepted, so a
    change the menu does not offer reaches the service and is refused there with the reason."""

    # Only what a person may set: "partially paid" follows from the payments, never chosen by hand.
    status = forms.ChoiceField(
        choices=[(value, label) for value, label in Invoice.Status.choices if value in SETTABLE_STATUSES],
        error_messages={"invalid_choice": "Choose a valid status.", "required": "Choose a status."},
    )

    ACTION_LABELS: dict[str, str] = {
        Invoice.Status.PAID: "Paid (mark the balance as paid)",
        Invoice.Status.VOID: "Void (owes nothing)",
        Invoice.Status.OPEN: "Open",
    }

    def __init__(self, *args, invoice: Invoice | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.invoice = invoice
        if invoice is None:
            return
        current = invoice.status
        self.initial.setdefault("status", current)
        menu = [(current, f"{invoice.get_status_display()} (now)")]
        for status in invoice_status_choices(invoice):
            label = self.ACTION_LABELS[status]
            if status == Invoice.Status.OPEN:
                label = "Open (un-void)" if current == Invoice.Status.VOID else "Open (cancel the mark as paid)"
            menu.append((status, label))
        field: Any = self.fields["status"]  # a ChoiceField: choices and widget.choices are set below
        field.choices = [*field.choices, *([(current, menu[0][1])] if current not in SETTABLE_STATUSES else [])]
        field.widget.choices = menu

    def clean_status(self):
        status = self.cleaned_data["status"]
        if self.invoice is not None and status == self.invoice.status:
            raise forms.ValidationError(
                f"It is already {self.invoice.get_status_display().lower()}; choose the status to change it to."
            )
        return status


class ListFilterForm(forms.Form):
    """GET filters of a list. A value that does not parse is left out and reported (`problems`), the
    other filters still apply; an export refuses the whole request instead (exports.py)."""

    # (from field, to field) pairs: "to" before "from" is an error on the "to" field.
    DATE_RANGES: tuple[tuple[str, str], ...] = ()

    def clean(self):
        cleaned = super().clean()
        for start, end in self.DATE_RANGES:
            if cleaned.get(start) and cleaned.get(end) and cleaned[end] < cleaned[start]:
                self.add_error(end, f"“{self.fields[end].label}” is before “{self.fields[start].label}”.")
        return cleaned

    def valid_values(self) -> dict:
        """The values that parsed (every field's, when the form is bound and valid)."""
        if not self.is_bound:
            return {}
        self.is_valid()
        return self.cleaned_data

    def problems(self) -> list[str]:
        """One readable line per refused value, e.g. "Due from: Enter a valid date."."""
        if not self.is_bound or self.is_valid():
            return []
        return [
            f"{self[name].label}: {error}" if name in self.fields else str(error)
            for name, errors in self.errors.items()
            for error in errors
        ]


def _date_field(label: str) -> forms.DateField:
    return forms.DateField(
        required=False, label=label, widget=DateInput(), error_messages={"invalid": "Enter a date as YYYY-MM-DD."}
    )


class InvoiceFilterForm(ListFilterForm):
    """GET filters of the invoice list and its CSV export."""

    q = forms.CharField(required=False, label="Number")
    customer_name = forms.CharField(required=False, label="Customer")
    status = forms.ChoiceField(choices=[("", "Any status"), *Invoice.Status.choices], required=False)
    customer = IdField(required=False, widget=forms.HiddenInput)
    connection = IdField(required=False, widget=forms.HiddenInput)
    outstanding = forms.BooleanField(required=False, label="Unpaid")
    overdue = forms.BooleanField(required=False)
    archived = forms.BooleanField(required=False, label="Archived only")
    invoice_from = _date_field("Dated from")
    invoice_to = _date_field("Dated to")
    due_from = _date_field("Due from")
    due_to = _date_field("Due to")
    sort = forms.ChoiceField(
        choices=[
            ("-date", "Newest first"),
            ("date", "Oldest first"),
            ("due", "Due soonest"),
            ("-due", "Due latest"),
            ("-balance", "Largest balance"),
            ("balance", "Smallest balance"),
            ("number", "Number"),
        ],
        required=False,
    )

    DATE_RANGES = (("invoice_from", "invoice_to"), ("due_from", "due_to"))

    def filters(self) -> InvoiceFilters:
        data = self.valid_values()
        sort = data.get("sort") or "-date"
        return InvoiceFilters(
            status=data.get("status") or "",
            customer_id=data.get("customer"),
            connection_id=data.get("connection"),
            archived=bool(data.get("archived")),
            overdue=bool(data.get("overdue")),
            outstanding=bool(data.get("outstanding")),
            q=(data.get("q") or "").strip(),
            customer_name=(data.get("customer_name") or "").strip(),
            invoice_date_from=data.get("invoice_from"),
            invoice_date_to=data.get("invoice_to"),
            due_date_from=data.get("due_from"),
            due_date_to=data.get("due_to"),
            sort=sort if sort in INVOICE_SORTS else "-date",
        )


class PaymentFilterForm(ListFilterForm):
    """GET filters of the payment list and its CSV export."""

    SOURCES = [("", "All"), ("platform", "Made on the platform"), ("halopsa", "Applied in HaloPSA")]

    source = forms.ChoiceField(choices=SOURCES, required=False)
    connection = IdField(required=False, widget=forms.HiddenInput)
    paid_from = _date_field("Paid from")
    paid_to = _date_field("Paid to")

    DATE_RANGES = (("paid_from", "paid_to"),)

    def filters(self) -> PaymentFilters:
        data = self.valid_values()
        return PaymentFilters(
            source=data.get("source") or "",
            connection_id=data.get("connection"),
            paid_from=data.get("paid_from"),
            paid_to=data.get("paid_to"),
        )


class AssignCustomerForm(forms.Form):
    """Assign selected "unknown" invoices to a customer; querysets are already tenancy-scoped."""

    customer = IdChoiceField(queryset=None, empty_label="Choose a customer…")
    invoices = IdMultipleChoiceField(queryset=None, required=False)
    only = IdField(required=False)

    def __init__(self, *args, customers, invoices, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["customer"].queryset = customers
        self.fields["invoices"].queryset = invoices
        self._invoice_qs = invoices

    def clean(self):
        cleaned = super().clean()
        only = cleaned.get("only")
        if only:
            chosen = list(self._invoice_qs.filter(pk=only))
            if not chosen:
                raise forms.ValidationError("That invoice is no longer in the queue.")
            cleaned["invoices"] = chosen
        elif not cleaned.get("invoices"):
            raise forms.ValidationError("Select at least one invoice.")
        return cleaned


class ArchiveForm(forms.Form):
    customers = IdMultipleChoiceField(queryset=None, required=False)
    invoices = IdMultipleChoiceField(queryset=None, required=False)
    action = forms.ChoiceField(choices=[("archive", "Archive"), ("unarchive", "Un-archive")])

    def __init__(self, *args, customers, invoices, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["customers"].queryset = customers
        self.fields["invoices"].queryset = invoices

    def clean(self):
        cleaned = super().clean()
        if not cleaned.get("customers") and not cleaned.get("invoices"):
            raise forms.ValidationError("Select at least one customer or invoice.")
        return cleaned


class ProfileForm(forms.Form):
    """The signed-in user's alert address (incident e-mails) and whether they want alerts at all."""

    email = forms.EmailField(
        label="E-mail address for alerts",
        required=False,
        max_length=254,
        widget=forms.EmailInput(attrs={"autocomplete": "email"}),
        error_messages={"invalid": "Enter an e-mail address such as name@example.com."},
    )
    receives_alerts = forms.BooleanField(label=User._meta.get_field("receives_alerts").verbose_name, required=False)

    def clean_email(self) -> str:
        # The domain is case-insensitive; the mailbox part is kept as typed.
        return BaseUserManager.normalize_email(self.cleaned_data.get("email", "").strip())

    def clean(self):
        cleaned = super().clean()
        if cleaned.get("receives_alerts") and "email" in cleaned and not cleaned["email"]:
            self.add_error("email", "Enter the address alerts go to, or turn alerts off.")
        return cleaned
