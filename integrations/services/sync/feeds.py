"""How an entity's changed records are listed: by the list's date filter, newest first down to
the cursor, or in full, whichever this HaloPSA instance honours (its HaloShape, found out here
when still unknown)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Callable, Iterator

from django.utils import timezone

from integrations.halopsa import mapping
from integrations.halopsa.client import Page
from integrations.halopsa.shape import FILTER_IGNORED, FILTER_WORKS, UNKNOWN
from integrations.services.sync.config import ENTITY_CONTACTS, ENTITY_CUSTOMERS, ENTITY_INVOICES

if TYPE_CHECKING:
    from integrations.services.sync.context import RunContext


@dataclass(frozen=True)
class Feed:
    """How an entity's changed records are listed (`changed_pages`)."""

    entity: str
    kind: str  # the record kind of mapping.updated_at
    label: str
    filter_fact: str  # the HaloShape field: is the list's date filter honoured
    filter_name: str
    order_fact: str  # the HaloShape field: is newest-first order honoured
    order_name: str


FEEDS = {
    ENTITY_CUSTOMERS: Feed(
        ENTITY_CUSTOMERS,
        "client",
        "customers",
        "client_updated_filter",
        "lastupdatefromdate on GET /Client",
        "client_order_by_updated",
        "order=alastupdate",
    ),
    ENTITY_CONTACTS: Feed(
        ENTITY_CONTACTS,
        "user",
        "billing contacts (users)",
        "user_updated_filter",
        "lastupdatefromdate on GET /Users",
        "user_order_by_updated",
        "order=ulastupdate",
    ),
    ENTITY_INVOICES: Feed(
        ENTITY_INVOICES,
        "invoice",
        "invoices",
        "invoice_datesearch",
        "datesearch=last_modified on GET /Invoice",
        "invoice_order_by_modified",
        "order=last_modified",
    ),
}
# The date filter check: a start this far ahead matches no record where the filter is honoured
# (well inside SQL Server's smalldatetime, which ends in 2079).
FILTER_CHECK_AHEAD = timedelta(days=3650)


def changed_pages(
    ctx: RunContext, feed: Feed, since: datetime | None, list_pages: Callable[..., Iterator[Page]]
) -> Iterator[Page]:
    """Pages of `feed`'s records changed since `since` (all records when None), read the way
    this instance supports (its HaloShape, found out here when unknown):
    - its date filter when honoured (checked once with a start far in the future, which must
      match nothing: one call; a row older than the start later means it is ignored after all);
    - else newest first, stopping at `since`, the order checked as pages arrive (a row newer
      than one before it means it is not honoured: everything is read this time);
    - else everything. A read longer than asked for is said in the run's message."""
    if since is None:
        yield from ctx.pages(list_pages())
        return
    honoured = getattr(ctx.shape, feed.filter_fact)
    if honoured == UNKNOWN:
        first = next(iter(list_pages(changed_since=timezone.now() + FILTER_CHECK_AHEAD, page_size=1)), None)
        honoured = FILTER_WORKS if first is None else FILTER_IGNORED
        ctx.learn(**{feed.filter_fact: honoured})
    if honoured != FILTER_IGNORED:
        yield from _filtered_pages(ctx, feed, since, list_pages)
    elif getattr(ctx.shape, feed.order_fact) == FILTER_IGNORED:
        ctx.note(f"HaloPSA ignores {feed.filter_name} and {feed.order_name}: {feed.label} are read in full.")
        yield from ctx.pages(list_pages())
    else:
        yield from _newest_first_pages(ctx, feed, since, list_pages)


def _filtered_pages(
    ctx: RunContext, feed: Feed, since: datetime, list_pages: Callable[..., Iterator[Page]]
) -> Iterator[Page]:
    earliest = since.replace(microsecond=0) - timedelta(seconds=1)  # the query sends whole seconds
    checking = True
    for page in ctx.pages(list_pages(changed_since=since)):
        if checking and any(
            stamp is not None and stamp < earliest
            for stamp in (mapping.updated_at(record, feed.kind) for record in page.records)
        ):
            checking = False
            ctx.learn(**{feed.filter_fact: FILTER_IGNORED})
            ctx.note(
                f"HaloPSA ignored {feed.filter_name}: {feed.label} were read in full this time "
                f"(from the next run: newest first, {feed.order_name})."
            )
        yield page


def _newest_first_pages(
    ctx: RunContext, feed: Feed, since: datetime, list_pages: Callable[..., Iterator[Page]]
) -> Iterator[Page]:
    honoured, previous = True, None
    for page in ctx.pages(list_pages(newest_first=True), count_each_page=True):
        oldest = None
        for record in page.records:
            stamp = mapping.updated_at(record, feed.kind)
            if stamp is None:
                continue
            if honoured and previous is not None and stamp > previous:
                honoured = False
                ctx.learn(**{feed.order_fact: FILTER_IGNORED})
                ctx.note(f"HaloPSA ignores {feed.filter_name} and {feed.order_name}: {feed.label} were read in full.")
            previous = stamp
            oldest = stamp if oldest is None or stamp < oldest else oldest
        yield page
        if honoured and oldest is not None and oldest < since:
            return  # every later row is older than the cursor


def count_repeated(ctx: RunContext, entity: str, page: Page) -> None:
    if page.repeated:
        ctx.repeated_rows[entity] = ctx.repeated_rows.get(entity, 0) + page.repeated


def note_repeated(ctx: RunContext, entity: str) -> None:
    """After a read: rows the list sent twice (it changed while it was read; each record was
    read once, and deletions are confirmed record by record anyway)."""
    if ctx.repeated_rows.get(entity):
        ctx.note(
            f"HaloPSA's list of {FEEDS[entity].label} changed while it was read: "
            f"{ctx.repeated_rows[entity]} row(s) came twice and were read once."
        )
