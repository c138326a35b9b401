"""Server-rendered SVG charts (no JavaScript library): recent runs' changes and durations."""

from __future__ import annotations

from collections.abc import Sequence

from integrations.models import SyncRun

WIDTH = 560
HEIGHT = 120
GAP = 4
SLOTS = 20


def runs_chart(runs: Sequence[SyncRun]) -> dict | None:
    """Two bar series per run, oldest on the left: records changed, and duration in seconds."""
    finished = [r for r in reversed(list(runs)) if not r.is_active]
    if not finished:
        return None
    # Fixed slots, so one run is one narrow bar rather than the whole width.
    slot = WIDTH / max(len(finished), SLOTS)
    bar = max(slot - GAP, 2)
    max_changed = max((r.created + r.updated for r in finished), default=0) or 1
    max_duration = max((r.duration_seconds or 0 for r in finished), default=0) or 1
    bars = []
    for index, run in enumerate(finished):
        changed = run.created + run.updated
        duration = run.duration_seconds or 0
        h_changed = round(changed / max_changed * (HEIGHT - 20), 1)
        h_duration = round(duration / max_duration * (HEIGHT - 20), 1)
        bars.append(
            {
                "x": round(index * slot + GAP / 2, 1),
                "width": round(bar, 1),
                "changed": changed,
                "duration": round(duration, 1),
                "y_changed": round(HEIGHT - h_changed, 1),
                "h_changed": h_changed,
                "y_duration": round(HEIGHT - h_duration, 1),
                "h_duration": h_duration,
                "failed": run.state == SyncRun.State.FAILED,
                "label": f"{run.queued_at:%Y-%m-%d %H:%M} {run.get_scope_display()} ({run.get_state_display()})",
            }
        )
    return {
        "width": WIDTH,
        "height": HEIGHT,
        "bars": bars,
        "max_changed": max_changed,
        "max_duration": round(max_duration, 1),
    }
