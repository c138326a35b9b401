"""A complete set of partner-owned rows (one of each kind) built directly with the ORM."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta
from decimal import Decimal

import pytest
from django.core.files.base import ContentFile
from django.utils import timezone

PDF_BYTES = b"%PDF-1.4\n% syncportal test pdf\n1 0 obj <<>> endobj\ntrailer <<>>\n%%EOF\n"


@dataclass
class World:
    connection: object
    unknown: object
    customer: object
    deleted_customer: object
    contact: object
    invoice: object
    unknown_invoice: object
    deleted_invoice: object
    payment: object
    pdf: object
    run: object
    sync_error: object
    push_job: object
    webhook_event: object
    audit: object

    def by_key(self, key: str):
        return getattr(self, key)


@pytest.fixture
def build_world(db, make_connection):
    """build_world(partner, tag) -> World; every name carries `tag` so pages can be checked for leaks."""
    from integrations.models import (
        AuditEvent,
        Contact,
        Customer,
        Invoice,
        InvoiceLine,
        InvoicePdf,
        Payment,
        PushJob,
        SyncError,
        SyncRun,
        WebhookEvent,
    )

    def _build(partner, tag: str, sandbox=None) -> World:
        connection = make_connection(partner, sandbox, name=f"{tag} HaloPSA")
        now = timezone.now()
        unknown = Customer.objects.create(connection=connection, name=Customer.UNKNOWN_NAME, is_unknown=True)
        customer = Customer.objects.create(connection=connection, halopsa_id=10, name=f"{tag} Customer")
        deleted_customer = Customer.objects.create(
            connection=connection, halopsa_id=11, name=f"{tag} Gone Customer", deleted_in_halopsa_at=now
        )
        contact = Contact.objects.create(
            customer=customer,
            halopsa_key="accounts",
            source=Contact.Source.ACCOUNTS_CONTACT,
            name=f"{tag} Billing",
            email=f"billing@{tag.lower()}.example",
        )
        invoice = Invoice.objects.create(
            connection=connection,
            customer=customer,
            halopsa_id=100,
            number=f"{tag}-INV-100",
            invoice_date=date(2026, 10, 1),
            due_date=date(2026, 10, 31),
            total=Decimal("120.00"),
            subtotal=Decimal("100.00"),
            tax=Decimal("20.00"),
            balance=Decimal("120.00"),
            halopsa_client_id=10,
        )
        InvoiceLine.objects.create(
            invoice=invoice,
            halopsa_id=1000,
            description=f"{tag} managed services",
            quantity=Decimal("1"),
            unit_price=Decimal("100"),
            net_amount=Decimal("100.00"),
            tax_amount=Decimal("20.00"),
        )
        unknown_invoice = Invoice.objects.create(
            connection=connection,
            customer=unknown,
            halopsa_id=101,
            number=f"{tag}-INV-101",
            invoice_date=date(2026, 10, 2),
            total=Decimal("50.00"),
            balance=Decimal("50.00"),
            halopsa_client_id=0,
            raw={"id": 101, "client_id": 0, "client_name": "", "reference": f"{tag}-REF"},
        )
        deleted_invoice = Invoice.objects.create(
            connection=connection,
            customer=customer,
            halopsa_id=102,
            number=f"{tag}-INV-102",
            invoice_date=date(2026, 9, 1),
            total=Decimal("75.00"),
            balance=Decimal("75.00"),
            deleted_in_halopsa_at=now,
        )
        payment = Payment.objects.create(
            invoice=invoice,
            connection=connection,
            source="platform",
            amount=Decimal("10.00"),
            paid_on=date(2026, 10, 5),
            reference=f"{tag}-PAY",
        )
        pdf = InvoicePdf(invoice=invoice, sha256="0" * 64, size=len(PDF_BYTES), attachment_id=5)
        pdf.file.save(f"{tag.lower()}-100.pdf", ContentFile(PDF_BYTES), save=True)
        run = SyncRun.objects.create(
            connection=connection,
            trigger=SyncRun.Trigger.MANUAL,
            scope=SyncRun.Scope.FULL,
            state=SyncRun.State.PARTIAL,
            started_at=now - timedelta(seconds=30),
            finished_at=now,
            created=3,
            updated=1,
            failed=1,
            api_requests=7,
            progress_done=5,
            progress_total=5,
        )
        sync_error = SyncError.objects.create(
            run=run,
            connection=connection,
            entity="invoices",
            halopsa_id=103,
            message=f"{tag} bad record",
            payload={"id": 103, "total": "abc"},
        )
        push_job = PushJob.objects.create(
            connection=connection,
            kind=PushJob.Kind.PAYMENT_CREATE,
            key=f"{tag}-push",
            payment=payment,
            invoice=invoice,
            state=PushJob.State.NEEDS_REVIEW,
            last_error=f"{tag} push failed",
        )
        webhook_event = WebhookEvent.objects.create(
            connection=connection,
            dedupe_key=f"{tag}-evt",
            event="Invoice Updated",
            entity="invoices",
            object_id=100,
            state=WebhookEvent.State.FAILED,
            error=f"{tag} webhook failed",
        )
        audit = AuditEvent.objects.create(partner=partner, action="test.seed", summary=f"{tag} seeded the world")
        return World(
            connection,
            unknown,
            customer,
            deleted_customer,
            contact,
            invoice,
            unknown_invoice,
            deleted_invoice,
            payment,
            pdf,
            run,
            sync_error,
            push_job,
            webhook_event,
            audit,
        )

    return _build


@pytest.fixture
def mine(build_world, partner):
    return build_world(partner, "ACME")


@pytest.fixture
def theirs(build_world, other_partner):
    return build_world(other_partner, "GLOBEX")


@pytest.fixture
def alice_client(client, partner_user):
    client.force_login(partner_user)
    return client
