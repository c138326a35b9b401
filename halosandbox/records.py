"""In-memory record types of the sandbox and the money rules that tie them together.

Amounts are Decimal rounded to cents. The invariants the rest of the sandbox relies on:
- line: net_amount = round(qty * unit_price), tax_amount = round(net_amount * tax_rate / 100),
  total_price = net_amount + tax_amount;
- invoice: total = sum(total_price), tax_total = sum(tax_amount);
  amountpaid = sum(payments, including applied credits); amountdue = total - amountpaid;
  paymentstatus = unpaid (nothing paid) / paid (nothing due) / partially paid (otherwise);
- credit note: negative total, no payment rows; its `credit_applied` (the part of it applied to
  other invoices) counts as "paid", so a fully applied credit note has amountdue 0.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal
from functools import cached_property

from .shapes import (
    CENT,
    PAYMENTSTATUS_PAID,
    PAYMENTSTATUS_PARTIALLY_PAID,
    PAYMENTSTATUS_UNPAID,
    ZERO,
)

HUNDRED = Decimal(100)


@dataclass
class Client:
    id: int
    name: str
    inactive: bool
    accountsemailaddress: str
    accountsfirstname: str
    accountslastname: str
    currency: str
    datecreated_ms: int
    lastupdate_ms: int
    main_site_id: int
    paymentterms: int = 30
    website: str = ""
    main_contact_name: str = ""
    accountsid: str = ""
    toplevel_id: int = 1
    toplevel_name: str = "Customers"


@dataclass
class User:
    id: int
    client_id: int
    firstname: str
    surname: str
    emailaddress: str
    site_id: int
    inactive: bool
    canaccessinvoices: bool
    datecreated_ms: int
    lastupdate_ms: int
    phonenumber: str = ""
    ismaincontact: bool = False

    @property
    def name(self) -> str:
        return f"{self.firstname} {self.surname}".strip()


@dataclass
class Line:
    id: int
    sequenceid: int
    description: str
    qty: Decimal
    unit_price: Decimal
    tax_rate: Decimal
    longdescription: str = ""
    item_code: str = ""

    # Lines are never edited in place (edits replace the list), so amounts are computed once:
    # serving a 100-invoice page reads each of them several times.
    @cached_property
    def net_amount(self) -> Decimal:
        return (self.qty * self.unit_price).quantize(CENT, rounding=ROUND_HALF_UP)

    @cached_property
    def tax_amount(self) -> Decimal:
        return (self.net_amount * self.tax_rate / HUNDRED).quantize(CENT, rounding=ROUND_HALF_UP)

    @cached_property
    def total_price(self) -> Decimal:
        return self.net_amount + self.tax_amount


@dataclass
class Payment:
    id: int
    invoice_id: int
    amount: Decimal
    date_ms: int
    type: int
    credit_note_id: int = 0
    reference: str = ""
    thirdpartyid: str = ""
    method: int = 0
    method_name: str = "Bank Transfer"


@dataclass
class Invoice:
    id: int
    client_id: int
    client_name_snapshot: str  # name at creation; used when the client is deleted later
    invoicenumber: str
    thirdpartyinvoicenumber: str
    invoice_date_ms: int
    duedate_ms: int
    date_created_ms: int
    last_modified_ms: int
    currency: str
    lines: list[Line] = field(default_factory=list)
    payments: list[Payment] = field(default_factory=list)
    voided: bool = False
    posted: bool = True
    is_credit_note: bool = False
    creditlinkedtoinvoiceid: int = 0
    credit_applied: Decimal = ZERO  # credit notes only: how much of it is applied elsewhere
    pdf_attachment_id: int = 0
    pdf_created_ms: int = 0

    @property
    def total(self) -> Decimal:
        return sum((line.total_price for line in self.lines), ZERO)

    @property
    def tax_total(self) -> Decimal:
        return sum((line.tax_amount for line in self.lines), ZERO)

    @property
    def net_total(self) -> Decimal:
        return sum((line.net_amount for line in self.lines), ZERO)

    @property
    def amountpaid(self) -> Decimal:
        if self.is_credit_note:
            return -self.credit_applied
        return sum((p.amount for p in self.payments), ZERO)

    @property
    def amountdue(self) -> Decimal:
        return self.total - self.amountpaid

    @property
    def paymentstatus(self) -> int:
        return payment_status(self.total, self.amountpaid)


def payment_status(total: Decimal, amountpaid: Decimal) -> int:
    due = total - amountpaid
    if amountpaid == 0:
        return PAYMENTSTATUS_PAID if total == 0 else PAYMENTSTATUS_UNPAID
    # Nothing left, or overpaid (the balance changed sign): paid.
    if due == 0 or (due < 0) != (total < 0):
        return PAYMENTSTATUS_PAID
    return PAYMENTSTATUS_PARTIALLY_PAID
