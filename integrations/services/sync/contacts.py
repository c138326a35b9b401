"""Billing contacts from HaloPSA users: which users qualify (the connection's rule and the user's
billing flag, read from list rows or, where they lack it, from each user's details), kept per
customer, pruned after a complete read of the users."""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime
from typing import Any, Iterator, Mapping

from django.db import transaction
from django.db.models import Q

from integrations.halopsa import mapping
from integrations.halopsa.client import Page
from integrations.halopsa.exceptions import HaloNotFound, HaloRateLimited
from integrations.halopsa.mapping import MappingError
from integrations.halopsa.shape import FLAG_NOWHERE, FLAG_ON_DETAIL, FLAG_ON_LIST_WITH_BILLINGINFO, UNKNOWN
from integrations.models import Contact, Customer, HaloUserFlag, Origin
from integrations.services.sync.config import CHUNK, ENTITY_CONTACTS, user_details_per_run
from integrations.services.sync.context import RunContext, payload_id
from integrations.services.sync.customers import CONTACT_FIELDS
from integrations.services.sync.deletions import confirmed_gone
from integrations.services.sync.feeds import FEEDS, changed_pages, count_repeated, note_repeated

# user id -> (client id, the contact it should be, or None: it is no billing contact here)
Desired = dict[int, tuple["int | None", "dict[str, Any] | None"]]


