"""HaloPSA JSON in and out of our database: the one place payload text and numbers are made safe.

- `parse_json`: every non-integer number becomes a Decimal (money never touches float), and text
  PostgreSQL cannot store (NUL, lone surrogates; both valid JSON escapes) is made storable once.
  With `mark_invalid_text` (HaloPSA answers) bytes that are not UTF-8 fail only the records that
  hold them: each such record lists the fields under INVALID_TEXT_KEY, the bytes shown as U+FFFD.
- `storable`: that text clean-up, for values that did not come through `parse_json`.
- `PayloadEncoder`: the encoder of every JSON column that holds payloads (raw records, sync-error
  and webhook payloads): Decimals as exact strings, in one pass of orjson (raw payloads are most
  of what a full sync writes); what orjson refuses takes `json_safe`, the same rule as a walk.
Used by the client (API responses), the models' payload columns and the webhook receiver
(delivery bodies and headers).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

import orjson

_UNSTORABLE_ESCAPE = re.compile(r"\\u(?:0000|[dD][89a-fA-F])")
# The key under which a record lists its fields that held bytes that are not UTF-8 (mapping.py
# refuses such a record; it is stored as a sync error with that list). Not a HaloPSA field name.
INVALID_TEXT_KEY = "_invalid_utf8_fields"
# What bytes that are not UTF-8 decode to with errors="surrogateescape": never produced by valid
# UTF-8 (in a page that needed it, only a JSON escape of such a lone surrogate looks the same, and
# that is no text either).
_ESCAPED_BYTE = re.compile("[\udc80-\udcff]")
REPLACEMENT = "\ufffd"


def parse_json(content: bytes | str, *, allow_constants: bool = True, mark_invalid_text: bool = False) -> Any:
    """Parse HaloPSA JSON. `allow_constants=False` refuses NaN/Infinity (webhook bodies).

    Bytes that are not UTF-8 raise ValueError, unless `mark_invalid_text`: the page is then decoded
    anyway and every record holding such bytes gets INVALID_TEXT_KEY (`mark_invalid_records`), so
    one bad byte fails its record, not the page. Valid pages take the strict decode only."""
    escaped = False
    if isinstance(content, bytes):
        raw = content
        try:
            content = raw.decode("utf-8-sig")
        except UnicodeDecodeError:
            if not mark_invalid_text:
                raise
            content = raw.decode("utf-8-sig", "surrogateescape")
            escaped = True
    options: dict[str, Any] = {"parse_float": Decimal, "parse_constant": NonFiniteNumber}
    if not allow_constants:
        options["parse_constant"] = _refuse_constant
    parsed = json.loads(content, **options)
    if escaped:
        parsed = mark_invalid_records(parsed)
    if _UNSTORABLE_ESCAPE.search(content):
        parsed = storable(parsed)
    return parsed


def mark_invalid_records(body: Any) -> Any:
    """A parsed answer whose text may hold escaped bytes that were not UTF-8: each record holding
    some lists the paths of those fields under INVALID_TEXT_KEY (e.g. ["client_name",
    "lines[2].item_shortdescription"]) and the bytes become U+FFFD. Records are the elements of a
    bare array, the object itself when it has an `id` (GET by id), else the objects in the
    envelope's lists; such bytes elsewhere in an envelope are only replaced."""
    if isinstance(body, list):
        return [_mark_record(item) for item in body]
    if isinstance(body, dict) and "id" in body:
        return _mark_record(body)
    if isinstance(body, dict):
        return {
            _replaced(key): [_mark_record(item) for item in value] if isinstance(value, list) else _clean(value)
            for key, value in body.items()
        }
    return _clean(body)


def _mark_record(record: Any) -> Any:
    if not isinstance(record, dict):
        return _clean(record)
    paths: list[str] = []
    cleaned = _clean(record, "", paths)
    if paths:
        cleaned[INVALID_TEXT_KEY] = paths
    return cleaned


def _clean(value: Any, path: str = "", paths: list[str] | None = None) -> Any:
    """`value` with escaped bytes replaced by U+FFFD; the path of each field that held some is
    appended to `paths`."""
    if isinstance(value, str):
        if _ESCAPED_BYTE.search(value) is None:
            return value
        if paths is not None:
            paths.append(path or "(value)")
        return _replaced(value)
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            name = f"{path}.{key}" if path else str(key)
            if isinstance(key, str) and _ESCAPED_BYTE.search(key) is not None:
                if paths is not None:
                    paths.append(f"{path}.{_replaced(key)}" if path else _replaced(key))
                key = _replaced(key)
            out[key] = _clean(item, name, paths)
        return out
    if isinstance(value, list):
        return [_clean(item, f"{path}[{index}]", paths) for index, item in enumerate(value)]
    return value


def _replaced(text: Any) -> Any:
    return _ESCAPED_BYTE.sub(REPLACEMENT, text) if isinstance(text, str) else text


class NonFiniteNumber(float):
    """NaN/Infinity from HaloPSA's non-standard JSON literals: a float to the mapping (which
    refuses it as "not a number"), and stored as text ("nan", "inf") like json_safe does."""


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number")


def storable(value: Any) -> Any:
    """Replace what PostgreSQL refuses in text (NUL characters, lone surrogates) with U+FFFD."""
    if isinstance(value, str):
        if "\x00" in value:
            value = value.replace("\x00", "\ufffd")
        return value.encode("utf-8", "replace").decode("utf-8")
    if isinstance(value, dict):
        return {storable(k): storable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [storable(v) for v in value]
    return value


def json_safe(value: Any) -> Any:
    """A parsed payload for a JSON column: Decimals as strings keeping every digit.

    Exact-type checks first (raw payloads are most of what a sync page writes, and isinstance
    against typing.Mapping is slow); anything else takes the general walk.
    """
    kind = type(value)
    if kind is str or kind is int or kind is bool or value is None:
        return value
    if kind is float:  # NaN/Infinity literals parse to floats; JSON columns refuse them
        return value if value == value and abs(value) != float("inf") else str(value)
    if kind is Decimal:
        return format(value, "f")
    if kind is dict:
        return {k if type(k) is str else str(k): json_safe(v) for k, v in value.items()}
    if kind is list:
        return [json_safe(v) for v in value]
    return _json_safe_walk(value)


def _json_safe_walk(value: Any) -> Any:
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, float):  # e.g. NonFiniteNumber
        return float(value) if math.isfinite(value) else str(value)
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


class PayloadEncoder(json.JSONEncoder):
    """JSON columns holding HaloPSA payloads (`models.JSONField(encoder=PayloadEncoder)`).

    Stores what `json_safe` gives (Decimals and NaN/Infinity as exact text) through orjson: raw
    payloads are most of what a full sync writes, and orjson encodes them faster than the
    standard library (figures: benchmarks/README.md, "History"). What orjson refuses (keys that
    are not text, integers beyond 64 bits) takes the json_safe walk. A plain float NaN, which
    parse_json never produces, would be stored as null.
    """

    def encode(self, o: Any) -> str:
        try:
            return orjson.dumps(o, default=_payload_default).decode()
        except TypeError:  # orjson.JSONEncodeError
            return json.dumps(json_safe(o), ensure_ascii=False)


def _payload_default(value: Any) -> Any:
    """orjson's hook for what it does not encode itself."""
    if type(value) is Decimal:  # called for every amount of every payload: str is the fast path
        text = str(value)
        return text if "E" not in text else format(value, "f")  # never scientific notation
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, float):  # float subclasses (NonFiniteNumber) come here
        return float(value) if math.isfinite(value) else str(value)
    if isinstance(value, Mapping):
        return dict(value)
    return str(value)
