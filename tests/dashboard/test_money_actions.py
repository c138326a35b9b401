"""Money screens (issue 17 items 2-4): a confirmation before every money action, a status menu that
tells the truth, a payment form only where a payment can be made (and errors that keep what was
typed), messages that say what happened, and each payment's standing with HaloPSA."""

from __future__ import annotations

import re
from decimal import Decimal

import pytest
from django.urls import reverse

from integrations.models import AuditEvent, Customer, Invoice, Payment, PushJob

pytestmark = pytest.mark.django_db


def carried_fields(body: str) -> dict[str, list[str]]:
    """The hidden fields the confirmation page posts again (what a browser without scripts sends)."""
    fields: dict[str, list[str]] = {}
    for name, value in re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)">', body):
        fields.setdefault(name, []).append(value)
    return fields


def confirm(client, url: str, first_post: dict) -> object:
    """Post like a person: the action's form, then the confirmation page's button."""
    page = client.post(url, first_post)
    assert page.status_code == 200, page.status_code
    body = page.content.decode()
    assert 'name="confirmed" value="yes"' in body
    return client.post(url, {**carried_fields(body), "confirmed": "yes"}, follow=True)


def state_of(world) -> tuple:
    invoice = Invoice.objects.get(pk=world.invoice.pk)
    return (
        invoice.status,
        invoice.amount_paid,
        invoice.balance,
        invoice.archived_at,
        Payment.objects.get(pk=world.payment.pk).voided_at,
        Payment.objects.filter(invoice=invoice).count(),
        Invoice.objects.get(pk=world.deleted_invoice.pk).archived_at,
        Customer.objects.get(pk=world.deleted_customer.pk).archived_at,
        PushJob.objects.count(),
        AuditEvent.objects.exclude(action="test.seed").count(),
    )


ACTIONS = {
    "record payment": (
        "invoice_payment",
        "invoice",
        {"amount": "20.00", "method": "card", "reference": "ACME-WEB-9"},
        ["20.00 USD", "ACME-INV-100", "ACME Customer", "card", "ACME-WEB-9", "120.00 USD → 100.00 USD"],
    ),
    "delete payment": ("payment_delete", "payment", {}, ["10.00 USD", "ACME-INV-100", "ACME Customer", "ACME-PAY"]),
    "mark paid": (
        "invoice_status",
        "invoice",
        {"status": "paid"},
        ["ACME-INV-100", "ACME Customer", "Open → Paid", "120.00 USD → 0.00 USD", "markaspaid"],
    ),
    "void": (
        "invoice_status",
        "invoice",
        {"status": "void"},
        ["ACME-INV-100", "ACME Customer", "120.00 USD → 0.00 USD"],
    ),
    "archive invoice": (
        "invoice_archive",
        "invoice",
        {"action": "archive"},
        ["ACME-INV-100", "ACME Customer", "120.00 USD"],
    ),
    "archive customer": ("customer_archive", "deleted_customer", {"action": "archive"}, ["ACME Gone Customer"]),
}


@pytest.mark.parametrize("action", ACTIONS)
def test_a_money_action_posted_without_its_confirmation_does_nothing(alice_client, mine, action):
    name, key, data, shown = ACTIONS[action]
    before = state_of(mine)
    response = alice_client.post(reverse(name, kwargs={"pk": mine.by_key(key).pk}), data)
    assert response.status_code == 200
    body = response.content.decode()
    for text in shown:  # amount, invoice and customer, in words
        assert text in body, text
    assert state_of(mine) == before


@pytest.mark.parametrize("action", ACTIONS)
def test_the_confirmation_page_then_acts_without_javascript(alice_client, mine, action):
    name, key, data, _ = ACTIONS[action]
    before = state_of(mine)
    response = confirm(alice_client, reverse(name, kwargs={"pk": mine.by_key(key).pk}), data)
    assert response.status_code == 200
    assert state_of(mine) != before
    assert [m.level_tag for m in response.context["messages"]] == ["success"]