class ContactsSync:
    """Billing contacts of one run. Users whose record could not be read, or whose billing flag
    is not known yet, keep the contacts they have (`keep_user_ids`)."""

    def __init__(self, ctx: RunContext) -> None:
        self.ctx = ctx
        self.failed_user_ids: set[int] = set()
        # Billing flags read from user details: users still waiting for one keep their contacts.
        self.user_details_left = user_details_per_run()
        self.waiting_user_ids: set[int] = set()
        self.flagless_user_ids: set[int] = set()

    @property
    def keep_user_ids(self) -> set[int]:
        return self.failed_user_ids | self.waiting_user_ids | self.flagless_user_ids

    def blocked(self) -> bool:
        """Whether user billing contacts cannot be synced on this instance (the probe found the
        billing flag nowhere): the run says why; accounts contacts still sync."""
        shape = self.ctx.shape
        if shape.billing_flag_source != FLAG_NOWHERE:
            return False
        self.ctx.note(
            shape.blocked("billing_contacts")
            or (
                f"Billing contacts from HaloPSA users are not synced: this HaloPSA shows no {shape.billing_flag_field} "
                "on users. Accounts contacts of customers are synced."
            )
        )
        return True

    def _user_pages(self, **query: Any) -> Iterator[Page]:
        # includebillinginfo=true where list rows carry the flag only with it, and while that is
        # unknown (harmless where they carry it anyway: unknown parameters are ignored, docs/halopsa-facts.md §2).
        ask = self.ctx.shape.billing_flag_source in (UNKNOWN, FLAG_ON_LIST_WITH_BILLINGINFO)
        return self.ctx.client.user_pages(include_billing_info=ask, **query)

    # -- reads ---------------------------------------------------------------------------------

    def read(self, *, since: datetime | None, prune: bool) -> None:
        """Every user changed since `since` (all when None). A complete read (`prune`) also
        removes user contacts that no longer qualify; accounts contacts belong to the customers."""
        if self.blocked():
            return
        ctx = self.ctx
        ctx.reading = "billing contacts (users)"
        kept: set[str] = set()
        seen_users: set[int] = set()
        for page in changed_pages(ctx, FEEDS[ENTITY_CONTACTS], since, self._user_pages):
            count_repeated(ctx, ENTITY_CONTACTS, page)
            seen_users.update(user_id for user_id in map(payload_id, page.records) if user_id is not None)
            kept.update(f"{customer_id}:{key}" for customer_id, key in self.page(page.records, with_customer=True))
        note_repeated(ctx, ENTITY_CONTACTS)
        if prune and ENTITY_CONTACTS not in ctx.unidentified:
            ctx.resolve_idless_errors(ENTITY_CONTACTS)
            self._prune(kept, seen_users)

    def _prune(self, kept: set[str], seen_users: set[int]) -> None:
        """After a complete read of the users: user contacts not `kept` ("customer pk:key") go,
        except those of users who keep theirs, and of users the read did not show unless HaloPSA
        confirms they are gone (the list may have skipped them while it was paged)."""
        ctx = self.ctx
        keep_users = self.keep_user_ids
        stale_users = {
            pk: user_id
            for pk, customer_id, key, user_id in Contact.objects.filter(
                customer__connection=ctx.connection,
                customer__origin=Origin.HALOPSA,
                halopsa_key__startswith="user:",
            )
            .values_list("pk", "customer_id", "halopsa_key", "halopsa_user_id")
            .iterator(chunk_size=2000)
            if f"{customer_id}:{key}" not in kept and user_id not in keep_users
        }
        unseen = {user_id for user_id in stale_users.values() if user_id is not None and user_id not in seen_users}
        still_there = unseen - confirmed_gone(ctx, ENTITY_CONTACTS, unseen, seen_users)
        stale = [pk for pk, user_id in stale_users.items() if user_id not in still_there]
        for start in range(0, len(stale), CHUNK):
            with transaction.atomic():
                Contact.objects.filter(pk__in=stale[start : start + CHUNK]).delete()
        ctx.counts.updated += len(stale)

    def of_customer(self, client_id: int) -> None:
        """The billing users of one client, read in full so that ones that stopped qualifying are
        removed (a one-customer sync)."""
        if self.blocked():
            return
        ctx = self.ctx
        ctx.phase(ENTITY_CONTACTS)
        kept: set[str] = set()
        for page in ctx.pages(self._user_pages(client_id=client_id)):
            kept.update(self.page(page.records))
        customer = Customer.objects.filter(connection=ctx.connection, halopsa_id=client_id).first()
        if customer is not None and ENTITY_CONTACTS not in ctx.unidentified:
            with transaction.atomic():
                removed = (
                    Contact.objects.filter(customer=customer, halopsa_key__startswith="user:")
                    .exclude(halopsa_key__in=kept)
                    .exclude(halopsa_user_id__in=self.keep_user_ids)
                    .delete()[0]
                )
                ctx.counts.updated += removed

    # -- one page of users -----------------------------------------------------------------------

    def page(self, records: list[Any], *, with_customer: bool = False) -> set:
        """Apply one page of HaloPSA users to billing contacts. Returns the contact keys kept
        (as (customer pk, key) pairs when `with_customer`, else keys). A user whose billing flag
        is not on its row gets it from its detail (`_billing_flags`) or, until then, keeps the
        contacts it has."""
        rule = self.ctx.connection.billing_contact_rule
        flag_field = self.ctx.shape.billing_flag_field or mapping.BILLING_FLAG_FIELD
        desired, flag_unknown = self._desired(records, rule, flag_field)
        if self.ctx.shape.billing_flag_source == UNKNOWN and records:
            # Found out from the rows themselves (asked with includebillinginfo=true, _user_pages):
            # rows without the key mean the flag is not on list rows.
            on_rows = any(isinstance(row, Mapping) and flag_field in row for row in records)
            self.ctx.learn(billing_flag_source=FLAG_ON_LIST_WITH_BILLINGINFO if on_rows else FLAG_ON_DETAIL)
        client_ids = {client_id for client_id, contact in desired.values() if client_id and contact}
        client_ids.update(client_id for client_id, _ in flag_unknown.values() if client_id)
        customers = {
            c.halopsa_id: c
            for c in Customer.objects.filter(
                connection=self.ctx.connection, halopsa_id__in=client_ids, origin=Origin.HALOPSA
            ).order_by()
            if c.halopsa_id is not None  # never None: the filter
        }
        if flag_unknown:
            self._decide_by_details(desired, flag_unknown, customers, rule, flag_field)
        with transaction.atomic():
            kept = self._apply(desired, customers, with_customer=with_customer)
            self.ctx.resolve_errors(ENTITY_CONTACTS, list(desired))
            self.ctx.page_done(len(records))
        return kept

    def _desired(
        self, records: list[Any], rule: str, flag_field: str
    ) -> tuple[Desired, dict[int, tuple[int | None, Any]]]:
        """(the contact each user should be, {user id: (client id, row)} of users whose row
        lacks the billing flag); records that cannot be read become sync errors."""
        ctx = self.ctx
        desired: Desired = {}
        flag_unknown: dict[int, tuple[int | None, Any]] = {}
        newest, unstamped = None, 0
        for payload in records:
            try:
                user_id = mapping.parse_id(payload.get("id") if isinstance(payload, Mapping) else None, "user id")
                assert user_id is not None  # required: parse_id raises instead
                client_id = mapping.parse_id(payload.get("client_id"), "user client_id", required=False)
                try:
                    desired[user_id] = (client_id, mapping.billing_user_contact(payload, rule, flag_field=flag_field))
                except mapping.BillingFlagUnknown:
                    flag_unknown[user_id] = (client_id, payload)
            except MappingError as exc:
                user_id = payload_id(payload)
                if user_id is not None:
                    self.failed_user_ids.add(user_id)
                ctx.record_error(ENTITY_CONTACTS, user_id, exc.message, payload)
                continue
            stamp = mapping.updated_at(payload, "user")
            if stamp is None:
                unstamped += 1
            elif newest is None or stamp > newest:
                newest = stamp
        ctx.saw(ENTITY_CONTACTS, newest, unstamped)
        return desired, flag_unknown

    def _decide_by_details(
        self,
        desired: Desired,
        flag_unknown: dict[int, tuple[int | None, Any]],
        customers: dict[int, Customer],
        rule: str,
        flag_field: str,
    ) -> None:
        """Users whose row lacks the billing flag join `desired` once their flag is known.

        Only users who could be billing contacts of ours need the flag: inactive users and users
        without an address were decided from their rows, users of clients we do not have here
        are no contacts."""
        flags = self._billing_flags(
            {user_id: row for user_id, (client_id, row) in flag_unknown.items() if client_id in customers}, flag_field
        )
        for user_id, (client_id, row) in flag_unknown.items():
            if client_id not in customers:
                desired[user_id] = (client_id, None)
            elif flags.get(user_id) is not None:
                desired[user_id] = (
                    client_id,
                    mapping.billing_user_contact(row, rule, can_access_invoices=flags[user_id], flag_field=flag_field),
                )

    def _apply(self, desired: Desired, customers: dict[int, Customer], *, with_customer: bool) -> set:
        """Create, update and delete contacts so each user is the contact `desired` says (one
        address appears once per customer). Returns the keys kept (see `page`)."""
        ctx = self.ctx
        existing = list(
            Contact.objects.filter(
                Q(customer__connection=ctx.connection)
                & (Q(halopsa_user_id__in=list(desired)) | Q(customer_id__in=[c.pk for c in customers.values()]))
            )
        )
        by_user: dict[int, list[Contact]] = defaultdict(list)
        by_customer: dict[int, list[Contact]] = defaultdict(list)
        for row in existing:
            if row.halopsa_user_id is not None:
                by_user[row.halopsa_user_id].append(row)
            by_customer[row.customer_id].append(row)
        kept: set = set()
        to_create, to_update, to_delete = [], [], set()
        for user_id, (client_id, contact) in desired.items():
            customer = customers.get(client_id) if client_id is not None and contact is not None else None
            current = None
            for row in by_user.get(user_id, []):
                if customer is not None and row.customer_id == customer.pk and current is None:
                    current = row
                else:
                    to_delete.add(row.pk)  # moved to another client, or no longer a billing contact
            if customer is None or contact is None:
                if current is not None:
                    to_delete.add(current.pk)
                if by_user.get(user_id):
                    ctx.counts.updated += 1
                continue
            duplicate = any(
                row is not current and row.pk not in to_delete and row.email.lower() == contact["email"].lower()
                for row in by_customer.get(customer.pk, [])
            )
            if duplicate:  # the address is already a billing contact of this customer
                if current is not None:
                    to_delete.add(current.pk)
                    ctx.counts.updated += 1
                continue
            kept.add((customer.pk, contact["halopsa_key"]) if with_customer else contact["halopsa_key"])
            if current is None:
                row = Contact(customer=customer, **{k: contact[k] for k in CONTACT_FIELDS})
                to_create.append(row)
                by_customer[customer.pk].append(row)
                ctx.counts.created += 1
            elif current.fingerprint != contact["fingerprint"]:
                current.name, current.email, current.fingerprint = (
                    contact["name"],
                    contact["email"],
                    contact["fingerprint"],
                )
                current.updated_at = ctx.now
                to_update.append(current)
                ctx.counts.updated += 1
            else:
                ctx.counts.unchanged += 1
        if to_delete:
            Contact.objects.filter(pk__in=to_delete).delete()
        Contact.objects.bulk_create(to_create)
        Contact.objects.bulk_update(to_update, ["name", "email", "fingerprint", "updated_at"])
        return kept

    def _billing_flags(self, rows: dict[int, Any], flag_field: str) -> dict[int, bool | None]:
        """{user id: billing flag or None} for users whose list rows lack it, from GET /Users/{id}
        (halopsa-facts §4.2: only the full `Users` record has canaccessinvoices). A user's detail is
        read again only when its list row changed since (HaloUserFlag keeps that row's
        fingerprint), at most `user_details_per_run()` per run; users beyond that, or whose detail
        lacks the flag too, are None: they keep the contacts they have."""
        if not rows:
            return {}
        ctx = self.ctx
        stored = {
            f.halopsa_user_id: f
            for f in HaloUserFlag.objects.filter(connection=ctx.connection, halopsa_user_id__in=list(rows))
        }
        flags: dict[int, bool | None] = {}
        to_create, to_update = [], []
        for user_id, row in rows.items():
            list_fingerprint = mapping.fingerprint({"flag": flag_field, "row": row})  # another flag: read again
            known = stored.get(user_id)
            if known is not None and known.checked_at is not None and known.list_fingerprint == list_fingerprint:
                flags[user_id] = known.can_access_invoices
            elif self.user_details_left <= 0:
                flags[user_id] = None
                self.waiting_user_ids.add(user_id)
                continue
            else:
                self.user_details_left -= 1
                try:
                    detail = ctx.client.get_user(user_id)
                except HaloNotFound:  # gone since the list was read: a complete read removes its contacts
                    flags[user_id] = None
                    self.waiting_user_ids.add(user_id)
                    continue
                except HaloRateLimited:  # out of budget: the rest wait for the next run
                    self.user_details_left = 0
                    flags[user_id] = None
                    self.waiting_user_ids.add(user_id)
                    continue
                flags[user_id] = mapping.billing_flag(detail, flag_field)
                if known is None:
                    known = HaloUserFlag(connection=ctx.connection, halopsa_user_id=user_id)
                    to_create.append(known)
                else:
                    to_update.append(known)
                known.list_fingerprint, known.can_access_invoices, known.checked_at = (
                    list_fingerprint,
                    flags[user_id],
                    ctx.now,
                )
            if flags[user_id] is None:
                self.flagless_user_ids.add(user_id)
        with transaction.atomic():
            HaloUserFlag.objects.bulk_create(to_create)
            HaloUserFlag.objects.bulk_update(to_update, ["list_fingerprint", "can_access_invoices", "checked_at"])
        return flags

    def note_waiting_users(self) -> None:
        ctx = self.ctx
        if self.waiting_user_ids:
            ctx.note(
                f"{len(self.waiting_user_ids)} HaloPSA user(s) wait for their billing flag (read from each "
                f"user's details, at most {user_details_per_run()} per run); they keep their billing contacts "
                "until the next sync reads it."
            )
        if self.flagless_user_ids:
            ctx.note(
                f"{len(self.flagless_user_ids)} HaloPSA user(s) show no {ctx.shape.billing_flag_field} even in "
                "their details; they keep the billing contacts they have."
            )
