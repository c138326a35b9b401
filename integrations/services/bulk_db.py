"""Bulk INSERT of plain rows: one executemany, or PostgreSQL's COPY.

The rows bulk_create would write, without building model instances or preparing every value:
the drivers take ints, text, bools and Decimals (quantized by mapping.py) as they are, so only
dates and times go through their fields' preparation (a value seen before in the batch reuses its
prepared form) and JSON through its field's encoder. A full sync writes its invoices, lines and
payments this way: far less work than bulk_create for the same rows (benchmarks/README.md, "History").
"""

from __future__ import annotations

import functools
import json
import operator
from typing import Any, Callable, Mapping

from django.db import connections, models, router
from django.utils import timezone

# (column index, preparation, cache of prepared values or None)
_Preparation = tuple[int, Callable[[Any], Any], "dict[Any, Any] | None"]


def insert_rows(model: type[models.Model], rows: list[Mapping[str, Any]]) -> None:
    """INSERT rows given as {attname: value} with one executemany (COPY on PostgreSQL); model
    defaults and the auto timestamps (now) fill the columns a row leaves out. Keys that are not
    columns are ignored. A model with a per-row (callable) default is refused: those are not
    computed here."""
    if not rows:
        return
    db = connections[router.db_for_write(model)]
    fields = [f for f in model._meta.concrete_fields if not f.primary_key]
    defaults, auto = _column_defaults(model, fields)
    take = operator.itemgetter(*(f.attname for f in fields))
    prepared = _preparations(fields, db)
    values = []
    for row in rows:
        if auto:
            record = take({**defaults, **row, **auto})
        else:
            try:
                record = take(row)  # a row that names every column (mapped lines) is used as it is
            except KeyError:
                record = take({**defaults, **row})
        if prepared:
            record = _prepare(list(record), prepared)
        values.append(record)
    _write(db, model, fields, values)


def _column_defaults(model: type[models.Model], fields: list[models.Field]) -> tuple[dict[str, Any], dict[str, Any]]:
    """({attname: default}, {attname: now} for auto_now/auto_now_add columns)."""
    now = timezone.now()
    defaults: dict[str, Any] = {}
    auto: dict[str, Any] = {}
    for f in fields:
        if getattr(f, "auto_now", False) or getattr(f, "auto_now_add", False):
            auto[f.attname] = now
        elif f.has_default() and callable(f.default):
            raise ValueError(f"{model.__name__}.{f.name} has a per-row default; insert_rows does not compute those")
        else:
            defaults[f.attname] = f.get_default()
    return defaults, auto


def _preparations(fields: list[models.Field], db) -> list[_Preparation]:
    """The columns whose values the driver cannot take as they are."""
    prepared: list[_Preparation] = []
    for index, f in enumerate(fields):
        if isinstance(f, models.JSONField):
            # What the field's preparation ends in (json.dumps(value, cls=encoder)) with one
            # encoder for the batch; text serves PostgreSQL's COPY into jsonb as well.
            prepared.append((index, (f.encoder or json.JSONEncoder)().encode, None))
        elif isinstance(f, models.DateField):  # DateTimeField too
            prepared.append((index, functools.partial(f.get_db_prep_save, connection=db), {}))
    return prepared


def _prepare(record: list[Any], prepared: list[_Preparation]) -> list[Any]:
    for index, prepare, cache in prepared:
        value = record[index]
        if value is None:
            continue
        if cache is None:
            record[index] = prepare(value)
        else:
            if value not in cache:
                cache[value] = prepare(value)
            record[index] = cache[value]
    return record


def _write(db, model: type[models.Model], fields: list[models.Field], values: list) -> None:
    quote = db.ops.quote_name
    table, columns = quote(model._meta.db_table), ", ".join(quote(f.column) for f in fields)
    with db.cursor() as cursor:
        if db.vendor == "postgresql":
            # COPY: PostgreSQL's bulk load, faster than executemany for the same rows
            # (benchmarks/README.md, "History"); psycopg adapts the values as it does for INSERTs, and its
            # errors become Django's (a duplicate id still fails the batch with IntegrityError).
            with db.wrap_database_errors, cursor.cursor.copy(f"COPY {table} ({columns}) FROM STDIN") as copy:
                for record in values:
                    copy.write_row(record)
        else:
            cursor.executemany(f"INSERT INTO {table} ({columns}) VALUES ({', '.join(['%s'] * len(fields))})", values)