def test_archive_queue_confirms_what_it_archives(alice_client, mine):
    url = reverse("archive_queue")
    page = alice_client.post(
        url, {"action": "archive", "customers": [mine.deleted_customer.pk], "invoices": [mine.deleted_invoice.pk]}
    )
    body = page.content.decode()
    assert (
        "Archive these 2 records?" in body
        and "ACME Gone Customer" in body
        and "ACME-INV-102" in body
        and "75.00 USD" in body
    )
    assert Invoice.objects.get(pk=mine.deleted_invoice.pk).archived_at is None
    response = alice_client.post(url, {**carried_fields(body), "confirmed": "yes"}, follow=True)
    assert "2 records archived." in response.content.decode()
    assert Invoice.objects.get(pk=mine.deleted_invoice.pk).archived_at is not None
    # Un-archiving takes nothing out of the books: no confirmation step.
    alice_client.post(url, {"action": "unarchive", "show": "archived", "invoices": [mine.deleted_invoice.pk]})
    assert Invoice.objects.get(pk=mine.deleted_invoice.pk).archived_at is None


def menu(client, invoice) -> tuple[list[tuple[str, str]], str]:
    body = client.get(reverse("invoice_detail", kwargs={"pk": invoice.pk})).content.decode()
    select = re.search(r'<select name="status"[^>]*>(.*?)</select>', body, re.S).group(1)
    options = re.findall(r'<option value="([^"]+)"[^>]*>([^<]+)</option>', select)
    selected = re.search(r'<option value="([^"]+)"[^>]*selected', select).group(1)
    return options, selected


@pytest.mark.parametrize(
    "status, amount_paid, balance, offered",
    [
        ("open", "0.00", "120.00", ["open", "paid", "void"]),
        ("partially_paid", "20.00", "100.00", ["partially_paid", "paid", "void"]),
        ("paid", "120.00", "0.00", ["paid", "void"]),
        ("void", "0.00", "0.00", ["void", "open"]),
    ],
)
def test_the_status_menu_preselects_what_is_true_and_offers_only_sensible_changes(
    alice_client, mine, status, amount_paid, balance, offered
):
    Invoice.objects.filter(pk=mine.invoice.pk).update(
        status=status, amount_paid=Decimal(amount_paid), balance=Decimal(balance)
    )
    options, selected = menu(alice_client, mine.invoice)
    assert selected == status
    assert [value for value, _ in options] == offered
    assert options[0][1].endswith("(now)")


def test_a_paid_invoice_says_how_it_is_re_opened_and_a_re_open_says_what_happened(alice_client, mine, partner_user):
    Invoice.objects.filter(pk=mine.invoice.pk).update(
        status="paid", amount_paid=Decimal("120.00"), balance=Decimal("0.00")
    )
    body = alice_client.get(reverse("invoice_detail", kwargs={"pk": mine.invoice.pk})).content.decode()
    assert "to re-open it, delete the payments that pay it" in body
    # A re-open posted anyway (an old page, a hand-made request) is refused with the reason.
    response = alice_client.post(
        reverse("invoice_status", kwargs={"pk": mine.invoice.pk}), {"status": "open"}, follow=True
    )
    body = response.content.decode()
    assert (
        "Status not changed" in body
        and "re-opens a paid invoice only when the payments that pay it are removed" in body
    )
    assert "Status changed" not in body and "HaloPSA is updated" not in body
    assert Invoice.objects.get(pk=mine.invoice.pk).status == "paid"
    assert AuditEvent.objects.filter(action="invoice.status_refused", user=partner_user).exists()


def test_the_same_status_again_is_explained_not_reported_as_a_change(alice_client, mine):
    response = alice_client.post(
        reverse("invoice_status", kwargs={"pk": mine.invoice.pk}), {"status": "open"}, follow=True
    )
    body = response.content.decode()
    assert "It is already open" in body and "Status changed" not in body
    assert PushJob.objects.filter(kind=PushJob.Kind.INVOICE_STATUS).count() == 0


@pytest.mark.parametrize("status, reason", [("paid", "nothing left to pay"), ("void", "is void; it takes no payments")])
def test_no_payment_form_on_paid_or_void_invoices_and_the_server_refuses_too(alice_client, mine, status, reason):
    Invoice.objects.filter(pk=mine.invoice.pk).update(status=status, balance=Decimal("0.00"))
    body = alice_client.get(reverse("invoice_detail", kwargs={"pk": mine.invoice.pk})).content.decode()
    assert f'action="{reverse("invoice_payment", kwargs={"pk": mine.invoice.pk})}"' not in body
    assert reason in body
    before = Payment.objects.count()
    response = alice_client.post(
        reverse("invoice_payment", kwargs={"pk": mine.invoice.pk}), {"amount": "5.00", "confirmed": "yes"}, follow=True
    )
    assert "Payment not recorded" in response.content.decode() and reason in response.content.decode()
    assert Payment.objects.count() == before


