"""Deterministic, seeded HaloPSA data generator that stays small in memory.

Clients and users are few (thousands) and are generated eagerly. Invoices can be 100k with ~450k
lines, so they are *not* kept: a compact header table (`InvoiceHeads`, a few `array` columns) is
built in one cheap pass, and an invoice with its lines and payments is re-derived on demand from
`(seed, invoice id)` by `InvoiceFactory.build`. The store keeps only what changed.

Every random draw comes from `Rng(seed, stream, index)` (splitmix64), so record *i* never depends
on how many other records were generated or in which order they were requested.
"""

from __future__ import annotations

from array import array
from dataclasses import dataclass, field
from datetime import datetime
from decimal import ROUND_HALF_UP, Decimal
from typing import Any, Mapping

from .records import Client, Invoice, Line, Payment, User
from .shapes import CENT, PAYMENT_METHOD_NAMES, PAYMENT_TYPE_CREDIT, PAYMENT_TYPE_PAYMENT, datetime_to_ms

_MASK = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15


def _mix(value: int) -> int:
    value = (value + _GOLDEN) & _MASK
    value = ((value ^ (value >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    value = ((value ^ (value >> 27)) * 0x94D049BB133111EB) & _MASK
    return value ^ (value >> 31)


class Rng:
    """splitmix64 stream for one record: cheap to create (no Mersenne state) and reproducible."""

    __slots__ = ("state",)

    def __init__(self, seed: int, stream: int, index: int) -> None:
        self.state = _mix(_mix(_mix(seed & _MASK) ^ stream) ^ (index & _MASK))

    def next(self) -> int:
        self.state = (self.state + _GOLDEN) & _MASK
        z = self.state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK
        return z ^ (z >> 31)

    def below(self, n: int) -> int:
        return self.next() % n if n > 0 else 0

    def between(self, low: int, high: int) -> int:
        return low + self.below(high - low + 1)

    def choice(self, items: tuple | list) -> Any:
        return items[self.below(len(items))]


# Streams keep draws for different purposes independent.
_S_CLIENT, _S_USER, _S_HEAD, _S_BODY = 1, 2, 3, 4

DAY_MS = 86_400_000
HOUR_MS = 3_600_000

# Invoice states of the generator (not a Halo enum; Halo derives paymentstatus from amounts).
UNPAID, PARTIAL, PAID, CREDIT_APPLIED, CREDIT_NOTE, VOIDED = range(6)
STATE_NAMES = {
    "unpaid": UNPAID,
    "partial": PARTIAL,
    "paid": PAID,
    "credit_applied": CREDIT_APPLIED,
    "credit_note": CREDIT_NOTE,
    "voided": VOIDED,
}
# Kinds in the header table.
KIND_INVOICE, KIND_CREDIT_NOTE, KIND_DELETED = 0, 1, -1

# Id layout of generated records; created records take ids from counters above these ranges.
LINE_IDS_PER_INVOICE = 100  # line id = invoice id * 100 + sequence (<= 20 lines)
PAYMENT_IDS_PER_INVOICE = 10  # payment id = invoice id * 10 + k
ATTACHMENT_ID_OFFSET = 1_000_000  # generated pdf_attachment_id = offset + invoice id


@dataclass(frozen=True)
class InvoicePlanItem:
    """Forces the state/customer/lines of one invoice slot (the "tiny" dataset covers each case)."""

    state: int
    client_id: int
    lines: int | None = None
    tax_rates: tuple[str, ...] | None = None


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    customers: int
    contacts: int
    billing_contacts: int
    invoices: int
    max_lines: int = 20
    anchor: datetime = datetime(2026, 10, 1)
    history_days: int = 540
    clients: tuple[dict, ...] = ()  # explicit clients (tiny); otherwise generated
    users: tuple[dict, ...] = ()
    plan: tuple[InvoicePlanItem, ...] = ()


_TINY = DatasetSpec(
    name="tiny",
    customers=3,
    contacts=8,
    billing_contacts=4,
    invoices=8,
    max_lines=4,
    clients=(
        dict(name="Acme Dental Group", inactive=False, accounts=("Alice", "Moreno", "accounts@acmedental.example")),
        dict(name="Bluebird Logistics", inactive=False, accounts=("", "", "")),
        dict(name="Cobalt Legal LLP", inactive=True, accounts=("Carla", "Brooks", "billing@cobaltlegal.example")),
    ),
    users=(
        dict(client=1, first="Dana", last="Whitfield", billing=True),
        dict(client=1, first="Evan", last="Price", billing=False),
        dict(client=1, first="Farah", last="Khan", billing=False),
        dict(client=2, first="Grace", last="Lin", billing=True),
        dict(client=2, first="Hugo", last="Berg", billing=True),
        dict(client=2, first="Ivan", last="Petrov", billing=False, inactive=True),
        dict(client=3, first="Jade", last="Okafor", billing=True),
        dict(client=3, first="Kurt", last="Meyer", billing=False),
    ),
    plan=(
        InvoicePlanItem(UNPAID, 1, lines=3, tax_rates=("0", "10", "20")),  # several tax rates
        InvoicePlanItem(PARTIAL, 1, lines=2),  # partial payment
        InvoicePlanItem(PAID, 2, lines=2),
        InvoicePlanItem(CREDIT_APPLIED, 2, lines=2),  # credit note 5 applied to it
        InvoicePlanItem(CREDIT_NOTE, 2),
        InvoicePlanItem(UNPAID, 0, lines=1),  # no customer
        InvoicePlanItem(VOIDED, 3, lines=1),  # inactive customer
        InvoicePlanItem(UNPAID, 3, lines=2),  # unpaid, inactive customer
    ),
)

PRESETS: dict[str, DatasetSpec] = {
    "tiny": _TINY,
    "demo": DatasetSpec(name="demo", customers=25, contacts=90, billing_contacts=27, invoices=120, max_lines=12),
    "bench": DatasetSpec(
        name="bench", customers=2000, contacts=10000, billing_contacts=3000, invoices=100_000, max_lines=8
    ),
}


def resolve_dataset(dataset: str | Mapping[str, Any] | DatasetSpec) -> DatasetSpec:
    """ "tiny" | "demo" | "bench" | a dict of sizes (`customers`, `contacts`, `billing_contacts`,
    `invoices`, `max_lines`, optional `anchor` ISO date and `history_days`)."""
    if isinstance(dataset, DatasetSpec):
        return dataset
    if isinstance(dataset, str):
        try:
            return PRESETS[dataset.lower()]
        except KeyError as exc:
            raise ValueError(f"unknown dataset {dataset!r}; use one of {sorted(PRESETS)} or a dict of sizes") from exc
    if isinstance(dataset, Mapping):
        known = {"customers", "contacts", "billing_contacts", "invoices", "max_lines", "anchor", "history_days", "name"}
        unknown = set(dataset) - known
        if unknown:
            raise ValueError(f"unknown dataset keys: {sorted(unknown)}")
        customers = int(dataset.get("customers", 25))
        contacts = int(dataset.get("contacts", customers * 4))
        billing = int(dataset.get("billing_contacts", max(1, contacts * 3 // 10)))
        invoices = int(dataset.get("invoices", customers * 5))
        max_lines = int(dataset.get("max_lines", 20))
        if customers < 1 or contacts < 0 or invoices < 0 or not 0 <= billing <= contacts or not 1 <= max_lines <= 20:
            raise ValueError(
                "dataset sizes out of range (customers >= 1, 0 <= billing_contacts <= contacts, 1 <= max_lines <= 20)"
            )
        anchor = dataset.get("anchor")
        return DatasetSpec(
            name=str(dataset.get("name", "custom")),
            customers=customers,
            contacts=contacts,
            billing_contacts=billing,
            invoices=invoices,
            max_lines=max_lines,
            anchor=datetime.fromisoformat(anchor) if anchor else datetime(2026, 10, 1),
            history_days=int(dataset.get("history_days", 540)),
        )
    raise ValueError(f"dataset must be a name or a dict, not {type(dataset).__name__}")


# ---------------------------------------------------------------------------------------------
# Word lists

_ADJECTIVES = (
    "Acme",
    "Bluebird",
    "Cobalt",
    "Summit",
    "Harbor",
    "Evergreen",
    "Granite",
    "Riverside",
    "Northwind",
    "Silverline",
    "Oakridge",
    "Pioneer",
    "Redwood",
    "Sterling",
    "Lakeside",
    "Keystone",
    "Meridian",
    "Beacon",
    "Crescent",
    "Falcon",
    "Juniper",
    "Maple",
    "Orion",
    "Pinnacle",
    "Quarry",
    "Sapphire",
    "Tidewater",
    "Union",
    "Vantage",
    "Willow",
)
_NOUNS = (
    "Dental",
    "Logistics",
    "Legal",
    "Accounting",
    "Veterinary",
    "Engineering",
    "Realty",
    "Clinic",
    "Architects",
    "Insurance",
    "Foods",
    "Construction",
    "Pharmacy",
    "Consulting",
    "Motors",
    "Media",
    "Holdings",
    "Energy",
    "Labs",
    "Academy",
    "Outfitters",
    "Brewing",
    "Fitness",
    "Logic",
    "Transport",
    "Design",
    "Health",
    "Partners",
    "Capital",
    "Studios",
)
_SUFFIXES = ("Group", "LLC", "Inc", "LLP", "Co", "Ltd", "Associates", "Services", "Corp", "& Sons")
_FIRST = (
    "Alex",
    "Blair",
    "Casey",
    "Dana",
    "Elliot",
    "Frankie",
    "Gale",
    "Harper",
    "Indy",
    "Jordan",
    "Kai",
    "Logan",
    "Morgan",
    "Noel",
    "Oakley",
    "Parker",
    "Quinn",
    "Riley",
    "Sage",
    "Taylor",
    "Uma",
    "Val",
    "Wren",
    "Yael",
    "Zion",
    "Maria",
    "Wei",
    "Amara",
    "Lukas",
    "Sofia",
)
_LAST = (
    "Anders",
    "Baker",
    "Chen",
    "Diaz",
    "Evans",
    "Fischer",
    "Garcia",
    "Hughes",
    "Ito",
    "Jensen",
    "Kowalski",
    "Lopez",
    "Murphy",
    "Nguyen",
    "Okafor",
    "Patel",
    "Quinn",
    "Rossi",
    "Schmidt",
    "Tanaka",
    "Usman",
    "Varga",
    "Walsh",
    "Xu",
    "Young",
    "Zimmer",
    "Moreau",
    "Silva",
    "Novak",
    "Haddad",
)
# (item code, description, unit price range in cents, quantity kind)
_CATALOG = (
    ("MSP-USER", "Managed services - per user", 3500, 12000, "seats"),
    ("M365-BP", "Microsoft 365 Business Premium", 2200, 2200, "seats"),
    ("M365-E3", "Microsoft 365 E3", 3600, 3600, "seats"),
    ("LAB-REM", "Remote support labour", 9500, 16500, "hours"),
    ("LAB-ONS", "On-site support labour", 12500, 19500, "hours"),
    ("BKP-1TB", "Cloud backup 1 TB", 3000, 9000, "units"),
    ("AV-EDR", "Endpoint detection and response", 450, 900, "seats"),
    ("HW-LAP", "Business laptop", 85000, 220000, "units"),
    ("HW-FW", "Firewall appliance", 45000, 160000, "units"),
    ("DOM-REN", "Domain renewal", 1500, 4500, "units"),
    ("PROJ-MIG", "Project: server migration", 150000, 900000, "units"),
    ("VOIP-SEAT", "Hosted VoIP seat", 1800, 2900, "seats"),
)
_TAX_RATE_SETS = (("0",), ("10",), ("20",), ("0", "20"), ("5", "10", "20"), ("8.25",), ("0", "8.25"))
_CURRENCIES = ("USD",) * 18 + ("EUR", "GBP")


def _slug(text: str) -> str:
    return "".join(ch for ch in text.lower() if ch.isalnum())[:24] or "client"


# ---------------------------------------------------------------------------------------------
# Clients and users (eager)


def generate_clients(spec: DatasetSpec, seed: int) -> dict[int, Client]:
    anchor_ms = datetime_to_ms(spec.anchor)
    clients: dict[int, Client] = {}
    explicit = spec.clients
    combos = len(_ADJECTIVES) * len(_NOUNS) * len(_SUFFIXES)
    offset = _mix(seed) % combos
    for client_id in range(1, spec.customers + 1):
        rng = Rng(seed, _S_CLIENT, client_id)
        created = anchor_ms - (spec.history_days + 200) * DAY_MS + rng.below(150 * DAY_MS)
        updated = created + rng.below((spec.history_days + 40) * DAY_MS)
        if explicit:
            row = explicit[client_id - 1]
            name, inactive = row["name"], row["inactive"]
            first, last, email = row["accounts"]
            currency = row.get("currency", "USD")
        else:
            # Stride through the name space so names are unique and look unrelated.
            k = (offset + (client_id - 1) * 7919) % combos
            name = f"{_ADJECTIVES[k % 30]} {_NOUNS[(k // 30) % 30]} {_SUFFIXES[k // 900]}"
            if client_id > combos:
                name += f" {client_id // combos + 1}"
            inactive = rng.below(100) < 5
            if rng.below(100) < 85:
                first, last = rng.choice(_FIRST), rng.choice(_LAST)
                email = f"accounts@{_slug(name)}.example"
            else:
                first = last = email = ""
            currency = rng.choice(_CURRENCIES)
        clients[client_id] = Client(
            id=client_id,
            name=name,
            inactive=inactive,
            accountsemailaddress=email,
            accountsfirstname=first,
            accountslastname=last,
            currency=currency,
            datecreated_ms=created,
            lastupdate_ms=min(updated, anchor_ms - HOUR_MS),
            main_site_id=client_id,
            website=f"https://www.{_slug(name)}.example",
            main_contact_name=f"{first} {last}".strip(),
        )
    return clients


def _coprime_stride(n: int) -> int:
    for prime in (7919, 104729, 1299709, 15485863):
        if n % prime:
            return prime
    return 1


def generate_users(spec: DatasetSpec, seed: int, clients: Mapping[int, Client]) -> dict[int, User]:
    """Users (contacts). Exactly `billing_contacts` of them have `canaccessinvoices` (spread by a
    seeded permutation); inactive users are never billing contacts, so the default list (active
    only) shows every billing contact."""
    anchor_ms = datetime_to_ms(spec.anchor)
    users: dict[int, User] = {}
    total = spec.contacts
    stride = _coprime_stride(total) if total else 1
    shift = _mix(seed ^ 0x5EED) % total if total else 0
    seen_emails: set[str] = set()
    for user_id in range(1, total + 1):
        rng = Rng(seed, _S_USER, user_id)
        created = anchor_ms - (spec.history_days + 100) * DAY_MS + rng.below((spec.history_days + 50) * DAY_MS)
        updated = min(created + rng.below(200 * DAY_MS), anchor_ms - HOUR_MS)
        if spec.users:
            row = spec.users[user_id - 1]
            client_id, first, last = row["client"], row["first"], row["last"]
            billing, inactive = row["billing"], row.get("inactive", False)
        else:
            # Every client gets at least one contact; the rest are spread at random.
            client_id = user_id if user_id <= spec.customers else 1 + rng.below(spec.customers)
            first, last = rng.choice(_FIRST), rng.choice(_LAST)
            billing = ((user_id - 1) * stride + shift) % total < spec.billing_contacts
            inactive = (not billing) and rng.below(100) < 5
        domain = f"{_slug(clients[client_id].name)}.example"
        email = f"{first}.{last}@{domain}".lower()
        if email in seen_emails:
            email = f"{first}.{last}{user_id}@{domain}".lower()
        seen_emails.add(email)
        users[user_id] = User(
            id=user_id,
            client_id=client_id,
            firstname=first,
            surname=last,
            emailaddress=email,
            site_id=clients[client_id].main_site_id,
            inactive=inactive,
            canaccessinvoices=billing,
            datecreated_ms=created,
            lastupdate_ms=updated,
            phonenumber=f"+1 555 {rng.between(100, 999)} {rng.between(1000, 9999)}",
        )
    return users


# ---------------------------------------------------------------------------------------------
# Invoice header table (one cheap pass) and on-demand invoice bodies


@dataclass
class InvoiceHeads:
    """Columns for every invoice slot (index = id - 1). Enough to filter, sort and count without
    building invoices. The store keeps a *copy* it updates on every change."""

    client_id: array = field(default_factory=lambda: array("l"))
    state: array = field(default_factory=lambda: array("b"))
    kind: array = field(default_factory=lambda: array("b"))
    paymentstatus: array = field(default_factory=lambda: array("b"))
    invoice_date: array = field(default_factory=lambda: array("q"))
    duedate: array = field(default_factory=lambda: array("q"))
    created: array = field(default_factory=lambda: array("q"))
    last_modified: array = field(default_factory=lambda: array("q"))

    def __len__(self) -> int:
        return len(self.kind)

    def copy(self) -> InvoiceHeads:
        return InvoiceHeads(*(array(col.typecode, col) for col in self.columns()))

    def columns(self) -> tuple[array, ...]:
        return (
            self.client_id,
            self.state,
            self.kind,
            self.paymentstatus,
            self.invoice_date,
            self.duedate,
            self.created,
            self.last_modified,
        )

    def append(
        self,
        client_id: int,
        state: int,
        kind: int,
        paymentstatus: int,
        invoice_date: int,
        duedate: int,
        created: int,
        last_modified: int,
    ) -> None:
        values = (client_id, state, kind, paymentstatus, invoice_date, duedate, created, last_modified)
        for column, value in zip(self.columns(), values):
            column.append(value)


_STATE_PAYMENTSTATUS = {UNPAID: 0, PARTIAL: 1, PAID: 2, CREDIT_APPLIED: 1, CREDIT_NOTE: 2, VOIDED: 0}


def build_invoice_heads(spec: DatasetSpec, seed: int) -> InvoiceHeads:
    anchor_ms = datetime_to_ms(spec.anchor)
    heads = InvoiceHeads()
    count = spec.invoices
    prev_state, prev_client, prev_modified = -1, 0, 0
    for invoice_id in range(1, count + 1):
        rng = Rng(seed, _S_HEAD, invoice_id)
        plan = spec.plan[invoice_id - 1] if invoice_id <= len(spec.plan) else None
        if prev_state == CREDIT_APPLIED:
            # The slot after a credit-applied invoice is its credit note.
            state, client_id = CREDIT_NOTE, prev_client
        elif plan is not None:
            state, client_id = plan.state, plan.client_id
        else:
            roll = rng.below(1000)
            if roll < 500:
                state = UNPAID
            elif roll < 650:
                state = PARTIAL
            elif roll < 900:
                state = PAID
            elif roll < 950 and invoice_id < count:
                state = CREDIT_APPLIED
            else:
                state = VOIDED if roll >= 950 else UNPAID
            # ~1.5% of unpaid invoices have no customer.
            client_id = 0 if (state == UNPAID and rng.below(1000) < 15) else 1 + rng.below(spec.customers)
            rng.next()
        days_back = 1 + rng.below(spec.history_days)
        invoice_date = anchor_ms - days_back * DAY_MS
        terms = rng.choice((14, 30, 30, 30, 60))
        created = invoice_date + rng.below(10 * HOUR_MS)
        if state in (PARTIAL, PAID, CREDIT_APPLIED):
            pay_day = invoice_date + rng.between(1, max(1, min(days_back - 1, 75))) * DAY_MS
            last_modified = max(created + 1000, min(pay_day + rng.below(20 * HOUR_MS), anchor_ms - 1000))
        elif state == CREDIT_NOTE:
            invoice_date = prev_modified - prev_modified % DAY_MS
            created = last_modified = max(invoice_date, prev_modified - 60_000)
            terms = 0
        else:
            last_modified = min(created + rng.below(3 * DAY_MS), anchor_ms - 1000)
        heads.append(
            client_id,
            state,
            KIND_CREDIT_NOTE if state == CREDIT_NOTE else KIND_INVOICE,
            _STATE_PAYMENTSTATUS[state],
            invoice_date,
            invoice_date + terms * DAY_MS,
            created,
            last_modified,
        )
        prev_state, prev_client, prev_modified = state, client_id, last_modified
    return heads


def invoice_number(invoice_id: int) -> str:
    return str(10_000 + invoice_id)


def thirdparty_number(invoice_id: int) -> str:
    return f"QB-{1000 + invoice_id}"


_QTY_STEPS = {"seats": (1, 60, Decimal(1)), "hours": (1, 40, Decimal("0.25")), "units": (1, 4, Decimal(1))}


class InvoiceFactory:
    """Rebuilds generated invoice *i* from the seed and the original header table."""

    def __init__(self, spec: DatasetSpec, seed: int, heads: InvoiceHeads, clients: Mapping[int, Client]) -> None:
        self.spec = spec
        self.seed = seed
        self.heads = heads  # original, never mutated
        self.clients = clients  # original clients (name/currency at generation time)

    def _lines(self, invoice_id: int, rng: Rng) -> list[Line]:
        plan = self.spec.plan[invoice_id - 1] if invoice_id <= len(self.spec.plan) else None
        count = plan.lines if plan and plan.lines else 1 + rng.below(self.spec.max_lines)
        rates = plan.tax_rates if plan and plan.tax_rates else rng.choice(_TAX_RATE_SETS)
        lines = []
        for seq in range(1, count + 1):
            code, description, low, high, qty_kind = rng.choice(_CATALOG)
            q_low, q_high, step = _QTY_STEPS[qty_kind]
            qty = step * rng.between(q_low, q_high)
            lines.append(
                Line(
                    id=invoice_id * LINE_IDS_PER_INVOICE + seq,
                    sequenceid=seq,
                    description=description,
                    longdescription=f"{description} ({code})",
                    item_code=code,
                    qty=qty.quantize(CENT),
                    unit_price=(Decimal(rng.between(low, high)) / 100).quantize(CENT),
                    tax_rate=Decimal(rates[(seq - 1) % len(rates)] if plan and plan.tax_rates else rng.choice(rates)),
                )
            )
        return lines

    def _base(self, invoice_id: int) -> tuple[Invoice, Rng]:
        h = self.heads
        i = invoice_id - 1
        client_id = h.client_id[i]
        client = self.clients.get(client_id)
        invoice = Invoice(
            id=invoice_id,
            client_id=client_id,
            client_name_snapshot=client.name if client else "",
            invoicenumber=invoice_number(invoice_id),
            thirdpartyinvoicenumber=thirdparty_number(invoice_id),
            invoice_date_ms=h.invoice_date[i],
            duedate_ms=h.duedate[i],
            date_created_ms=h.created[i],
            last_modified_ms=h.last_modified[i],
            currency=client.currency if client else "USD",
            voided=h.state[i] == VOIDED,
            pdf_attachment_id=ATTACHMENT_ID_OFFSET + invoice_id,
            pdf_created_ms=h.last_modified[i],
        )
        return invoice, Rng(self.seed, _S_BODY, invoice_id)

    def _credit_amount(self, invoice: Invoice, rng: Rng) -> Decimal:
        pct = Decimal(rng.between(10, 50))
        return max(CENT, (invoice.total * pct / 100).quantize(CENT, rounding=ROUND_HALF_UP))

    def build(self, invoice_id: int) -> Invoice:
        state = self.heads.state[invoice_id - 1]
        if state == CREDIT_NOTE:
            return self._credit_note(invoice_id)
        invoice, rng = self._base(invoice_id)
        invoice.lines = self._lines(invoice_id, rng)
        total = invoice.total
        pay_day = invoice.last_modified_ms - invoice.last_modified_ms % DAY_MS
        if state == CREDIT_APPLIED:
            amount = self._credit_amount(invoice, rng)
            invoice.payments = [
                Payment(
                    id=invoice_id * PAYMENT_IDS_PER_INVOICE + 1,
                    invoice_id=invoice_id,
                    amount=amount,
                    date_ms=pay_day,
                    type=PAYMENT_TYPE_CREDIT,
                    credit_note_id=invoice_id + 1,
                    reference=f"Credit note {invoice_number(invoice_id + 1)}",
                    method=3,
                    method_name=PAYMENT_METHOD_NAMES[3],
                )
            ]
        elif state in (PAID, PARTIAL):
            if state == PAID:
                paid = total
            else:
                paid = (total * Decimal(rng.between(20, 80)) / 100).quantize(CENT, rounding=ROUND_HALF_UP)
                paid = min(max(paid, CENT), total - CENT)
            parts = [paid]
            if paid >= Decimal("0.02") and rng.below(3) == 0:
                first = (paid * Decimal(rng.between(30, 70)) / 100).quantize(CENT, rounding=ROUND_HALF_UP)
                first = min(max(first, CENT), paid - CENT)
                parts = [first, paid - first]
            span_days = max(0, (pay_day - invoice.invoice_date_ms) // DAY_MS)
            for k, amount in enumerate(parts, start=1):
                is_last = k == len(parts)
                date_ms = pay_day if is_last else invoice.invoice_date_ms + rng.below(span_days + 1) * DAY_MS
                method = rng.below(3)
                invoice.payments.append(
                    Payment(
                        id=invoice_id * PAYMENT_IDS_PER_INVOICE + k,
                        invoice_id=invoice_id,
                        amount=amount,
                        date_ms=min(date_ms, pay_day),
                        type=PAYMENT_TYPE_PAYMENT,
                        reference=f"PMT-{invoice_id}-{k}",
                        method=method,
                        method_name=PAYMENT_METHOD_NAMES[method],
                    )
                )
        return invoice

    def _credit_note(self, invoice_id: int) -> Invoice:
        # Same draws as the credited invoice's build, so the amounts agree exactly.
        credited, credited_rng = self._base(invoice_id - 1)
        credited.lines = self._lines(invoice_id - 1, credited_rng)
        amount = self._credit_amount(credited, credited_rng)
        note, _ = self._base(invoice_id)
        note.is_credit_note = True
        note.creditlinkedtoinvoiceid = invoice_id - 1
        note.lines = [
            Line(
                id=invoice_id * LINE_IDS_PER_INVOICE + 1,
                sequenceid=1,
                description=f"Credit against invoice {credited.invoicenumber}",
                qty=Decimal("1.00"),
                unit_price=-amount,
                tax_rate=Decimal(0),
                item_code="CREDIT",
            )
        ]
        note.credit_applied = amount
        return note
