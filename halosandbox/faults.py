"""Fault injection rules for the HaloPSA paths (`/api/...` and `/auth/token`).

A rule matches a request by optional path prefix (case-insensitive), method and query parameters
(`query`: each given one must be equal, e.g. {"page_no": "2"}), and fires either for the next
`count` matching requests or for a `ratio` share of them (seeded RNG, so a run is reproducible).
Modes:

- "status": answer `status` (429/500/502/503...) without doing anything; optional Retry-After.
- "slow": sleep `delay` seconds, then serve normally.
- "drop": close the connection without any response (request not performed).
- "lost_response": perform the request (a POST really commits), then close without a response.
- "malformed_json": perform the request, answer 200 with the body cut in half.
- "malformed_record": perform the request; in a list page corrupt one record (bad amount or
  missing id) while the page stays valid JSON.
- "expire_token": expire every token of the caller first, so the request gets a 401.

A hostile or broken server (the HaloPSA URL is typed by a partner):
- "trickle": perform the request, then send the body `chunk` bytes at a time, `delay` seconds
  apart (a server that never times out a read but never finishes either);
- "huge_body": answer 200 with a JSON body of `size` bytes, streamed (never built in memory),
  with a Content-Length unless `declare_length` is false (then the connection's close ends it);
- "endless_pages": a list ignores page_no (every page is the first) and its record_count says
  1,000 times more than there is;
- "page_drift": a list page from page 2 on is served as if `shift` rows had been added before it
  (rows of the page before come again) or, negative, deleted (rows are skipped), record_count
  moved the same way; the data itself does not change;
- "invalid_utf8": perform the request; one record of a list (or the record answered) gets a
  byte that is not UTF-8 in a text field (an invoice's `client_name`, else `name`), the rest stays
  valid.
"""

from __future__ import annotations

import random
import threading
from dataclasses import asdict, dataclass
from typing import Any, Mapping

FAULT_MODES = (
    "status",
    "slow",
    "drop",
    "malformed_json",
    "malformed_record",
    "expire_token",
    "lost_response",
    "trickle",
    "huge_body",
    "endless_pages",
    "page_drift",
    "invalid_utf8",
)


@dataclass
class FaultRule:
    mode: str
    status: int = 503
    retry_after: float | None = None
    delay: float = 1.0
    count: int | None = None  # remaining firings; None when ratio-based
    ratio: float | None = None
    path: str | None = None
    method: str | None = None
    query: dict[str, str] | None = None
    chunk: int = 1  # trickle: bytes per piece
    size: int = 64 * 1024 * 1024  # huge_body: bytes
    declare_length: bool = True  # huge_body: send a Content-Length
    shift: int = 1  # page_drift: rows added (positive) or deleted (negative) before the page
    fired: int = 0

    def matches(self, method: str, path: str, query: Mapping[str, str] | None = None) -> bool:
        if self.path and not path.lower().startswith(self.path.lower()):
            return False
        if self.method and method.upper() != self.method.upper():
            return False
        if self.query and any((query or {}).get(k.lower()) != str(v) for k, v in self.query.items()):  # noqa: SIM103
            return False
        return True

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def parse_rule(data: Mapping[str, Any]) -> FaultRule:
    """Validate a control-API fault body; raises ValueError with a readable message."""
    if not isinstance(data, Mapping):
        raise ValueError("fault must be an object")
    mode = str(data.get("mode", ""))
    if mode not in FAULT_MODES:
        raise ValueError(f"mode must be one of {', '.join(FAULT_MODES)}")
    count, ratio = data.get("count"), data.get("ratio")
    if count is None and ratio is None:
        count = 1
    if count is not None and (not isinstance(count, int) or count < 1):
        raise ValueError("count must be a positive integer")
    if ratio is not None and not (isinstance(ratio, (int, float)) and 0 < ratio <= 1):
        raise ValueError("ratio must be in (0, 1]")
    status = int(data.get("status", 503))
    if not 400 <= status <= 599:
        raise ValueError("status must be 4xx or 5xx")
    retry_after = data.get("retry_after")
    query = data.get("query")
    if query is not None and not (isinstance(query, Mapping) and all(isinstance(k, str) for k in query)):
        raise ValueError('query must be an object of parameter values, e.g. {"page_no": "2"}')
    chunk, size = int(data.get("chunk", 1)), int(data.get("size", 64 * 1024 * 1024))
    if chunk < 1 or size < 1:
        raise ValueError("chunk and size must be positive")
    return FaultRule(
        mode=mode,
        status=status,
        retry_after=float(retry_after) if retry_after is not None else None,
        delay=float(data.get("delay", 1.0)),
        count=count if ratio is None else None,
        ratio=float(ratio) if ratio is not None else None,
        path=str(data["path"]) if data.get("path") else None,
        method=str(data["method"]) if data.get("method") else None,
        query={k: str(v) for k, v in query.items()} if query else None,
        chunk=chunk,
        size=size,
        declare_length=bool(data.get("declare_length", True)),
        shift=int(data.get("shift", 1)),
    )


class FaultInjector:
    def __init__(self, seed: int = 1) -> None:
        self._rules: list[FaultRule] = []
        self._lock = threading.Lock()
        self._random = random.Random(seed)

    def add(self, rule: FaultRule) -> FaultRule:
        with self._lock:
            self._rules.append(rule)
        return rule

    def clear(self) -> None:
        with self._lock:
            self._rules.clear()

    def rules(self) -> list[dict[str, Any]]:
        with self._lock:
            return [r.as_dict() for r in self._rules]

    def pick(self, method: str, path: str, query: Mapping[str, str] | None = None) -> FaultRule | None:
        """The first rule that fires for this request (consumes one count)."""
        with self._lock:
            for rule in list(self._rules):
                if not rule.matches(method, path, query):
                    continue
                if rule.ratio is not None:
                    if self._random.random() >= rule.ratio:
                        continue
                else:
                    rule.count = (rule.count or 0) - 1
                    if rule.count <= 0:
                        self._rules.remove(rule)
                rule.fired += 1
                return rule
            return None
