"""What the webhook modules share: the error a person sees, the version real time needs, and
reading a HaloPSA id from a delivery."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from integrations.models import REALTIME_MIN_VERSION

REALTIME_MIN_VERSION_TEXT = ".".join(str(part) for part in REALTIME_MIN_VERSION)


class WebhookError(Exception):
    """A refused webhook action, with a message a partner can act on."""

    def __init__(self, message: str) -> None:
        self.message = message
        super().__init__(message)


def as_halo_id(value: Any) -> int | None:
    """A HaloPSA record id from a delivery's value (int, whole Decimal or digits), else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        number = value
    elif isinstance(value, Decimal) and value == value.to_integral_value():
        number = int(value)
    elif isinstance(value, str) and value.strip().isdigit():
        number = int(value.strip())
    else:
        return None
    # Positive and within a BigIntegerField.
    return number if 0 < number < 2**63 else None
