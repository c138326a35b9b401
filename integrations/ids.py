"""Row ids typed by people (URLs, query strings, form values).

Ids are 64-bit integers in the database. A larger number is not an id at all: SQLite raises
OverflowError for it (a 500) and PostgreSQL an out-of-range error, so every id read from a request
goes through `parse_id`, `IdConverter` (URL routes) or the bounded form fields in forms.py, and a
number out of range reads as "no such row" (404) or an invalid value, like any other unknown id.
"""

from __future__ import annotations

ID_MAX = 2**63 - 1


def parse_id(value) -> int | None:
    """A positive 64-bit id, or None for anything else (text, 0, negative, too large)."""
    try:
        number = int(str(value).strip())
    except (TypeError, ValueError):
        return None
    return number if 0 < number <= ID_MAX else None


class IdConverter:
    """`<id:pk>`: like `<int:pk>`, but a number beyond 64 bits does not match (404)."""

    regex = "[0-9]{1,19}"

    def to_python(self, value: str) -> int:
        number = int(value)
        if number > ID_MAX:
            raise ValueError("id out of range")  # Django's resolver treats this as "no match"
        return number

    def to_url(self, value) -> str:
        return str(value)
