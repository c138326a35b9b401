"""Dashboard forms: they parse and validate input; services do the work."""
from __future__ import annotations

from decimal import Decimal

from django import forms
from django.utils import timezone

from integrations.ids import ID_MAX, parse_id
from integrations.models import Connection, Invoice, Partner, SyncRun
from integrations.selectors import INVOICE_SORTS, InvoiceFilters
from integrations.services.payments import SETTABLE_STATUSES

CONNECTION_FIELDS = [
    "name", "base_url", "auth_url", "client_id", "tenant",
    "invoices_created_since", "invoice_number_field", "billing_contact_rule",
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
                raise forms.ValidationError(self.error_messages["invalid_pk_value"], code="invalid_pk_value",
                                            params={"pk": str(pk)[:40]})
        return super()._check_values(value)


class ConnectionForm(forms.ModelForm):
    """Add/edit a connection. The secret is write-only: never rendered back, blank on edit keeps it."""

    base_url = forms.URLField(
        label="HaloPSA URL", assume_scheme="https", help_text="e.g. https://yourcompany.halopsa.com",
    )
    auth_url = forms.URLField(
        label="Authorisation server URL", assume_scheme="https", required=False,
        help_text="Leave blank to use the HaloPSA URL followed by /auth. Hosted instances show it under Configuration > Integrations > HaloPSA API.",
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
            self.fields["client_secret"].help_text = "Leave blank to keep the stored secret."
        else:
            self.fields["client_secret"].required = True
        self.order_fields(["partner", "name", "base_url", "auth_url", "client_id", "client_secret", "tenant"])

    def clean_base_url(self) -> str:
        return self.cleaned_data["base_url"].rstrip("/")

    def clean(self):
        cleaned = super().clean()
        partner = cleaned.get("partner") if "partner" in self.fields else (self.instance.partner if self.editing else self.user.partner)
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
    ACTIONS = {"pause": {"paused": True}, "resume": {"paused": False}, "enable": {"enabled": True}, "disable": {"enabled": False}}
    action = forms.ChoiceField(choices=[(a, a) for a in ACTIONS])

    def state_kwargs(self) -> dict:
        return self.ACTIONS[self.cleaned_data["action"]]


class PaymentForm(forms.Form):
    amount = forms.DecimalField(max_digits=14, decimal_places=2, min_value=Decimal("0.01"))
    paid_on = forms.DateField(widget=DateInput(), required=False, help_text="Defaults to today.")
    method = forms.CharField(max_length=60, required=False)
    reference = forms.CharField(max_length=100, required=False, help_text="Optional; one is generated when blank.")

    def clean_paid_on(self):
        paid_on = self.cleaned_data.get("paid_on")
        if paid_on and paid_on > timezone.now().date():
            raise forms.ValidationError("A payment cannot be dated in the future.")
        return paid_on


class InvoiceStatusForm(forms.Form):
    # Only what a person may set: "partially paid" follows from the payments, never chosen by hand.
    status = forms.ChoiceField(choices=[(value, label) for value, label in Invoice.Status.choices if value in SETTABLE_STATUSES])


class InvoiceFilterForm(forms.Form):
    """GET filters of the invoice list; invalid values are ignored, never an error page."""

    q = forms.CharField(required=False, label="Number")
    customer_name = forms.CharField(required=False, label="Customer")
    status = forms.ChoiceField(choices=[("", "Any status"), *Invoice.Status.choices], required=False)
    customer = IdField(required=False, widget=forms.HiddenInput)
    connection = IdField(required=False, widget=forms.HiddenInput)
    overdue = forms.BooleanField(required=False)
    archived = forms.BooleanField(required=False, label="Archived only")
    sort = forms.ChoiceField(
        choices=[("-date", "Newest first"), ("date", "Oldest first"), ("due", "Due soonest"), ("-due", "Due latest"),
                 ("-balance", "Largest balance"), ("balance", "Smallest balance"), ("number", "Number")],
        required=False,
    )

    def filters(self) -> InvoiceFilters:
        data = self.cleaned_data if self.is_valid() else {}
        sort = data.get("sort") or "-date"
        return InvoiceFilters(
            status=data.get("status") or "",
            customer_id=data.get("customer"),
            connection_id=data.get("connection"),
            archived=bool(data.get("archived")),
            overdue=bool(data.get("overdue")),
            q=(data.get("q") or "").strip(),
            customer_name=(data.get("customer_name") or "").strip(),
            sort=sort if sort in INVOICE_SORTS else "-date",
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
