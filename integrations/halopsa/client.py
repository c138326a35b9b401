"""The HaloPSA API client: the endpoints HaloClient offers per HaloPSA resource. How a request
is made (auth, retries, limits, error translation, logging) is transport.py's job.

What it owns:
- paging: streams list endpoints page by page at the server's cap of 100 rows, stops exactly at
  the last page and exposes `record_count` for progress. Client and user lists include inactive
  rows on purpose: an incremental sync must see a customer or billing contact turn inactive, and
  mapping.py decides what that means. List paging stops with an error when pages repeat or run
  past what `record_count` said by a margin;
- single records (clients, users, invoices, their PDFs, instance info), invoice writes and
  webhook subscriptions;
- exactly-once payments: `create_payment` looks the payment up by our reference before posting
  and after any ambiguous outcome, so it is safe to call again. The lookup lists the invoice's
  payments exactly and matches on our side (never `search`), or refuses to answer.

Records are returned as parsed JSON dicts (numbers as Decimal); mapping them is mapping.py's job.
Importing from this module keeps working for every name that lived here before the split.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from typing import Any

from integrations.conf import halo_settings

from .exceptions import (
    HaloAmbiguousWrite,
    HaloBadResponse,
    HaloConnectionError,
    HaloError,
    HaloNotFound,
    HaloPaymentsUnlistable,
    HaloServerError,
    HaloTimeout,
)
from .payloads import parse_json  # noqa: F401 - part of the client's API
from .shape import BARE_ARRAY, PAYMENTS_VIA_INVOICE, PAYMENTS_VIA_LIST, UNKNOWN
from .transport import (  # noqa: F401 - re-exported: callers import these from here
    BACKOFF_CAP,
    BODY_CHUNK,
    EXCERPT_CHARS,
    IDEMPOTENT_METHODS,
    MAX_500_RETRIES,
    MAX_DEADLINE_RETRIES,
    RETRY_AFTER_CAP,
    RETRY_STATUSES,
    TOKEN_EARLY_REFRESH,
    HaloTransport,
    RequestStats,
    clear_token_cache,
    dumps_json,
    extract_error_message,
    format_query_datetime,
    parse_retry_after,
)

logger = logging.getLogger("integrations.halopsa.client")

PAGE_SIZE = 100  # HaloPSA returns at most 100 rows per page whatever page_size asks for (docs/halopsa-facts.md §2)

ENVELOPE_CLIENTS = "clients"
ENVELOPE_USERS = "users"
ENVELOPE_INVOICES = "invoices"
# The id-only lists of the deletion sweep: the same filters as each list's full read.
_ID_LISTS = {
    ENVELOPE_CLIENTS: ("Client", {"includeactive": "true", "includeinactive": "true"}),
    ENVELOPE_USERS: ("Users", {"includeactive": "true", "includeinactive": "true"}),
    ENVELOPE_INVOICES: ("Invoice", {}),
}
# GET /InvoicePayment's list key is undocumented (halopsa-facts §2, §11.7): these first, then any
# single list-valued key (`payment_rows`).
PAYMENT_LIST_KEYS = ("invoicepayments", "payments")
# One invoice's payments fill at most this many pages; more means something is wrong.
MAX_PAYMENT_PAGES = 20


# ---------------------------------------------------------------------------------------------
# Small value types


@dataclass(frozen=True)
class Page:
    records: list[dict[str, Any]]
    record_count: int  # total rows matching the query, for progress
    page_no: int
    # Rows of this page left out because an earlier page of the same read already had their id:
    # the list changed while it was read (page drift). Each record is yielded once per read.
    repeated: int = 0


# ---------------------------------------------------------------------------------------------
# Helpers


def list_extra_pages(record_count: int, page_size: int) -> int:
    """How many pages a list may run past what its first record_count implies before the read
    stops: HALOPSA_LIST_EXTRA_PAGES (default 10), or a tenth more when that is more (records
    added while a long read runs)."""
    extra = halo_settings().list_extra_pages
    return max(extra, -(-record_count // page_size) // 10)


def _first_sightings(records: list[Any], read_ids: set[Any]) -> list[Any]:
    """`records` less those whose id is already in `read_ids` (then adds the new ids). Records
    without a usable id are always kept: mapping reports them."""
    fresh = []
    for record in records:
        record_id = record.get("id") if type(record) is dict else None
        if record_id is not None and type(record_id) is not int:
            record_id = str(record_id) if isinstance(record_id, (str, Decimal)) else None
        if record_id is None:
            fresh.append(record)
        elif record_id not in read_ids:
            read_ids.add(record_id)
            fresh.append(record)
    return fresh


def _same_id(value: Any, expected: int) -> bool:
    """Whether a HaloPSA id (an int, or a number or digits HaloPSA sent otherwise) is `expected`."""
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return value == expected
    if isinstance(value, Decimal):
        return value.is_finite() and value == expected
    return isinstance(value, str) and value.strip().isdecimal() and int(value.strip()) == expected


def _reference_text(value: Any) -> str:
    return str(value).strip() if isinstance(value, (str, int)) and not isinstance(value, bool) else ""


def _only_match(rows: list[Any], reference: str, invoice_id: int) -> dict[str, Any] | None:
    """The one row whose `reference` or `thirdpartyid` is exactly `reference` (compared on our side)."""
    wanted = reference.strip()
    matches = [
        row
        for row in rows
        if isinstance(row, dict)
        and wanted in (_reference_text(row.get("reference")), _reference_text(row.get("thirdpartyid")))
    ]
    if len({str(row.get("id")) for row in matches}) > 1:
        raise HaloError(
            f"HaloPSA holds {len(matches)} payments carrying reference {reference} on invoice {invoice_id}. "
            "Delete the extra ones in HaloPSA, then retry.",
            permanent=True,
        )
    return matches[0] if matches else None


# ---------------------------------------------------------------------------------------------
# The client


class HaloClient(HaloTransport):
    # What the payment lookups met (the push records them in HaloShape when they were unknown).
    payments_lookup_used = UNKNOWN
    payments_list_key = UNKNOWN

    # -----------------------------------------------------------------------------------------
    # Paging

    def _pages(self, path: str, key: str, params: dict[str, Any], *, page_size: int = PAGE_SIZE) -> Iterator[Page]:
        """The list's pages, each requested only when the one before it has been consumed (a
        caller that stops early costs no further request).

        Each record is yielded once per read: a row whose id an earlier page already had (the list
        changed while it was read, "page drift") is left out and counted in `Page.repeated`. The
        read stops with HaloBadResponse when a page brings nothing new (HaloPSA ignores page_no,
        or serves the same rows again), or when it runs past what the first page's record_count
        implies by more than the margin (`list_extra_pages`): an endless or lying list can hold
        a worker only that long."""
        page_size = max(1, min(int(page_size), PAGE_SIZE))
        page_no = 1
        rows = 0
        first_count: int | None = None
        read_ids: set[Any] = set()
        while True:
            query = {**params, "pageinate": "true", "page_size": page_size, "page_no": page_no}
            body = self._request("GET", path, params=query)
            records, record_count = self._envelope(body, key, path)
            rows += len(records)
            # A page shorter than the size the server says it used is the last one. Trusting the
            # envelope's page_size (not ours) keeps a server with a smaller cap from ending early.
            served_size = body.get("page_size")
            if isinstance(served_size, bool) or not isinstance(served_size, int) or not 0 < served_size <= page_size:
                served_size = page_size
            if first_count is None:
                first_count = record_count
            fresh = _first_sightings(records, read_ids)
            if records and not fresh:
                raise HaloBadResponse(
                    f"HaloPSA answered page {page_no} of /api/{path} with only records it had already sent on earlier pages "
                    "(it ignores page_no, or the list changed that much while it was read). The read stops here; "
                    "nothing is flagged as deleted, and the next sync reads the list again."
                )
            allowed_pages = -(-first_count // served_size) + list_extra_pages(first_count, served_size)
            if page_no > allowed_pages or rows > allowed_pages * served_size:
                raise HaloBadResponse(
                    f"HaloPSA's list /api/{path} went on past page {allowed_pages} ({rows:,} rows) although it said it "
                    f"held {first_count:,} records; the portal stops reading a list that does not end. "
                    "Nothing is flagged as deleted; the next sync reads the list again."
                )
            if fresh:
                yield Page(
                    records=fresh, record_count=record_count, page_no=page_no, repeated=len(records) - len(fresh)
                )
            if not records or len(records) < served_size or rows >= record_count:
                return
            page_no += 1

    def _envelope(self, body: Any, key: str, path: str, *, require_count: bool = True) -> tuple[list[Any], int]:
        if not isinstance(body, dict):
            raise HaloBadResponse(
                f"HaloPSA's list of {key} ({path}) was not the expected object (got {type(body).__name__}).",
            )
        records = body.get(key)
        if not isinstance(records, list):
            raise HaloBadResponse(f"HaloPSA's list of {key} ({path}) has no '{key}' array; keys: {sorted(body)[:8]}.")
        record_count = body.get("record_count") if require_count else body.get("record_count", len(records))
        if isinstance(record_count, bool) or not isinstance(record_count, int) or record_count < 0:
            raise HaloBadResponse(f"HaloPSA's list of {key} ({path}) has an invalid record_count {record_count!r}.")
        return records, record_count

    # Incremental reads (integrations/services/sync/feeds.py decides which one an instance gets):
    # `changed_since` is a date filter whose support varies (GET /Invoice `datesearch` is SW25
    # only, halopsa-facts §3.2/§9; `lastupdatefromdate` on /Client and /Users is unverified as a filter,
    # halopsa-facts §4.1/§11.6), `newest_first` orders by the record's last-change time, descending (the
    # fallback where the filter is ignored; `order`/`orderdesc` per halopsa-facts §2). The date is sent in
    # HaloPSA's own frame: it comes from HaloPSA's timestamps (format_query_datetime).

    def client_pages(
        self,
        *,
        changed_since: datetime | None = None,
        include_inactive: bool = True,
        newest_first: bool = False,
        page_size: int = PAGE_SIZE,
    ) -> Iterator[Page]:
        params: dict[str, Any] = {"includeactive": "true", "includeinactive": "true" if include_inactive else "false"}
        if changed_since is not None:
            params["lastupdatefromdate"] = format_query_datetime(changed_since)
        if newest_first:
            params.update(order="alastupdate", orderdesc="true")
        return self._pages("Client", ENVELOPE_CLIENTS, params, page_size=page_size)

    def user_pages(
        self,
        *,
        changed_since: datetime | None = None,
        client_id: int | None = None,
        include_billing_info: bool = False,
        newest_first: bool = False,
        page_size: int = PAGE_SIZE,
    ) -> Iterator[Page]:
        # Inactive users are included on purpose: an incremental sync must see a billing contact
        # turn inactive; mapping.py decides who is a billing contact.
        params: dict[str, Any] = {"includeactive": "true", "includeinactive": "true"}
        if changed_since is not None:
            params["lastupdatefromdate"] = format_query_datetime(changed_since)
        if client_id is not None:
            params["client_id"] = int(client_id)
        if include_billing_info:
            # "Include billing information in the response" (halopsa-facts §4.2): on some instances the only way
            # list rows carry canaccessinvoices (HaloShape.billing_flag_source "list_billinginfo").
            params["includebillinginfo"] = "true"
        if newest_first:
            params.update(order="ulastupdate", orderdesc="true")
        return self._pages("Users", ENVELOPE_USERS, params, page_size=page_size)

    def invoice_pages(
        self,
        *,
        changed_since: datetime | None = None,
        include_lines: bool = True,
        payment_statuses: list[int] | tuple[int, ...] | None = None,
        client_id: int | None = None,
        include_credits: bool = False,
        newest_first: bool = False,
        page_size: int = PAGE_SIZE,
    ) -> Iterator[Page]:
        params: dict[str, Any] = {}
        if include_lines:
            params["includelines"] = "true"
        if changed_since is not None:
            params["datesearch"] = "last_modified"
            params["start_date"] = format_query_datetime(changed_since)
        if payment_statuses:
            params["paymentstatuses"] = ",".join(str(int(s)) for s in payment_statuses)
        if client_id is not None:
            params["client_id"] = int(client_id)
        if include_credits:
            params["includecredits"] = "true"
        if newest_first:
            params.update(order="last_modified", orderdesc="true")
        return self._pages("Invoice", ENVELOPE_INVOICES, params, page_size=page_size)

    def listed_ids(self, entity: str) -> set[int]:
        """Every id of a list (ENVELOPE_CLIENTS, _USERS or _INVOICES) in one id-only call, with the
        filters of that list's full read: GET /Client, /Users or /Invoice with idonly=true and no
        paging (idonly is documented as not compatible with paging, halopsa-facts §2). For the
        deletion sweep's second look at many candidates. Raises HaloBadResponse when the answer is
        visibly not the whole list (fewer rows than its record_count)."""
        path, params = _ID_LISTS[entity]
        body = self._request("GET", path, params={**params, "idonly": "true"})
        if isinstance(body, list):  # a bare array: nothing to check it against
            records, record_count = body, len(body)
        else:
            records, record_count = self._envelope(body, entity, path, require_count=False)
        if record_count > len(records):
            raise HaloBadResponse(
                f"HaloPSA's id-only list {path} held {len(records):,} of the {record_count:,} records it counted, "
                "so it cannot tell which records are gone."
            )
        return {
            value for value in (r.get("id") if isinstance(r, dict) else None for r in records) if type(value) is int
        }

    def iter_clients(self, **kwargs: Any) -> Iterator[dict[str, Any]]:
        for page in self.client_pages(**kwargs):
            yield from page.records

    def iter_users(self, **kwargs: Any) -> Iterator[dict[str, Any]]:
        for page in self.user_pages(**kwargs):
            yield from page.records

    def iter_invoices(self, **kwargs: Any) -> Iterator[dict[str, Any]]:
        for page in self.invoice_pages(**kwargs):
            yield from page.records

    # -----------------------------------------------------------------------------------------
    # Single records

    def _record(self, body: Any, what: str) -> dict[str, Any]:
        if isinstance(body, list) and len(body) == 1 and isinstance(body[0], dict):
            body = body[0]
        if not isinstance(body, dict):
            raise HaloBadResponse(f"HaloPSA's {what} was not a JSON object (got {type(body).__name__}).")
        return body

    def instance_info(self) -> dict[str, Any]:
        return self._record(self._request("GET", "InstanceInfo"), "instance information")

    def version(self) -> str:
        info = self.instance_info()
        version = info.get("app_version") or info.get("version")
        if not isinstance(version, str) or not version.strip():
            raise HaloBadResponse("HaloPSA's instance information has no app_version.")
        return version.strip()

    def get_json(self, path: str, params: dict[str, Any] | None = None) -> Any:
        """One GET of /api/<path> (auth, budget, retries), answered as parsed JSON whatever its shape.
        For the shape probe, whose job is to find out what the answers look like."""
        return self._request("GET", path, params=params)

    def get_client(self, client_id: int) -> dict[str, Any]:
        return self._record(self._request("GET", f"Client/{int(client_id)}"), f"client {client_id}")

    def get_user(self, user_id: int) -> dict[str, Any]:
        """GET /Users/{id}: the full `Users` record, the one that has canaccessinvoices where list
        rows do not (halopsa-facts §4.2). includebillinginfo is sent in case the flag counts as billing
        information there too (unverified)."""
        return self._record(
            self._request("GET", f"Users/{int(user_id)}", params={"includebillinginfo": "true"}), f"user {user_id}"
        )

    def get_invoice(self, invoice_id: int, include_lines: bool = True) -> dict[str, Any]:
        params = {"includedetails": "true"} if include_lines else None
        return self._record(self._request("GET", f"Invoice/{int(invoice_id)}", params=params), f"invoice {invoice_id}")

    def get_invoice_pdf(self, invoice_id: int, attachment_id: int | None = None) -> bytes:
        if not attachment_id:
            created = self._record(
                self._request("POST", f"Invoice/PDF/{int(invoice_id)}", json_body={}, idempotent=True),
                f"PDF of invoice {invoice_id}",
            )
            attachment_id = created.get("id") or created.get("pdf_attachment_id") or created.get("attachment_id")
            if isinstance(attachment_id, bool) or not isinstance(attachment_id, int) or attachment_id <= 0:
                raise HaloBadResponse(f"HaloPSA did not return an attachment id for the PDF of invoice {invoice_id}.")
        content = self._request("GET", f"Attachment/{int(attachment_id)}", expect="bytes")
        if not content or not content.lstrip()[:5].startswith(b"%PDF"):
            raise HaloBadResponse(
                f"HaloPSA's attachment {attachment_id} for invoice {invoice_id} is not a PDF "
                f"(starts: {self._excerpt(content or b'')[:20]!r})."
            )
        return content

    # -----------------------------------------------------------------------------------------
    # Payments (exactly once)
    #
    # Exactly-once rests on listing one invoice's payments *exactly* and matching our reference
    # on our side, never on `search`: what it matches on /InvoicePayment is undocumented
    # (halopsa-facts §2 "Search", §5). Two sources, each checked before it is trusted:
    # - `payments` of GET /Invoice/{id}?includedetails=true (InvoiceHeader.payments, halopsa-facts §3.3, §5),
    #   only when the key is there and holds a list: an absent key never means "no payments";
    # - GET /InvoicePayment?invoice_id=N, paged, without `search` (halopsa-facts §5). Unknown parameters are
    #   silently ignored (halopsa-facts §2), so every row must carry invoice_id N: one row of another invoice
    #   means the filter is ignored, and the source is dropped at once rather than scanning the
    #   whole instance. Its list key is undocumented too (halopsa-facts §2, §11.7): see `payment_rows`.

    def payments_in_invoice(self, invoice: Any, invoice_id: int) -> list[dict[str, Any]] | None:
        """The payments embedded in a GET /Invoice/{id}?includedetails=true answer, or None when the
        answer does not say (no `payments` list, or a row that is not a payment of this invoice)."""
        rows = invoice.get("payments") if isinstance(invoice, dict) else None
        if not isinstance(rows, list):
            return None
        for row in rows:
            if not isinstance(row, dict):
                return None
            if row.get("invoice_id") is not None and not _same_id(row.get("invoice_id"), invoice_id):
                return None
        return rows

    def payment_rows(self, body: Any) -> tuple[list[Any], int | None, str]:
        """The rows of a GET /InvoicePayment answer, its `record_count` (None when absent) and the key
        they came under (BARE_ARRAY for a bare array). The envelope is undocumented (halopsa-facts §2, §11.7): a bare
        array, `invoicepayments`, `payments`, or else the one list-valued key of the object."""
        if isinstance(body, list):
            return body, None, BARE_ARRAY
        if not isinstance(body, dict):
            raise HaloBadResponse(
                f"HaloPSA's list of payments (/api/InvoicePayment) was not a list or an object (got {type(body).__name__})."
            )
        record_count = body.get("record_count")
        if isinstance(record_count, bool) or not isinstance(record_count, int) or record_count < 0:
            record_count = None
        for key in PAYMENT_LIST_KEYS:
            if isinstance(body.get(key), list):
                return body[key], record_count, key
        # `columns` and its kin are view metadata on Halo's list envelopes (halopsa-facts §2), never the rows.
        lists = sorted(
            str(k) for k, v in body.items() if isinstance(v, list) and not str(k).lower().startswith("columns")
        )
        if len(lists) == 1:
            return body[lists[0]], record_count, lists[0]
        if not lists and record_count == 0:
            return [], 0, UNKNOWN  # an explicit "none", under whatever key HaloPSA would use
        what = "no list" if not lists else f"several lists ({', '.join(lists[:4])})"
        raise HaloBadResponse(
            f"HaloPSA's list of payments (/api/InvoicePayment) has {what}, so the payments cannot be told apart; "
            f"keys: {sorted(str(k) for k in body)[:8]}."
        )

    def _note_payments_key(self, key: str) -> None:
        if key and key != self.payments_list_key:
            self.payments_list_key = key
            logger.info(
                "halopsa %s GET /api/InvoicePayment lists its rows %s",
                self._log_where(),
                "as a bare array" if key == BARE_ARRAY else f"under the key {key!r}",
            )

    def list_invoice_payments(self, invoice_id: int) -> list[dict[str, Any]]:
        """Every payment of one invoice from GET /InvoicePayment?invoice_id=N (paged, no `search`).

        Raises HaloPaymentsUnlistable when the answer cannot be trusted to be exactly that invoice's
        payments: a row of another invoice (the filter is ignored) or rows without their invoice id.
        """
        invoice_id = int(invoice_id)
        found: list[dict[str, Any]] = []
        seen: set[str] = set()
        page_no = 1
        while True:
            body = self._request(
                "GET",
                "InvoicePayment",
                params={"invoice_id": invoice_id, "pageinate": "true", "page_size": PAGE_SIZE, "page_no": page_no},
            )
            rows, record_count, key = self.payment_rows(body)
            self._note_payments_key(key)
            new_rows = 0
            for row in rows:
                if not isinstance(row, dict) or row.get("invoice_id") is None:
                    raise HaloPaymentsUnlistable(
                        f"HaloPSA's payments list (GET /api/InvoicePayment?invoice_id={invoice_id}) has rows without "
                        "their invoice id, so it cannot be told whether they are this invoice's payments."
                    )
                if not _same_id(row.get("invoice_id"), invoice_id):
                    raise HaloPaymentsUnlistable(
                        f"HaloPSA ignores the invoice_id filter of GET /api/InvoicePayment (asked for invoice "
                        f"{invoice_id}, it answered payments of invoice {row.get('invoice_id')}), so that call "
                        "cannot list one invoice's payments."
                    )
                row_key = str(row.get("id")) if row.get("id") is not None else f"#{len(found)}"
                if row_key not in seen:
                    seen.add(row_key)
                    found.append(row)
                    new_rows += 1
            served_size = body.get("page_size") if isinstance(body, dict) else None
            if isinstance(served_size, bool) or not isinstance(served_size, int) or not 0 < served_size <= PAGE_SIZE:
                served_size = PAGE_SIZE
            # A bare array may ignore paging and repeat itself: a page with nothing new is the end.
            if len(rows) < served_size or new_rows == 0 or (record_count is not None and len(found) >= record_count):
                return found
            if page_no >= MAX_PAYMENT_PAGES:
                raise HaloPaymentsUnlistable(
                    f"HaloPSA listed more than {MAX_PAYMENT_PAGES * PAGE_SIZE} payments for invoice {invoice_id}; "
                    "the portal stops there rather than read on without end."
                )
            page_no += 1

    def find_payment_by_reference(
        self,
        *,
        invoice_id: int,
        reference: str,
        lookup: str = UNKNOWN,
        invoice: dict[str, Any] | None = None,
    ) -> dict[str, Any] | None:
        """The invoice's payment whose `reference` or `thirdpartyid` is exactly `reference`, or None.

        The invoice's own `payments` are tried first (one call, which a payment push makes anyway
        for its balance check: pass that answer as `invoice` and it costs nothing), then GET
        /InvoicePayment; `lookup` = PAYMENTS_VIA_LIST (HaloShape.payments_lookup) tries the list
        first when no invoice is in hand. The source that answered is left in
        `payments_lookup_used`. Raises HaloPaymentsUnlistable when no source can be trusted:
        a caller must then not post (an earlier attempt could not be ruled out).
        """
        if not reference:
            raise ValueError("reference is required")
        invoice_id = int(invoice_id)
        sources = [PAYMENTS_VIA_INVOICE, PAYMENTS_VIA_LIST]
        if lookup == PAYMENTS_VIA_LIST and invoice is None:
            sources.reverse()
        reasons: list[str] = []
        for source in sources:
            if source == PAYMENTS_VIA_INVOICE:
                body = invoice if invoice is not None else self.get_invoice(invoice_id, include_lines=True)
                rows = self.payments_in_invoice(body, invoice_id)
                if rows is None:
                    reasons.append(f"GET /api/Invoice/{invoice_id}?includedetails=true has no list of payments")
                    continue
            else:
                try:
                    rows = self.list_invoice_payments(invoice_id)
                except HaloPaymentsUnlistable as exc:
                    reasons.append(exc.message)
                    continue
            self.payments_lookup_used = source
            return _only_match(rows, reference, invoice_id)
        raise HaloPaymentsUnlistable(
            f"HaloPSA gave no trustworthy list of invoice {invoice_id}'s payments ({'; '.join(reasons)}), so the "
            f"portal cannot check whether payment {reference} is already there; nothing was posted. Check the API "
            "application's permission to read invoices, then retry."
        )

    def create_payment(
        self,
        *,
        invoice_id: int,
        amount: Decimal,
        paid_on: date,
        reference: str,
        method_name: str = "",
        lookup: str = UNKNOWN,
        invoice: dict[str, Any] | None = None,
        looked_up: bool = False,
    ) -> dict[str, Any]:
        """Record a payment in HaloPSA exactly once, keyed by our `reference`.

        Looks for the reference first (a previous attempt may have landed, e.g. before a task was
        killed) unless the caller has just done so (`looked_up`), then POSTs. After an ambiguous
        outcome (connection dropped, 5xx, unreadable answer) it looks again, reading the invoice
        afresh: found means done, not found means the POST is repeated. After a timeout HaloPSA
        may still be working on the request, so it is not re-posted here: the caller retries
        later and the first lookup settles it. `lookup` and `invoice` are passed to
        `find_payment_by_reference`; a lookup that cannot be trusted raises before any POST.
        """
        if not isinstance(amount, Decimal):
            raise TypeError("amount must be a Decimal")
        if not reference:
            raise ValueError("reference is required for an idempotent payment")
        if not looked_up:
            existing = self.find_payment_by_reference(
                invoice_id=invoice_id, reference=reference, lookup=lookup, invoice=invoice
            )
            if existing is not None:
                return existing
        row: dict[str, Any] = {
            "invoice_id": int(invoice_id),
            "amount": amount,
            "date": format_query_datetime(paid_on),
            "reference": reference,
            "thirdpartyid": reference,
        }
        if method_name:
            row["payment_method_name"] = method_name
        attempts = 0
        while True:
            attempts += 1
            try:
                body = self._request("POST", "InvoicePayment", json_body=[row], idempotent=False)
            except (HaloServerError, HaloConnectionError, HaloTimeout, HaloBadResponse) as exc:
                if exc.permanent:
                    raise
                self._sleep(self._backoff(attempts))
                try:
                    found = self.find_payment_by_reference(invoice_id=invoice_id, reference=reference, lookup=lookup)
                except HaloError as lookup_error:
                    raise HaloAmbiguousWrite(
                        f"HaloPSA did not confirm payment {reference} on invoice {invoice_id} ({exc.message}), and "
                        f"looking for it failed ({lookup_error.message}). It is checked again before any new attempt.",
                        status=exc.status,
                    ) from lookup_error
                if found is not None:
                    logger.info("halopsa %s payment %s found after an unconfirmed POST", self._log_where(), reference)
                    return found
                if isinstance(exc, HaloTimeout) or attempts > self.max_retries:
                    raise
                self.stats.add(retries=1)
                continue
            if body is None:
                # No body: read it back rather than guess the id.
                found = self.find_payment_by_reference(invoice_id=invoice_id, reference=reference, lookup=lookup)
                if found is None:
                    raise HaloBadResponse(
                        f"HaloPSA accepted payment {reference} but it cannot be found on invoice {invoice_id}."
                    )
                return found
            return self._record(body, f"payment {reference}")

    def delete_payment(self, payment_id: int) -> bool:
        """Delete a payment; False when it was already gone."""
        try:
            self._request("DELETE", f"InvoicePayment/{int(payment_id)}", expect="none")
        except HaloNotFound:
            return False
        return True

    # -----------------------------------------------------------------------------------------
    # Invoices (writes are "set to X", so repeating them is harmless)

    def update_invoice(self, invoice_id: int, fields: dict[str, Any]) -> dict[str, Any]:
        body = self._request("POST", "Invoice", json_body=[{**fields, "id": int(invoice_id)}], idempotent=True)
        return self._record(body, f"invoice {invoice_id}")

    def void_invoice(self, invoice_id: int) -> dict[str, Any]:
        body = self._request("POST", f"Invoice/{int(invoice_id)}/void", json_body={}, idempotent=True)
        return self._record(body, f"invoice {invoice_id}") if body is not None else {"id": int(invoice_id)}

    # -----------------------------------------------------------------------------------------
    # Webhooks

    def list_webhooks(self) -> list[dict[str, Any]]:
        body = self._request("GET", "Webhook")
        if isinstance(body, dict):
            for key in ("webhooks", "records", "items"):
                if isinstance(body.get(key), list):
                    body = body[key]
                    break
        if not isinstance(body, list):
            raise HaloBadResponse("HaloPSA's list of webhooks was not a list.")
        return [w for w in body if isinstance(w, dict)]

    def get_webhook(self, webhook_id: str) -> dict[str, Any]:
        """One webhook with its attached events (`includedetails`, halopsa-facts §6)."""
        body = self._request("GET", f"Webhook/{webhook_id}", params={"includedetails": "true"})
        return self._record(body, f"webhook {webhook_id}")

    def create_webhook(self, spec: dict[str, Any]) -> dict[str, Any]:
        # Not blindly retried: a repeat could create a second subscription.
        body = self._request("POST", "Webhook", json_body=[spec], idempotent=False)
        return self._record(body, "webhook")

    def delete_webhook(self, webhook_id: str | int) -> bool:
        try:
            self._request("DELETE", f"Webhook/{webhook_id}", expect="none")
        except HaloNotFound:
            return False
        return True
