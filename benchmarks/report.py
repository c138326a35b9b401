"""Markdown table of a results file (for benchmarks/README.md):

.venv/bin/python benchmarks/report.py [benchmarks/results/latest.json ...]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "latest.json"


def table(path: Path) -> str:
    data = json.loads(path.read_text())
    m = data.get("machine", {})
    lines = [
        (
            f"Run of {data.get('started_at', '?')}: size `{data.get('size')}`, database `{data.get('db', 'sqlite')}`, "
            f"{data.get('elapsed_seconds', 0) / 60:.0f} min; {m.get('nproc')} CPUs ({m.get('cpu')}), Python {m.get('python')}."
        ),
        "",
        "| # | target | result | figure |",
        "|---|--------|--------|--------|",
    ]
    for row in data.get("verdicts", []):
        figure = str(row["figure"]).replace("|", "/")
        lines.append(f"| {row['target']} | {row['text']} | {row['result']} | {figure} |")
    return "\n".join(lines)


if __name__ == "__main__":
    for name in sys.argv[1:] or [str(RESULTS)]:
        print(table(Path(name)))
        print()
