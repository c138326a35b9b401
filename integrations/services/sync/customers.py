"""Customers: HaloPSA clients, with the "accounts" billing contact each may carry."""

from __future__ import annotations

import functools
from collections import defaultdict
from datetime import datetime
from typing import Any

from django.db import IntegrityError, transaction

from integrations.halopsa import mapping
from integrations.halopsa.exceptions import HaloNotFound
from integrations.models import Connection, Contact, Customer, Origin
from integrations.services.sync.config import ENTITY_CUSTOMERS
from integrations.services.sync.context import Mapped, RunContext
from integrations.services.sync.deletions import flag_missing
from integrations.services.sync.feeds import FEEDS, changed_pages, count_repeated, note_repeated

CUSTOMER_UPDATE_FIELDS = [
    "name",
    "inactive",
    "remote_updated_at",
    "fingerprint",
    "raw",
    "last_seen_at",
    "deleted_in_halopsa_at",
    "updated_at",
]
CONTACT_FIELDS = ("halopsa_key", "halopsa_user_id", "source", "name", "email", "fingerprint")


def customer_unknown(connection: Connection) -> Customer:
    """The connection's "unknown" customer (invoices HaloPSA has no customer for)."""
    try:
        with transaction.atomic():
            customer, _ = Customer.objects.get_or_create(
                connection=connection,
                is_unknown=True,
                defaults={"name": Customer.UNKNOWN_NAME, "halopsa_id": None, "origin": Origin.HALOPSA},
            )
    except IntegrityError:  # created concurrently
        customer = Customer.objects.get(connection=connection, is_unknown=True)
    return customer


class CustomersSync:
    """Reads HaloPSA clients into customers (upserts keyed on (connection, halopsa_id))."""

    def __init__(self, ctx: RunContext) -> None:
        self.ctx = ctx

    def read(self, *, since: datetime | None, detect_deletions: bool) -> None:
        """Every client changed since `since` (all when None); after a complete read, customers
        HaloPSA confirms are gone are flagged."""
        ctx = self.ctx
        ctx.reading = "customers"
        seen: set[int] = set()
        list_pages = functools.partial(ctx.client.client_pages, include_inactive=True)
        for page in changed_pages(ctx, FEEDS[ENTITY_CUSTOMERS], since, list_pages):
            count_repeated(ctx, ENTITY_CUSTOMERS, page)
            seen.update(self.page(page.records))
        note_repeated(ctx, ENTITY_CUSTOMERS)
        if detect_deletions:
            flag_missing(ctx, Customer, seen, write_found=lambda payload: self.page([payload]))

    def one(self, halopsa_id: int) -> bool:
        """Sync one client; False when HaloPSA no longer has it (then flagged "deleted in HaloPSA")."""
        ctx = self.ctx
        try:
            payload = ctx.client.get_client(halopsa_id)
        except HaloNotFound:
            ctx.flag_gone(Customer, halopsa_id)
            return False
        ctx.grow_total(1)
        self.page([payload])
        return True

    def page(self, records: list[Any]) -> set[int]:
        """Upsert one page of HaloPSA clients (and their accounts contacts). Returns ids seen."""
        ctx = self.ctx
        seen: set[int] = set()
        mapped = ctx.map_records(ENTITY_CUSTOMERS, records, mapping.map_client, seen)
        ctx.store(self._write, mapped, ENTITY_CUSTOMERS, page_records=len(records))
        return seen

    def _write(self, mapped: Mapped, page_records: int) -> None:
        ctx = self.ctx
        with transaction.atomic():
            existing = {
                c.halopsa_id: c
                for c in Customer.objects.filter(
                    connection=ctx.connection, halopsa_id__in=[r["halopsa_id"] for r, _ in mapped]
                ).order_by()
            }
            to_create, to_update, changed = [], [], []
            for row, payload in mapped:
                customer = existing.get(row["halopsa_id"])
                if customer is not None and customer.origin != Origin.HALOPSA:
                    ctx.counts.unchanged += 1  # created in the portal: never touched by a sync
                    continue
                if (
                    customer is not None
                    and customer.fingerprint == row["fingerprint"]
                    and customer.deleted_in_halopsa_at is None
                ):
                    ctx.counts.unchanged += 1
                    continue
                if customer is None:
                    customer = Customer(connection=ctx.connection, halopsa_id=row["halopsa_id"], origin=Origin.HALOPSA)
                    to_create.append(customer)
                else:
                    to_update.append(customer)
                customer.name, customer.inactive = row["name"], row["inactive"]
                customer.remote_updated_at, customer.fingerprint = row["remote_updated_at"], row["fingerprint"]
                customer.raw, customer.last_seen_at, customer.deleted_in_halopsa_at = payload, ctx.now, None
                customer.updated_at = ctx.now
                changed.append((customer, payload))
            Customer.objects.bulk_create(to_create)
            Customer.objects.bulk_update(to_update, CUSTOMER_UPDATE_FIELDS)
            ctx.counts.created += len(to_create)
            ctx.counts.updated += len(to_update)
            self._accounts_contacts(changed)
            ctx.resolve_errors(ENTITY_CUSTOMERS, [r["halopsa_id"] for r, _ in mapped])
            ctx.page_done(page_records)

    def _accounts_contacts(self, changed: list[tuple[Customer, Any]]) -> None:
        """Write the "accounts" billing contact of customers whose HaloPSA record changed."""
        if not changed:
            return
        rule = self.ctx.connection.billing_contact_rule
        contacts_by_customer: dict[int, list[Contact]] = defaultdict(list)
        for contact in Contact.objects.filter(customer_id__in=[c.pk for c, _ in changed]):
            contacts_by_customer[contact.customer_id].append(contact)
        to_create, to_update, to_delete = [], [], []
        for customer, payload in changed:
            desired = mapping.accounts_contact(payload, rule)
            contacts = contacts_by_customer.get(customer.pk, [])
            current = next((c for c in contacts if c.halopsa_key == "accounts"), None)
            if desired is None:
                if current is not None:
                    to_delete.append(current.pk)
                continue
            # One address appears once: the accounts contact wins over a user with the same e-mail.
            to_delete.extend(
                c.pk for c in contacts if c.halopsa_key != "accounts" and c.email.lower() == desired["email"].lower()
            )
            if current is None:
                to_create.append(Contact(customer=customer, **{k: desired[k] for k in CONTACT_FIELDS}))
            elif current.fingerprint != desired["fingerprint"]:
                current.name, current.email, current.fingerprint = (
                    desired["name"],
                    desired["email"],
                    desired["fingerprint"],
                )
                current.updated_at = self.ctx.now
                to_update.append(current)
        if to_delete:
            Contact.objects.filter(pk__in=to_delete).delete()
        Contact.objects.bulk_create(to_create)
        Contact.objects.bulk_update(to_update, ["name", "email", "fingerprint", "updated_at"])
