"""Display formats for the dashboard."""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from typing import cast

from django import template

register = template.Library()


def _decimal(value) -> Decimal | None:
    """The value as a Decimal, or None when it is not a number (the filters then show nothing)."""
    try:
        return Decimal(value)
    except (InvalidOperation, TypeError, ValueError):
        return None


@register.filter
def unit_amount(value) -> str:
    """A unit price or quantity: at least 2 decimals, more only when the value has them (61.75, 0.0125, 3.00)."""
    number = _decimal(value)
    if number is None:
        return ""
    places = max(2, -cast(int, number.normalize().as_tuple().exponent))
    return f"{number:,.{places}f}"


@register.filter
def quantity(value) -> str:
    """A quantity without trailing zeros (3, 1.25)."""
    number = _decimal(value)
    return "" if number is None else f"{number.normalize():f}"
