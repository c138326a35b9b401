"""Micro-benchmark of mapping.map_invoice over replayed HaloPSA invoice pages (issue 10, target 2a).

    .venv/bin/python benchmarks/mapping_bench.py [PICKLE] [--repeat N] [--dump FILE] [--check FILE]

PICKLE (default /tmp/mapbench/invoices.pkl) is a stream of pickles, each `(records, record_count,
page_no)` with records as `payloads.parse_json` gives them (numbers as Decimal). Every record is
mapped once per timed pass; the best pass is reported. `--dump` writes every mapped result (or
the MappingError) for both invoice-number fields; `--check` compares against such a dump with
`==` and `repr()` (repr shows Decimal exponents and tzinfo, which `==` ignores).
mapping.py is pure, so no Django setup is needed.
"""

from __future__ import annotations

import argparse
import gc
import pickle
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from integrations.halopsa import mapping  # noqa: E402

NUMBER_FIELDS = ("invoicenumber", "thirdpartyinvoicenumber")


def load_records(path: str) -> list[Any]:
    records: list[Any] = []
    with open(path, "rb") as stream:
        while True:
            try:
                page, _count, _page_no = pickle.load(stream)
            except EOFError:
                return records
            records.extend(page)


def map_all(records: list[Any], number_field: str) -> list[Any]:
    results: list[Any] = []
    for record in records:
        try:
            results.append(mapping.map_invoice(record, number_field=number_field))
        except mapping.MappingError as exc:
            results.append(("MappingError", exc.message, exc.halopsa_id))
    return results


def timed_pass(records: list[Any]) -> float:
    map_invoice = mapping.map_invoice
    gc.collect()
    started = time.process_time()
    for record in records:
        try:
            map_invoice(record)
        except mapping.MappingError:
            pass
    return time.process_time() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("pickle", nargs="?", default="/tmp/mapbench/invoices.pkl")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--dump", help="write every mapped result to this file")
    parser.add_argument("--check", help="compare every mapped result with this dump")
    args = parser.parse_args()

    records = load_records(args.pickle)
    lines = sum(len(r.get("lines") or []) for r in records if isinstance(r, dict))
    payments = sum(len(r.get("payments") or []) for r in records if isinstance(r, dict))
    print(f"{len(records)} invoices, {lines} lines, {payments} payments")

    if args.dump or args.check:
        results = {field: map_all(records, field) for field in NUMBER_FIELDS}
        if args.dump:
            with open(args.dump, "wb") as stream:
                pickle.dump(results, stream)
            print(f"dumped {sum(len(v) for v in results.values())} results to {args.dump}")
        if args.check:
            with open(args.check, "rb") as stream:
                expected = pickle.load(stream)
            differences = 0
            for field in NUMBER_FIELDS:
                for index, (got, want) in enumerate(zip(results[field], expected[field], strict=True)):
                    if got != want or repr(got) != repr(want):
                        differences += 1
                        if differences <= 5:
                            print(f"DIFF {field} record {index}:\n  got  {got!r}\n  want {want!r}")
            total = sum(len(v) for v in results.values())
            print(f"check: {total - differences}/{total} identical")
            if differences:
                return 1

    passes = [timed_pass(records) for _ in range(args.repeat)]
    best = min(passes)
    print(
        f"map_invoice: best {best * 1000:.0f} ms CPU of {args.repeat} "
        f"({best / len(records) * 1e6:.1f} us/invoice); passes: {', '.join(f'{p * 1000:.0f}' for p in passes)} ms"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
