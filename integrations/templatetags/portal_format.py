"""Display formats for the dashboard."""
from __future__ import annotations

from decimal import Decimal, InvalidOperation

from django import template

register = template.Library()


@register.filter
def unit_amount(value) -> str:
    """A unit price or quantity: at least 2 decimals, more only when the value has them (61.75, 0.0125, 3.00)."""
    try:
        number = Decimal(value)
    except (InvalidOperation, TypeError, ValueError):
        return ""
    places = max(2, -number.normalize().as_tuple().exponent)
    return f"{number:,.{places}f}"


@register.filter
def quantity(value) -> str:
    """A quantity without trailing zeros (3, 1.25)."""
    try:
        number = Decimal(value)
    except (InvalidOperation, TypeError, ValueError):
        return ""
    return f"{number.normalize():f}"
