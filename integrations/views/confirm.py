"""The confirmation step of money actions (record or delete a payment, change a status, archive).

The action's form posts to its own URL; without `confirmed=yes` the view answers with a page that
says what will happen (amount, invoice, customer) and carries the same fields again with that
flag, so a second, deliberate click acts. It is a plain page and form: it works without
JavaScript, and a POST without the confirmation never acts.
"""

from __future__ import annotations

from dataclasses import dataclass

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

CONFIRM_FIELD = "confirmed"
# Fields never carried over into the confirming form: the CSRF token is rendered afresh.
NOT_CARRIED = {"csrfmiddlewaretoken", CONFIRM_FIELD}


@dataclass(frozen=True)
class Fact:
    label: str
    value: str
    emphasis: bool = False  # the amount, shown large


def confirmed(request: HttpRequest) -> bool:
    return request.POST.get(CONFIRM_FIELD) == "yes"


def confirmation_page(
    request: HttpRequest,
    *,
    title: str,
    facts: list[Fact],
    consequence: str,
    confirm_label: str,
    cancel_url: str,
    danger: bool = False,
    rows: list[list[str]] | None = None,
    row_headers: list[str] | None = None,
) -> HttpResponse:
    """The page asking to confirm `request`'s POST; `rows` lists several records (bulk archive)."""
    carried = [(name, value) for name, values in request.POST.lists() if name not in NOT_CARRIED for value in values]
    return render(
        request,
        "integrations/confirm_action.html",
        {
            "title": title,
            "facts": facts,
            "consequence": consequence,
            "confirm_label": confirm_label,
            "cancel_url": cancel_url,
            "danger": danger,
            "carried": carried,
            "action_url": request.get_full_path(),
            "rows": rows or [],
            "row_headers": row_headers or [],
            "confirm_field": CONFIRM_FIELD,
        },
    )