def test_payment_form_errors_keep_what_was_typed_next_to_the_fields(alice_client, mine):
    typed = {"amount": "12.345", "paid_on": "0001-01-01", "method": "card", "reference": "R-17"}
    response = alice_client.post(reverse("invoice_payment", kwargs={"pk": mine.invoice.pk}), typed)
    assert response.status_code == 200  # the page itself, not a redirect that forgets the form
    body = response.content.decode()
    form = re.search(r'<form method="post" action="[^"]*/payments/" class="payment-form.*?</form>', body, re.S).group(0)
    for value in typed.values():
        assert f'value="{value}"' in form
    assert "Use at most two decimal places (cents)." in form
    assert "A payment cannot be dated before 2000-01-01" in form
    assert Payment.objects.filter(reference="R-17").count() == 0


def test_an_overpayment_is_an_error_on_the_amount(alice_client, mine):
    response = alice_client.post(reverse("invoice_payment", kwargs={"pk": mine.invoice.pk}), {"amount": "120.01"})
    form = re.search(r'class="payment-form.*?</form>', response.content.decode(), re.S).group(0)
    assert "More than the balance (120.00 USD)" in form and 'value="120.01"' in form


def test_each_payment_shows_whether_it_reached_halopsa(alice_client, mine):
    url = reverse("invoice_detail", kwargs={"pk": mine.invoice.pk})
    Payment.objects.create(
        invoice=mine.invoice,
        connection=mine.connection,
        source="halopsa",
        halopsa_id=77,
        amount=Decimal("1.00"),
        paid_on=mine.payment.paid_on,
        reference="HALO-1",
    )
    body = alice_client.get(url).content.decode()
    assert "Failed: needs review" in body and "ACME push failed" in body and "From HaloPSA" in body
    listing = alice_client.get(reverse("payment_list")).content.decode()
    assert "Failed: needs review" in listing and "ACME push failed" in listing and "From HaloPSA" in listing
    PushJob.objects.filter(pk=mine.push_job.pk).update(state=PushJob.State.PENDING, last_error="")
    assert "Pending" in alice_client.get(url).content.decode()
    PushJob.objects.filter(pk=mine.push_job.pk).update(state=PushJob.State.DONE)
    Payment.objects.filter(pk=mine.payment.pk).update(halopsa_id=555)
    body = alice_client.get(url).content.decode()
    assert "Posted to HaloPSA (#555)" in body and "ACME push failed" not in body


def test_void_invoices_owe_nothing_in_lists_totals_sorting_and_exports(alice_client, mine):
    from integrations.services.payments import invoice_status_change

    owed_before = alice_client.get(reverse("invoice_list")).context["totals"]
    big = Invoice.objects.create(
        connection=mine.connection,
        customer=mine.customer,
        halopsa_id=900,
        number="BIG-VOID",
        total=Decimal("9999.00"),
        subtotal=Decimal("9999.00"),
        balance=Decimal("9999.00"),
    )
    invoice_status_change(invoice=big, status="void")
    assert (big.status, big.balance, big.total) == ("void", Decimal("0.00"), Decimal("9999.00"))
    page = alice_client.get(reverse("invoice_list"), {"sort": "-balance"}).context["page"]
    assert page.object_list[0].number != "BIG-VOID"
    assert alice_client.get(reverse("invoice_list")).context["totals"] != owed_before  # one more invoice...
    balances = [t.balance for t in alice_client.get(reverse("invoice_list")).context["totals"]]
    assert balances == [t.balance for t in owed_before]  # ...that owes nothing
    export = b"".join(alice_client.get(reverse("invoice_export")).streaming_content).decode()
    row = next(line for line in export.splitlines() if line.startswith("BIG-VOID"))
    assert ",9999.00,0.00,0.00," in row  # total, amount paid, balance
    # Un-voiding owes it again.
    invoice_status_change(invoice=big, status="open")
    assert (big.status, big.balance) == ("open", Decimal("9999.00"))
