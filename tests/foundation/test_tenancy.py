"""Tenancy: `visible_to` and `get_visible_or_404` never leak one partner's rows to another.

Both partners get identical data (same names, numbers and HaloPSA ids), so a filter that keys on
anything but the partner would show up as a leak.
"""

from __future__ import annotations

from datetime import date
from decimal import Decimal

import pytest
from django.apps import apps
from django.http import Http404

from integrations import models as m
from integrations.tenancy import PartnerScopedQuerySet, get_visible_or_404

# Models that are not partner-owned rows: people and infrastructure.
NOT_PARTNER_OWNED = {"User", "Lease"}


def build_partner_data(partner, make_connection) -> dict[type, object]:
    connection = make_connection(partner, name="Main HaloPSA", client_secret="same-secret")
    customer = m.Customer.objects.create(connection=connection, halopsa_id=10, name="Contoso")
    contact = m.Contact.objects.create(
        customer=customer,
        halopsa_key="accounts",
        source=m.Contact.Source.ACCOUNTS_CONTACT,
        name="Pat",
        email="pat@contoso.example",
    )
    invoice = m.Invoice.objects.create(
        connection=connection,
        customer=customer,
        halopsa_id=500,
        number="INV-500",
        invoice_date=date(2026, 1, 5),
        total=Decimal("120.00"),
        balance=Decimal("120.00"),
    )
    line = m.InvoiceLine.objects.create(
        invoice=invoice, halopsa_id=1, description="Support", net_amount=Decimal("100.00")
    )
    payment = m.Payment.objects.create(
        invoice=invoice,
        connection=connection,
        halopsa_id=900,
        source=m.Origin.HALOPSA,
        amount=Decimal("20.00"),
        paid_on=date(2026, 1, 6),
    )
    pdf = m.InvoicePdf.objects.create(invoice=invoice, file="invoice_pdfs/2026/01/inv-500.pdf", sha256="0" * 64)
    cursor = m.SyncCursor.objects.create(connection=connection, entity=m.SyncCursor.Entity.INVOICES)
    run = m.SyncRun.objects.create(connection=connection, trigger=m.SyncRun.Trigger.MANUAL, scope=m.SyncRun.Scope.FULL)
    error = m.SyncError.objects.create(run=run, connection=connection, entity="invoices", halopsa_id=501, message="bad")
    job = m.PushJob.objects.create(
        connection=connection,
        kind=m.PushJob.Kind.PAYMENT_CREATE,
        key=f"pay-{partner.pk}",
        payment=payment,
        invoice=invoice,
    )
    event = m.WebhookEvent.objects.create(
        connection=connection, dedupe_key="delivery-1", entity="invoices", object_id=500
    )
    audit = m.AuditEvent.objects.create(partner=partner, action="connection.create", summary="Created Main HaloPSA")
    incident = m.Incident.objects.create(connection=connection, kind=m.Incident.Kind.SYNC_FAILING, message="failing")
    return {
        m.Partner: partner,
        m.Connection: connection,
        m.Customer: customer,
        m.Contact: contact,
        m.Invoice: invoice,
        m.InvoiceLine: line,
        m.Payment: payment,
        m.InvoicePdf: pdf,
        m.SyncCursor: cursor,
        m.SyncRun: run,
        m.SyncError: error,
        m.PushJob: job,
        m.WebhookEvent: event,
        m.AuditEvent: audit,
        m.Incident: incident,
    }


@pytest.fixture
def world(partner, other_partner, make_connection):
    return {
        partner.pk: build_partner_data(partner, make_connection),
        other_partner.pk: build_partner_data(other_partner, make_connection),
    }


SCOPED_MODELS = [
    m.Partner,
    m.Connection,
    m.Customer,
    m.Contact,
    m.Invoice,
    m.InvoiceLine,
    m.Payment,
    m.InvoicePdf,
    m.SyncCursor,
    m.SyncRun,
    m.SyncError,
    m.PushJob,
    m.WebhookEvent,
    m.AuditEvent,
    m.Incident,
]


def test_every_partner_owned_model_is_scoped():
    for model in apps.get_app_config("integrations").get_models():
        if model.__name__ in NOT_PARTNER_OWNED:
            continue
        assert isinstance(model._default_manager.all(), PartnerScopedQuerySet), model.__name__
        assert getattr(model, "partner_lookup", None), model.__name__


@pytest.mark.parametrize("model", SCOPED_MODELS, ids=lambda model: model.__name__)
def test_partner_user_sees_only_their_partners_rows(world, partner, other_partner, partner_user, other_user, model):
    own = world[partner.pk][model]
    theirs = world[other_partner.pk][model]

    assert list(model.objects.visible_to(partner_user)) == [own]
    assert list(model.objects.visible_to(other_user)) == [theirs]


@pytest.mark.parametrize("model", SCOPED_MODELS, ids=lambda model: model.__name__)
def test_get_visible_or_404_hides_other_partners_objects(world, partner, other_partner, partner_user, model):
    own = world[partner.pk][model]
    theirs = world[other_partner.pk][model]

    assert get_visible_or_404(model, partner_user, pk=own.pk) == own
    assert get_visible_or_404(model.objects.all(), partner_user, pk=own.pk) == own
    with pytest.raises(Http404):
        get_visible_or_404(model, partner_user, pk=theirs.pk)


@pytest.mark.parametrize("model", SCOPED_MODELS, ids=lambda model: model.__name__)
def test_staff_see_every_partner(world, staff_user, model):
    assert model.objects.visible_to(staff_user).count() == 2
    for rows in world.values():
        assert get_visible_or_404(model, staff_user, pk=rows[model].pk) == rows[model]


@pytest.mark.parametrize("model", SCOPED_MODELS, ids=lambda model: model.__name__)
def test_user_without_partner_sees_nothing(world, make_user, model):
    loner = make_user("loner", None)

    assert not model.objects.visible_to(loner).exists()
    with pytest.raises(Http404):
        get_visible_or_404(model, loner, pk=next(iter(world.values()))[model].pk)


def test_anonymous_none_and_inactive_users_see_nothing(world, partner_user):
    from django.contrib.auth.models import AnonymousUser

    assert not m.Invoice.objects.visible_to(AnonymousUser()).exists()
    assert not m.Invoice.objects.visible_to(None).exists()
    partner_user.is_active = False
    assert not m.Invoice.objects.visible_to(partner_user).exists()


def test_lookups_combine_with_scoping_instead_of_replacing_it(world, partner, other_partner, partner_user):
    # Same invoice number and HaloPSA id on both sides: the lookup alone matches both rows.
    assert m.Invoice.objects.filter(number="INV-500").count() == 2
    invoice = get_visible_or_404(m.Invoice, partner_user, number="INV-500", halopsa_id=500)
    assert invoice.connection.partner == partner

    theirs = world[other_partner.pk][m.Invoice]
    with pytest.raises(Http404):
        get_visible_or_404(m.Invoice.objects.filter(pk=theirs.pk), partner_user)


def test_for_partner_selects_one_partners_rows(world, partner):
    assert list(m.Payment.objects.for_partner(partner.pk)) == [world[partner.pk][m.Payment]]
