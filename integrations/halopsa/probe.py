"""The shape probe: a dozen read-only calls that find out what one HaloPSA instance's API looks like.

HaloPSA documents its shapes only in part (docs/halopsa-facts.md §2, §11): list
envelopes, where the billing flag lives, which filters an instance honours, what its
paymentstatus codes mean. `probe_shape` asks the instance itself and returns a HaloShape
(shape.py) for `services.connections.connection_probe` to store. The calls, in order:

 1. token and GET /InstanceInfo (the version); a failure here raises: nothing can be learned;
 2. GET /Client, a few rows newest first (`order=alastupdate&orderdesc=true`: does the order hold),
    then with `lastupdatefromdate` far in the future, which must match nothing (halopsa-facts §4.1, §11.6);
 3. GET /Users the same way (`order=ulastupdate`): is `canaccessinvoices` on list rows? If not,
    with `includebillinginfo=true`, then GET /Users/{id} (halopsa-facts §4.2); if it is nowhere, an
    alternative flag (setting HALOPSA_BILLING_FLAG_ALTERNATIVES); then `lastupdatefromdate`;
 4. GET /Invoice with lines, newest first (`order=last_modified&orderdesc=true`): does the order
    hold, which paymentstatus codes appear and do the amounts say paid or unpaid (halopsa-facts §3.6, §11.3);
    then `datesearch=last_modified` with a far-future `start_date`, which must match nothing (halopsa-facts §3.2, §9);
 5. the payments lookup of a payment push (client.py "Payments"): GET /Invoice/{id}?includedetails=true
    and GET /InvoicePayment?invoice_id=N, each checked as the push checks it (halopsa-facts §5, §11.7);
 6. GET /Webhook (halopsa-facts §6).
A filter probed where there is nothing to filter (no clients, no invoices) stays UNKNOWN: unknown
is never "no". Every other failing call is recorded in `probe_errors` and leaves what depended on
it UNKNOWN; the probe goes on. Features that cannot work are listed in `problems` with a message a
partner can act on.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any, Callable

from django.utils import timezone

from integrations.conf import halo_settings

from .client import HaloClient, format_query_datetime
from .exceptions import HaloError, HaloPaymentsUnlistable
from .mapping import MappingError, parse_halo_datetime, parse_money
from .shape import (
    FEATURE_BILLING_CONTACTS,
    FEATURE_PAYMENT_PUSH,
    FILTER_IGNORED,
    FILTER_WORKS,
    FLAG_NOWHERE,
    FLAG_ON_DETAIL,
    FLAG_ON_LIST,
    FLAG_ON_LIST_WITH_BILLINGINFO,
    PAYMENTS_NOWHERE,
    PAYMENTS_VIA_INVOICE,
    PAYMENTS_VIA_LIST,
    UNKNOWN,
    HaloShape,
)

logger = logging.getLogger(__name__)

# A date every record's timestamps are before, in any instance's clock frame.
FAR_FUTURE = datetime(2100, 1, 1)
BILLING_FLAG = "canaccessinvoices"
PEOPLE_SAMPLE = 10  # clients and users sampled (enough rows to see an order)

# Top-level fields the portal reads (halopsa/mapping.py), per sampled entity. A field that every
# sampled record lacks is reported in `missing_fields` (HaloPSA leaves null fields out, halopsa-facts §2).
FIELDS_READ: dict[str, tuple[str, ...]] = {
    "client": (
        "id",
        "name",
        "inactive",
        "accountsemailaddress",
        "accountsfirstname",
        "accountslastname",
        "alastupdate",
    ),
    "user": ("id", "name", "firstname", "surname", "emailaddress", "client_id", "inactive", "ulastupdate"),
    "invoice": (
        "id",
        "invoicenumber",
        "client_id",
        "invoice_date",
        "duedate",
        "total",
        "tax_total",
        "amountpaid",
        "amountdue",
        "paymentstatus",
        "voided",
        "currency_code_name",
        "last_modified",
        "lines",
        "payments",
        "pdf_attachment_id",
    ),
    "invoice line": ("id", "item_shortdescription", "qty_order", "unit_price", "net_amount", "tax_amount", "tax_rate"),
    "payment": ("id", "invoice_id", "amount", "date", "type", "reference", "thirdpartyid", "payment_method_name"),
}

_FAILED = object()  # a probe call that failed (and was recorded)


@dataclass
class ProbeResult:
    shape: HaloShape
    requests: int  # HTTP requests the probe made, token included
    # The invoice list could not be read at all: the error, for "Test connection" to report.
    invoice_error: HaloError | None = None


def probe_shape(client: HaloClient) -> ProbeResult:
    """Probe the instance behind `client`. Raises only when the token or GET /InstanceInfo fails."""
    return _Probe(client).run()


def _list_rows(body: Any, key: str) -> tuple[list[dict[str, Any]], int] | None:
    """The rows of a list answer and its record count (the number of rows when it has none), or
    None when the answer is not a list of the expected shape."""
    if isinstance(body, list):
        rows = body
        count = len(body)
    elif isinstance(body, dict) and isinstance(body.get(key), list):
        rows = body[key]
        reported = body.get("record_count")
        if isinstance(reported, bool) or not isinstance(reported, int) or reported < 0:
            count = len(rows)
        else:
            count = reported
    else:
        return None
    return [row for row in rows if isinstance(row, dict)], count


def _money(value: Any, default: Decimal | None = None) -> Decimal | None:
    try:
        return parse_money(value, "amount", default=default)
    except MappingError:
        return None


class _Probe:
    def __init__(self, client: HaloClient) -> None:
        self.client = client
        self.shape = HaloShape()
        self.invoice_error: HaloError | None = None
        self.sample_invoice: dict[str, Any] | None = None

    def run(self) -> ProbeResult:
        started = self.client.stats.requests
        self.shape.version = self.client.version()  # token + InstanceInfo: failures propagate
        for step in (self._clients, self._users, self._invoices, self._payments, self._webhooks):
            try:
                step()
            except Exception:  # a bug of ours must not break "Test connection"; the log has the trace
                logger.exception("shape probe step %s failed", step.__name__)
                self._record(
                    step.__name__.strip("_"), "The portal could not read this answer (details in the server log)."
                )
        self.shape.checked_at = timezone.now().isoformat()
        return ProbeResult(
            shape=self.shape, requests=self.client.stats.requests - started, invoice_error=self.invoice_error
        )

    # --- helpers ---------------------------------------------------------------------------------

    def _record(self, call: str, message: str) -> None:
        self.shape.probe_errors.append({"call": call, "message": message[:500]})
        logger.info("shape probe: %s failed: %s", call, message)

    def _call(self, label: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except HaloError as exc:
            self._record(label, exc.message)
            return _FAILED

    def _get_list(
        self, path: str, key: str, params: dict[str, Any], rows: int = 1
    ) -> tuple[list[dict[str, Any]], int] | None:
        query = {**params, "pageinate": "true", "page_size": rows, "page_no": 1}
        label = f"GET /api/{path}"
        body = self._call(label, self.client.get_json, path, query)
        if body is _FAILED:
            return None
        found = _list_rows(body, key)
        if found is None:
            self._record(label, f"The answer was not a list under '{key}'.")
        return found

    def _filter_check(self, path: str, key: str, params: dict[str, Any]) -> str:
        """FILTER_WORKS when a far-future filter matches nothing, FILTER_IGNORED when it matches rows."""
        found = self._get_list(path, key, params)
        if found is None:
            return UNKNOWN
        return FILTER_WORKS if found[1] == 0 else FILTER_IGNORED

    def _missing(self, entity: str, rows: list[dict[str, Any]]) -> None:
        if not rows:
            return
        missing = [name for name in FIELDS_READ[entity] if all(name not in row for row in rows)]
        if missing:
            self.shape.missing_fields[entity] = missing

    def _problem(self, feature: str, message: str) -> None:
        self.shape.problems = [p for p in self.shape.problems if p.get("feature") != feature]
        self.shape.problems.append({"feature": feature, "message": message})

    # --- steps -----------------------------------------------------------------------------------

    def _clients(self) -> None:
        active = {"includeactive": "true", "includeinactive": "true"}
        found = self._get_list(
            "Client", "clients", {**active, "order": "alastupdate", "orderdesc": "true"}, PEOPLE_SAMPLE
        )
        if found is None:
            return
        rows, count = found
        self._missing("client", rows)
        self.shape.client_order_by_updated = self._newest_first(rows, "alastupdate")
        if count:
            self.shape.client_updated_filter = self._filter_check(
                "Client", "clients", {**active, "lastupdatefromdate": format_query_datetime(FAR_FUTURE)}
            )

    def _users(self) -> None:
        active = {"includeactive": "true", "includeinactive": "true"}
        found = self._get_list("Users", "users", {**active, "order": "ulastupdate", "orderdesc": "true"}, PEOPLE_SAMPLE)
        if found is None:
            return
        rows, count = found
        self._missing("user", rows)
        self.shape.user_order_by_updated = self._newest_first(rows, "ulastupdate")
        if not rows:
            return  # no users: where the flag lives stays unknown
        self._billing_flag(rows[0], active)
        if count:
            self.shape.user_updated_filter = self._filter_check(
                "Users", "users", {**active, "lastupdatefromdate": format_query_datetime(FAR_FUTURE)}
            )

    def _billing_flag(self, list_row: dict[str, Any], active: dict[str, str]) -> None:
        """Where a user's invoice-access flag is found. An absent flag is never read as false (halopsa-facts §4.2:
        the specs' Users_List lacks canaccessinvoices, only GET /Users/{id} has it)."""
        shape = self.shape
        samples: list[tuple[str, dict[str, Any]]] = [(FLAG_ON_LIST, list_row)]
        if BILLING_FLAG not in list_row:
            found = self._get_list("Users", "users", {**active, "includebillinginfo": "true"})
            if found is None:
                return
            if found[0]:
                samples.append((FLAG_ON_LIST_WITH_BILLINGINFO, found[0][0]))
            if not any(BILLING_FLAG in row for _, row in samples):
                user_id = list_row.get("id")
                # The record the sync reads for the flag (client.get_user), so the answer holds for it.
                detail = (
                    self._call(f"GET /api/Users/{user_id}", self.client.get_user, user_id)
                    if isinstance(user_id, int) and not isinstance(user_id, bool)
                    else _FAILED
                )
                if detail is _FAILED or not isinstance(detail, dict):
                    return  # unknown: the detail could not be read
                samples.append((FLAG_ON_DETAIL, detail))
        alternatives = list(halo_settings().billing_flag_alternatives)
        for name in [BILLING_FLAG, *alternatives]:
            for source, row in samples:
                if name in row:
                    shape.billing_flag_source, shape.billing_flag_field = source, name
                    return
        shape.billing_flag_source = FLAG_NOWHERE
        self._problem(
            FEATURE_BILLING_CONTACTS,
            (
                "HaloPSA shows no invoice-access flag on its users (canaccessinvoices is not on the user list, not "
                "with billing information, not on a user's own record, and none of "
                f"{', '.join(alternatives) or 'the alternatives'} either). Users are therefore not synced as billing "
                "contacts; each customer's accounts contact still is. Let the API application read users' details in "
                'HaloPSA and test the connection again, or choose the billing-contact rule "Client\'s accounts contact only".'
            ),
        )

    def _invoices(self) -> None:
        size = max(2, min(halo_settings().probe_invoice_sample, 100))
        query = {
            "includelines": "true",
            "pageinate": "true",
            "page_size": size,
            "page_no": 1,
            "order": "last_modified",
            "orderdesc": "true",
        }
        try:
            body = self.client.get_json("Invoice", query)
        except HaloError as exc:
            self._record("GET /api/Invoice", exc.message)
            self.invoice_error = exc
            return
        found = _list_rows(body, "invoices")
        if found is None:
            self._record("GET /api/Invoice", "The answer was not a list under 'invoices'.")
            return
        rows, count = found
        self._missing("invoice", rows)
        self._missing(
            "invoice line", [line for row in rows for line in (row.get("lines") or []) if isinstance(line, dict)]
        )
        self.shape.invoice_order_by_modified = self._newest_first(rows, "last_modified")
        self.shape.paymentstatus_codes = self._paymentstatus_codes(rows)
        self.sample_invoice = self._pick_invoice(rows)
        if count:
            self.shape.invoice_datesearch = self._filter_check(
                "Invoice", "invoices", {"datesearch": "last_modified", "start_date": format_query_datetime(FAR_FUTURE)}
            )

    @staticmethod
    def _newest_first(rows: list[dict[str, Any]], stamp_field: str) -> str:
        """FILTER_WORKS when the rows come in non-increasing `stamp_field` (and not all equal)."""
        stamps = []
        for row in rows:
            try:
                stamp = parse_halo_datetime(row.get(stamp_field), stamp_field)
            except MappingError:
                stamp = None
            if stamp is not None:
                stamps.append(stamp)
        if len(set(stamps)) < 2:
            return UNKNOWN  # too few distinct stamps to tell an order from chance
        ordered = all(a >= b for a, b in zip(stamps, stamps[1:]))
        return FILTER_WORKS if ordered else FILTER_IGNORED

    @staticmethod
    def _paymentstatus_codes(rows: list[dict[str, Any]]) -> dict[str, dict[str, int]]:
        """Each paymentstatus code seen, with how many of its invoices the amounts call unpaid (money
        still due, partial included) or paid. The amounts are total and amountpaid: amountdue is 0 on
        invoices an instance has not computed yet (paymentstatus -1, halopsa-facts §3.6)."""
        codes: dict[str, dict[str, int]] = {}
        for row in rows:
            raw = row.get("paymentstatus")
            code = str(raw) if raw is not None and raw != "" and not isinstance(raw, (dict, list)) else "missing"
            counts = codes.setdefault(code[:20], {"seen": 0, "unpaid": 0, "paid": 0, "partial": 0})
            counts["seen"] += 1
            total, paid = _money(row.get("total")), _money(row.get("amountpaid"), Decimal("0"))
            if row.get("voided") is True or total is None or paid is None or total <= 0:
                continue  # void, credit or unreadable: says nothing about the code
            if paid >= total:
                counts["paid"] += 1
            else:
                counts["unpaid"] += 1
                counts["partial"] += 1 if paid > 0 else 0
        return codes

    @staticmethod
    def _pick_invoice(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
        """The sampled invoice that best shows the payments sources: one with payments if any."""
        usable = [row for row in rows if isinstance(row.get("id"), int) and not isinstance(row.get("id"), bool)]

        def weight(row: dict[str, Any]) -> tuple[int, int]:
            embedded = row.get("payments")
            paid = _money(row.get("amountpaid"), Decimal("0")) or Decimal("0")
            return (len(embedded) if isinstance(embedded, list) else 0, 1 if paid > 0 else 0)

        return max(usable, key=weight) if usable else None

    def _payments(self) -> None:
        """Which exact lookup of an invoice's payments works (client.py "Payments")."""
        invoice = self.sample_invoice
        if invoice is None:
            return  # no invoice to look at: the push finds out at its first payment
        invoice_id = invoice["id"]
        client, shape = self.client, self.shape
        via_invoice = UNKNOWN
        detail = self._call(f"GET /api/Invoice/{invoice_id}", client.get_invoice, invoice_id, include_lines=True)
        if detail is not _FAILED:
            via_invoice = FILTER_WORKS if client.payments_in_invoice(detail, invoice_id) is not None else FILTER_IGNORED
        label = f"GET /api/InvoicePayment?invoice_id={invoice_id}"
        try:
            rows = client.list_invoice_payments(invoice_id)
        except HaloPaymentsUnlistable:
            shape.payments_list_filter = FILTER_IGNORED  # a finding, not a failed call
        except HaloError as exc:
            self._record(label, exc.message)
        else:
            shape.payments_list_filter = FILTER_WORKS
            self._missing("payment", rows)
        shape.payments_list_key = client.payments_list_key
        if via_invoice == FILTER_WORKS:
            shape.payments_lookup = PAYMENTS_VIA_INVOICE  # one call serves the balance check and the lookup
        elif shape.payments_list_filter == FILTER_WORKS:
            shape.payments_lookup = PAYMENTS_VIA_LIST
        elif via_invoice == FILTER_IGNORED and shape.payments_list_filter == FILTER_IGNORED:
            shape.payments_lookup = PAYMENTS_NOWHERE
            self._problem(
                FEATURE_PAYMENT_PUSH,
                (
                    "HaloPSA lists no invoice's payments exactly: GET /api/Invoice/{id}?includedetails=true carries no "
                    "payments, and GET /api/InvoicePayment ignores its invoice_id filter. Payments made here are recorded "
                    "but not posted to HaloPSA, since a post that cannot be checked could record a payment twice. Let "
                    "the API application read invoice details and payments in HaloPSA, then test the connection again."
                ),
            )

    def _webhooks(self) -> None:
        self._call("GET /api/Webhook", self.client.get_json, "Webhook")
