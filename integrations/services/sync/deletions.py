"""Records a complete read did not list: flagged "deleted in HaloPSA" only once HaloPSA confirms
they are gone (never deleted or archived here: a person archives)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Callable

from django.db import transaction

from integrations.halopsa.client import ENVELOPE_CLIENTS, ENVELOPE_INVOICES, ENVELOPE_USERS
from integrations.halopsa.exceptions import HaloError, HaloNotFound
from integrations.models import Customer, Invoice, Origin
from integrations.services.sync.config import (
    CHUNK,
    ENTITY_CONTACTS,
    ENTITY_CUSTOMERS,
    ENTITY_INVOICES,
    deletion_checks,
)
from integrations.services.sync.feeds import FEEDS

if TYPE_CHECKING:
    from integrations.services.sync.context import RunContext

logger = logging.getLogger(__name__)

# The id-only list (HaloClient.listed_ids) that checks an entity's deletion candidates.
ID_LIST_OF = {ENTITY_CUSTOMERS: ENVELOPE_CLIENTS, ENTITY_CONTACTS: ENVELOPE_USERS, ENTITY_INVOICES: ENVELOPE_INVOICES}

# A record the list skipped but HaloPSA has: written as if listed (its entity's page writer).
WriteFound = Callable[[Any], Any]


def flag_missing(
    ctx: RunContext, model: type[Customer] | type[Invoice], seen: set[int], *, write_found: WriteFound
) -> int:
    """After a complete read: rows HaloPSA no longer lists, and confirms it no longer has
    (`confirmed_gone`), get "deleted in HaloPSA"."""
    entity = ENTITY_CUSTOMERS if model is Customer else ENTITY_INVOICES
    if entity in ctx.unidentified:
        logger.warning("connection %s: not flagging deleted %s (a record without id failed)", ctx.connection.pk, entity)
        return 0
    ctx.resolve_idless_errors(entity)
    candidates = {
        halopsa_id: pk
        for pk, halopsa_id in model.objects.filter(
            connection=ctx.connection,
            origin=Origin.HALOPSA,
            halopsa_id__isnull=False,
            deleted_in_halopsa_at__isnull=True,
        )
        .values_list("pk", "halopsa_id")
        .iterator(chunk_size=2000)
        if halopsa_id is not None and halopsa_id not in seen  # never None: the filter
    }
    missing = [
        candidates[halopsa_id]
        for halopsa_id in confirmed_gone(ctx, entity, set(candidates), seen, write_found=write_found)
    ]
    for start in range(0, len(missing), CHUNK):
        with transaction.atomic():
            model.objects.filter(pk__in=missing[start : start + CHUNK]).update(
                deleted_in_halopsa_at=ctx.now, updated_at=ctx.now
            )
    ctx.counts.updated += len(missing)
    return len(missing)


def confirmed_gone(
    ctx: RunContext, entity: str, candidates: set[int], seen: set[int], *, write_found: WriteFound | None = None
) -> set[int]:
    """Which of `candidates` (ours, but not in this complete read of `entity`) HaloPSA
    confirms it no longer has. Not being listed alone is a guess: a record deleted while a
    list is paged moves every later row up one place, so the next page skips a live record.

    Up to `deletion_checks()` candidates are read one by one: a 404 confirms; a record that
    is there was skipped while paging, and is written now (`write_found`; users keep their
    contacts until the next full read). More are checked against one id-only list of the
    entity, trusted only when it holds every record the read saw; a candidate it holds is not
    flagged (the next full read brings it). What cannot be checked is not flagged this time,
    and the run says so."""
    if not candidates:
        return set()
    label = FEEDS[entity].label
    if len(candidates) <= deletion_checks():
        gone: set[int] = set()
        for halopsa_id in sorted(candidates):
            try:
                payload = _read_one(ctx, entity, halopsa_id)
            except HaloNotFound:
                gone.add(halopsa_id)
            except HaloError as exc:
                ctx.note(
                    f"Some {label} missing from HaloPSA's list could not be checked ({exc.message}); "
                    "they are not flagged as deleted this time."
                )
                break
            else:
                if write_found is not None:
                    write_found(payload)
        return gone
    try:
        listed = ctx.client.listed_ids(ID_LIST_OF[entity])
    except HaloError as exc:
        ctx.note(
            f"{len(candidates)} {label} missing from HaloPSA's list could not be checked ({exc.message}); "
            "they are not flagged as deleted this time."
        )
        return set()
    if not seen <= listed:
        ctx.note(
            f"HaloPSA's id-only list of {label} lacked records its full list had just shown, so the "
            f"{len(candidates)} missing from the full list are not flagged as deleted this time."
        )
        return set()
    return candidates - listed


def _read_one(ctx: RunContext, entity: str, halopsa_id: int) -> Any:
    if entity == ENTITY_CUSTOMERS:
        return ctx.client.get_client(halopsa_id)
    if entity == ENTITY_CONTACTS:
        return ctx.client.get_user(halopsa_id)
    return ctx.client.get_invoice(halopsa_id, include_lines=True)
